"""The writer lease through runs far longer than store.lease_timeout_s: renewed by its heartbeat, refused to a
second writer throughout, taken over only once renewals stop, and a writer that lost it stops before switching.

Holders run in their own processes, as real writers do. They record another host in their lease (lease.HOST), so
only renewals keep the lease theirs: a holder on this host would be kept by its live pid alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3_server import no_aws_env, s3_server  # noqa: F401  (fixtures)
from test_cli_store import SETTINGS, write_catalog_file

from genre_ray import storage
from genre_ray.config import REPO_ROOT
from genre_ray.storage.records import record_path
from genre_ray.store import LeaseError
from genre_ray.store import lease as leases
from genre_ray.store.lease import LEASE_DIR, LeaseLost, acquire, read_lease, release, writer_lease

TIMEOUT_S = 2.0

# Holds the lease for argv[2] seconds, checking it as a stage's check points would; exit 3 once it is lost.
_HOLD = """
import sys, time
import genre_ray.store.lease as leases
leases.HOST = "holder-host"
store, seconds, timeout = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
with leases.writer_lease(leases.storage.location(store), "long-run", timeout) as held:
    print("held", flush=True)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            held.check()
            time.sleep(0.1)
    except leases.LeaseLost as err:
        print("lost:", err, flush=True)
        sys.exit(3)
print("done", flush=True)
"""

# `genre-ray ingest` (a real stage: Ray, the catalog) with the holder's host recorded as another's.
_INGEST = """
import sys
import genre_ray.store.lease as leases
leases.HOST = "holder-host"
from genre_ray.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO_ROOT)}


