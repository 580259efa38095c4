"""The writer lease: at most one process mutates a store at a time, on a local filesystem or an object store.

Two publishes that interleave undo each other (each starts by restoring the tables to the manifest's versions) and
concurrent Lance `merge_insert` can duplicate rows, so every mutating command holds this lease.

Protocol (only create-if-absent writes, so it holds on object stores, which have neither rename nor O_EXCL):
- a lease is a numbered record `lease/<n>.json` (run id, host, pid, start time); the holder is the writer of the
  highest-numbered record, unless `lease/<n>.released` exists next to it;
- to acquire, a writer reads the highest record: if it is released, stale (older than `store.lease_timeout_s`, or
  left by a dead process on this host) or absent, it creates record n+1 with `storage.put_if_absent`. Of any
  writers racing for n+1 exactly one create succeeds; the others read the winner and fail with its name;
- after creating, the writer checks that its record is still the highest (old records are pruned, so a writer
  that waited long enough could recreate a pruned number: it would not be the highest, and backs off);
- release creates `lease/<n>.released`; `--break-lock` creates it for whatever record is current, first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from genre_ray import storage
from genre_ray.storage import StoragePath
from genre_ray.storage.records import claim, numbered, record_path
from genre_ray.store.errors import LeaseError

log = logging.getLogger(__name__)

LEASE_DIR = "lease"
# lease records kept below the current one (diagnosis of recent writers); older ones are pruned
KEEP_RECORDS = 8


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
    started = datetime.fromisoformat(holder["started_at"])
    age = (datetime.now(UTC) - started).total_seconds()
    if age > timeout_s:
        return f"older than store.lease_timeout_s={timeout_s:g}s"
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return f"process {holder.get('pid')} on this host is gone"
    return None


def _held_by(holder: dict[str, Any]) -> LeaseError:
    return LeaseError(
        f"store is being written by run {holder.get('run_id')} on {holder.get('host')} since "
        f"{holder.get('started_at')}; retry later or use --break-lock"
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
    holder = {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
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


def release(store_dir: StoragePath, holder: dict[str, Any]) -> None:
    """Release our own record (a --break-lock that handed the store to someone else made a newer one: untouched)."""
    if "lease" in holder:
        _mark_released(store_dir, int(holder["lease"]), f"released by run {holder['run_id']}")


@contextmanager
def writer_lease(
    store_dir: StoragePath, run_id: str, timeout_s: float, break_lock: bool = False
) -> Iterator[dict[str, Any]]:
    holder = acquire(store_dir, run_id, timeout_s, break_lock)
    try:
        yield holder
    finally:
        release(store_dir, holder)
