"""The writer lease: at most one process mutates a store at a time, on a local filesystem or an object store.

Two publishes that interleave undo each other (each starts by restoring the tables to the manifest's versions) and
concurrent Lance `merge_insert` can duplicate rows, so every mutating command holds this lease.

Protocol (only create-if-absent writes, so it holds on object stores, which have neither rename nor O_EXCL):
- a lease is a numbered record `lease/<n>.json` (run id, host, pid, a token, start and renewal times); the holder
  is the writer of the highest-numbered record, unless `lease/<n>.released` exists next to it;
- to acquire, a writer reads the highest record: if it is released, stale (not renewed for `store.lease_timeout_s`,
  or left by a dead process on this host) or absent, it creates record n+1 with `storage.put_if_absent`. Of any
  writers racing for n+1 exactly one create succeeds; the others read the winner and fail with its name;
- after creating, the writer checks that its record is still the highest (old records are pruned, so a writer
  that waited long enough could recreate a pruned number: it would not be the highest, and backs off);
- while it works, a heartbeat thread renews the lease: it creates record n+1 with the same token and a new
  `renewed_at`, by the same claim. A writer that took the store over (or a --break-lock) made n+1 first, so the
  renewal fails and marks the lease lost; `Lease.check` then raises LeaseLost at the writer's next check point
  (before each stage, and right before publish switches readers);
- release creates `lease/<n>.released`; `--break-lock` creates it for whatever record is current, first.

Timing, with T = `store.lease_timeout_s` and renewals every R = T / RENEWALS_PER_TIMEOUT:
- a writer on another host is taken over only when the newest record's `renewed_at` is more than T old, by the
  taker's clock. A live holder renews every R, so that needs T - R of renewals to fail in a row;
- the holder gives up by its own monotonic clock when it has not renewed for T - R (a storage outage, a starved
  thread): its heartbeat marks the lease lost and its check points fail. So a holder stops at least R before any
  other host may take over; what that margin must cover is the clock skew between the two hosts plus the time
  from a passing check to the end of the write it guards (one PUT for the publish switch). With the default
  T = 15 min, R = 2.5 min: seconds of skew and a PUT fit many times over;
- a holder on this host whose process is gone (killed, crashed) is taken over at once: its pid is checked;
- the cost: one small record per R per running writer (pruned to KEEP_RECORDS), and a crashed writer on another
  host blocks the store for at most T after its last renewal.
A stage keeps running until its next check point after its lease is lost; it never switches readers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from genre_ray import storage
from genre_ray.errors import LeaseError
from genre_ray.storage import StoragePath
from genre_ray.storage.records import claim, numbered, record_path

log = logging.getLogger(__name__)

LEASE_DIR = "lease"
# lease records kept below the current one (diagnosis of recent writers); older ones are pruned
KEEP_RECORDS = 8
# renewals per store.lease_timeout_s: the holder's margin before any takeover is one renewal interval
RENEWALS_PER_TIMEOUT = 6
# this process's host in its lease records: a record from this host with a dead pid is stale at once
HOST = socket.gethostname()


class LeaseLost(LeaseError):
    """This writer's lease was taken over or broken, or could not be renewed in time: it must stop writing."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record(store_dir: StoragePath, n: int, suffix: str = ".json") -> StoragePath:
    return record_path(store_dir / LEASE_DIR, n, suffix)


def _numbers(store_dir: StoragePath) -> list[int]:
    return [n for n, _ in numbered(store_dir / LEASE_DIR)]