def _start(script: str, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", script, *args]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_holder(store: Path, proc: subprocess.Popen, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while read_lease(store) is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the holder never took the lease"
        time.sleep(0.05)


def _refused_until_released(store: Path, run_id: str = "long-run") -> tuple[int, float]:
    """Try to take the store every 0.2 s until the holder (run `run_id`, "" for any) releases it: (refused
    attempts, seconds)."""
    started, attempts = time.monotonic(), 0
    while True:
        try:
            taken = acquire(store, "second", timeout_s=TIMEOUT_S)
        except LeaseError as err:
            assert f"{run_id} on holder-host" in str(err), err
            attempts += 1
            time.sleep(0.2)
            continue
        # the holder's own release at its end, not a takeover: its newest record says so
        released = record_path(store / LEASE_DIR, taken["lease"] - 1, ".released")
        why = json.loads(released.read_text())["why"]
        release(store, taken)
        assert why.startswith(f"released by run {run_id}"), why
        return attempts, time.monotonic() - started


def test_a_lease_is_kept_through_work_many_timeouts_long(tmp_path):
    store = tmp_path / "store"
    holder = _start(_HOLD, str(store), str(6 * TIMEOUT_S), str(TIMEOUT_S))
    _wait_for_holder(store, holder)
    attempts, seconds = _refused_until_released(store)
    out, err = holder.communicate()
    assert holder.returncode == 0 and "done" in out, out + err
    assert seconds >= 5 * TIMEOUT_S and attempts >= 20
    # renewed by records, about every TIMEOUT_S / RENEWALS_PER_TIMEOUT (pruned below the newest)
    numbers = sorted(int(f.stem) for f in (store / LEASE_DIR).glob("*.json"))
    assert numbers[-1] >= 6 * leases.RENEWALS_PER_TIMEOUT // 2, numbers
    assert len(numbers) <= leases.KEEP_RECORDS + 1


def test_a_real_stage_holds_the_lease_throughout(tmp_path):
    """`genre-ray ingest` with store.lease_timeout_s=2: Ray's start and the stage take many timeouts."""
    work = tmp_path / "w"
    work.mkdir()
    write_catalog_file(work / "movies.jsonl", 30)
    sets = [*SETTINGS, f"catalog.paths=[{work / 'movies.jsonl'}]", f"store.lease_timeout_s={TIMEOUT_S}"]
    args = ["ingest", "--workdir", str(work), *[a for s in sets for a in ("--set", s)]]
    proc = _start(_INGEST, *args)
    store = work / "store"
    _wait_for_holder(store, proc)
    attempts, seconds = _refused_until_released(store, run_id="")
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err
    assert seconds >= 3 * TIMEOUT_S, f"the stage took {seconds:.1f}s: not several timeouts, nothing was tested"
    assert attempts >= 10
    accounting = json.loads((work / "catalog" / "accounting.json").read_text())
    assert accounting["rows_ok"] == 30


def test_a_killed_writer_on_another_host_is_taken_over_after_the_timeout(tmp_path):
    store = tmp_path / "store"
    holder = _start(_HOLD, str(store), "600", str(TIMEOUT_S))
    _wait_for_holder(store, holder)
    time.sleep(TIMEOUT_S)  # a few renewals: the lease is alive and another host's
    with pytest.raises(LeaseError, match="run long-run on holder-host"):
        acquire(store, "second", timeout_s=TIMEOUT_S)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    killed = time.monotonic()
    while True:
        try:
            taken = acquire(store, "second", timeout_s=TIMEOUT_S)
            break
        except LeaseError:
            assert time.monotonic() - killed < 3 * TIMEOUT_S, "never taken over"
            time.sleep(0.05)
    waited = time.monotonic() - killed
    # no renewal since (at most one interval before) the kill: taken over once TIMEOUT_S had passed, not before
    assert TIMEOUT_S * (1 - 1 / leases.RENEWALS_PER_TIMEOUT) - 0.1 <= waited <= TIMEOUT_S + 2.0, waited
    assert taken["run_id"] == "second"


def test_a_killed_writer_on_this_host_is_taken_over_at_once(tmp_path):
    store = tmp_path / "store"
    script = _HOLD.replace('leases.HOST = "holder-host"', "")
    holder = _start(script, str(store), "600", "3600")
    _wait_for_holder(store, holder)
    with pytest.raises(LeaseError, match="run long-run"):
        acquire(store, "second", timeout_s=3600)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert acquire(store, "second", timeout_s=3600)["run_id"] == "second"


def test_a_writer_whose_lease_is_broken_stops_at_its_next_check(tmp_path):
    store = tmp_path / "store"
    holder = _start(_HOLD, str(store), "600", str(TIMEOUT_S))
    _wait_for_holder(store, holder)
    rescuer = acquire(store, "rescue", timeout_s=TIMEOUT_S, break_lock=True)
    out, err = holder.communicate(timeout=60)
    assert holder.returncode == 3, out + err
    assert "lost: run long-run lost the writer lease" in out and "now held by run rescue" in out
    # the lost writer's renewals and release left the rescuer's lease alone
    assert read_lease(store)["run_id"] == "rescue"
    release(store, rescuer)


@pytest.fixture(params=["local", "s3"])
def store_dir(request, tmp_path, s3_server, no_aws_env):  # noqa: F811
    if request.param == "local":
        return tmp_path / "store"
    return storage.location(f"s3://{s3_server.new_bucket()}/runs/a/store", s3_server.options)


def test_renewal_works_on_a_filesystem_and_a_bucket_alike(store_dir, monkeypatch):
    """In one process (the holder recorded as another host's): renewals through the records layer keep a second
    writer out for many timeouts; a takeover by break-lock is seen by the holder's next check."""
    monkeypatch.setattr(leases, "HOST", "holder-host")
    with writer_lease(store_dir, "long-run", TIMEOUT_S) as held:
        monkeypatch.undo()
        first = held.holder["lease"]
        end = time.monotonic() + 3 * TIMEOUT_S
        while time.monotonic() < end:
            held.check()
            with pytest.raises(LeaseError, match="run long-run on holder-host"):
                acquire(store_dir, "second", timeout_s=TIMEOUT_S)
            time.sleep(0.2)
        assert held.holder["lease"] >= first + leases.RENEWALS_PER_TIMEOUT
        rescuer = acquire(store_dir, "rescue", timeout_s=TIMEOUT_S, break_lock=True)
        with pytest.raises(LeaseLost, match="now held by run rescue"):
            held.check()
    assert read_lease(store_dir)["run_id"] == "rescue"
    release(store_dir, rescuer)
