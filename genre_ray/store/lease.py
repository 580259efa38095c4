"""The writer lease: at most one process mutates a store at a time.

Two publishes that interleave undo each other (each starts by restoring the tables to the manifest's versions) and
concurrent Lance `merge_insert` can duplicate rows, so every mutating command holds this lease. It is a small JSON
object created with O_CREAT | O_EXCL (atomic on a local or POSIX-shared filesystem: exactly one creator wins),
holding who took it and when. A lease older than `store.lease_timeout_s`, or left by a dead process on this host,
is stale and taken over with a warning; `--break-lock` removes any lease first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genre_ray.store.errors import LeaseError

log = logging.getLogger(__name__)

LEASE = "writer.lease"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lease(store_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((store_dir / LEASE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        # a writer killed between create and write: an empty lease, no owner to wait for
        return {}


def _stale(holder: dict[str, Any], timeout_s: float) -> str | None:
    """Why the lease no longer protects anything, or None while its holder may still be writing."""
    if not holder:
        return "empty lease file"
    started = datetime.fromisoformat(holder["started_at"])
    age = (datetime.now(UTC) - started).total_seconds()
    if age > timeout_s:
        return f"older than store.lease_timeout_s={timeout_s:g}s"
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return f"process {holder.get('pid')} on this host is gone"
    return None


def _try_create(path: Path, holder: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(holder, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def acquire(store_dir: Path, run_id: str, timeout_s: float, break_lock: bool = False) -> dict[str, Any]:
    store_dir.mkdir(parents=True, exist_ok=True)
    path = store_dir / LEASE
    if break_lock and path.exists():
        log.warning("--break-lock: removing the writer lease %s", read_lease(store_dir))
        path.unlink(missing_ok=True)
    holder = {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for _ in range(3):
        if _try_create(path, holder):
            return holder
        current = read_lease(store_dir)
        if current is None:
            continue  # released between our attempt and the read
        reason = _stale(current, timeout_s)
        if reason is None:
            raise LeaseError(
                f"store is being written by run {current['run_id']} on {current['host']} since "
                f"{current['started_at']}; retry later or use --break-lock"
            )
        log.warning("taking over a stale writer lease (%s): %s", reason, current)
        # Rename-then-delete: of two writers taking over the same stale lease only one rename succeeds.
        grave = path.with_name(f"{LEASE}.stale-{os.getpid()}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            continue
        taken = json.loads(grave.read_text(encoding="utf-8") or "{}")
        if taken != current:
            # Another writer replaced the stale lease between our read and our rename: give its lease back.
            os.link(grave, path)
            grave.unlink()
            raise LeaseError(
                f"store is being written by run {taken.get('run_id')} on {taken.get('host')} since "
                f"{taken.get('started_at')}; retry later or use --break-lock"
            )
        grave.unlink()
    raise LeaseError(f"could not take the writer lease {path}; retry later or use --break-lock")


def release(store_dir: Path, holder: dict[str, Any]) -> None:
    """Remove the lease only if it is still ours (a --break-lock may have handed it to someone else)."""
    current = read_lease(store_dir)
    if current and current.get("run_id") == holder["run_id"] and current.get("pid") == holder["pid"]:
        (store_dir / LEASE).unlink(missing_ok=True)


@contextmanager
def writer_lease(store_dir: Path, run_id: str, timeout_s: float, break_lock: bool = False) -> Iterator[dict[str, Any]]:
    holder = acquire(store_dir, run_id, timeout_s, break_lock)
    try:
        yield holder
    finally:
        release(store_dir, holder)