def _current(store_dir: StoragePath) -> tuple[int | None, dict[str, Any] | None]:
    """(number, holder) of the highest lease record; holder None when it is released (or there is none)."""
    numbers = _numbers(store_dir)
    if not numbers:
        return None, None
    n = numbers[-1]
    if _record(store_dir, n, ".released").exists():
        return n, None
    try:
        return n, json.loads(_record(store_dir, n).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return n, None


def read_lease(store_dir: StoragePath) -> dict[str, Any] | None:
    """Who holds the store now (None: nobody)."""
    return _current(store_dir)[1]


def _stale(holder: dict[str, Any], timeout_s: float) -> str | None:
    """Why the lease no longer protects anything, or None while its holder may still be writing."""
    renewed = datetime.fromisoformat(holder.get("renewed_at") or holder["started_at"])
    age = (datetime.now(UTC) - renewed).total_seconds()
    if age > timeout_s:
        return f"not renewed for {age:.0f}s, over store.lease_timeout_s={timeout_s:g}s"
    if holder.get("host") == HOST and not _pid_alive(int(holder.get("pid", -1))):
        return f"process {holder.get('pid')} on this host is gone"
    return None


def _held_by(holder: dict[str, Any]) -> LeaseError:
    return LeaseError(
        f"store is being written by run {holder.get('run_id')} on {holder.get('host')} since "
        f"{holder.get('started_at')} (renewed {holder.get('renewed_at') or 'never'}); retry later or use --break-lock"
    )


def _mark_released(store_dir: StoragePath, n: int, why: str) -> None:
    storage.put_if_absent(_record(store_dir, n, ".released"), json.dumps({"why": why}).encode())


def _prune(store_dir: StoragePath, below: int) -> None:
    for n in _numbers(store_dir):
        if n < below - KEEP_RECORDS:
            _record(store_dir, n, ".released").unlink(missing_ok=True)
            _record(store_dir, n).unlink(missing_ok=True)


def acquire(store_dir: StoragePath, run_id: str, timeout_s: float, break_lock: bool = False) -> dict[str, Any]:
    store_dir.mkdir(parents=True, exist_ok=True)
    now = _now()
    holder = {
        "run_id": run_id,
        "host": HOST,
        "pid": os.getpid(),
        "token": uuid.uuid4().hex,  # tells this writer's records from another's of the same run, host and pid
        "started_at": now,
        "renewed_at": now,
    }
    for _ in range(5):
        n, current = _current(store_dir)
        if current is not None:
            if break_lock:
                log.warning("--break-lock: releasing the writer lease of %s", current)
                _mark_released(store_dir, n, f"broken by run {run_id}")
            else:
                reason = _stale(current, timeout_s)
                if reason is None:
                    raise _held_by(current)
                log.warning("taking over a stale writer lease (%s): %s", reason, current)
        mine = (n + 1) if n is not None else 0
        claimed = claim(store_dir / LEASE_DIR, mine, json.dumps(holder).encode())
        if claimed == "taken":
            continue  # another writer created this number first: read who holds it now
        if claimed == "overtaken":
            _mark_released(store_dir, mine, "not the newest record")
            continue
        _prune(store_dir, mine)
        return holder | {"lease": mine}
    _, current = _current(store_dir)
    if current is not None:
        raise _held_by(current)
    raise LeaseError(f"could not take the writer lease in {store_dir / LEASE_DIR}; retry later or use --break-lock")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def renew(store_dir: StoragePath, holder: dict[str, Any]) -> dict[str, Any]:
    """Create the record after ours with a new renewed_at; the holder with its new number. LeaseLost if our record
    is no longer the current one, or another writer created the next number first."""
    n, current = _current(store_dir)
    mine = int(holder["lease"])
    if n != mine or current is None or current.get("token") != holder["token"]:
        raise _lost_error(store_dir, holder)
    renewed = {k: v for k, v in holder.items() if k != "lease"} | {"renewed_at": _now()}
    claimed = claim(store_dir / LEASE_DIR, mine + 1, json.dumps(renewed).encode())
    if claimed == "overtaken":
        _mark_released(store_dir, mine + 1, "not the newest record")
    if claimed != "claimed":
        raise _lost_error(store_dir, holder)
    _prune(store_dir, mine + 1)
    return renewed | {"lease": mine + 1}


def _lost_error(store_dir: StoragePath, holder: dict[str, Any]) -> LeaseLost:
    now = read_lease(store_dir)
    by = f"run {now.get('run_id')} on {now.get('host')}" if now else "nobody (released or broken)"
    return LeaseLost(f"run {holder['run_id']} lost the writer lease in {store_dir / LEASE_DIR}: now held by {by}")


class Lease:
    """A held lease and its heartbeat: renews every timeout_s / RENEWALS_PER_TIMEOUT; `check` raises LeaseLost
    once the lease may be someone else's (the timing argument is in this module's docstring)."""

    def __init__(self, store_dir: StoragePath, holder: dict[str, Any], timeout_s: float):
        self.store_dir, self.timeout_s = store_dir, timeout_s
        self.interval = timeout_s / RENEWALS_PER_TIMEOUT
        self.holder = holder
        self._renewed = time.monotonic()
        self._lost: str | None = None
        # a check reads the store while no renewal is half done (its new record made, `holder` not yet updated)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{holder['run_id']}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                try:
                    self.holder = renew(self.store_dir, self.holder)
                    self._renewed = time.monotonic()
                except LeaseLost as err:
                    self._lost = str(err)
                except Exception as err:  # a storage hiccup: the next beat retries, until the margin runs out
                    log.warning("writer lease not renewed (%s); retrying in %.0fs", err, self.interval)
                    self._lost = self._overdue()
            if self._lost:
                log.error("%s; the run stops at its next check point", self._lost)
                return

    def _overdue(self) -> str | None:
        silent = time.monotonic() - self._renewed
        if silent <= self.timeout_s - self.interval:
            return None
        return (
            f"run {self.holder['run_id']} could not renew its writer lease for {silent:.0f}s: another writer may "
            f"take the store over after store.lease_timeout_s={self.timeout_s:g}s"
        )

    def check(self) -> None:
        """Raise LeaseLost unless this writer still holds the store (read from the store, not just remembered)."""
        with self._lock:
            why = self._lost or self._overdue()
            if why is None:
                n, current = _current(self.store_dir)
                if n != self.holder["lease"] or current is None or current.get("token") != self.holder["token"]:
                    why = str(_lost_error(self.store_dir, self.holder))
        if why is not None:
            self._lost = why
            raise LeaseLost(why)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def release(store_dir: StoragePath, holder: dict[str, Any]) -> None:
    """Release our own record (a --break-lock that handed the store to someone else made a newer one: untouched)."""
    if "lease" in holder:
        _mark_released(store_dir, int(holder["lease"]), f"released by run {holder['run_id']}")


@contextmanager
def writer_lease(store_dir: StoragePath, run_id: str, timeout_s: float, break_lock: bool = False) -> Iterator[Lease]:
    """Hold the store's lease, renewed by a heartbeat, for the body; released however the body ends."""
    lease = Lease(store_dir, acquire(store_dir, run_id, timeout_s, break_lock), timeout_s)
    try:
        yield lease
    finally:
        lease.stop()
        release(store_dir, lease.holder)
