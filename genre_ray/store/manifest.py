"""The manifest: which Lance version of every table readers see, and the history of publishes behind rollback.

What readers see is the highest-numbered record in `serving/` (`serving/<n>.json`, a complete manifest). A
publish or a rollback becomes visible by creating the next number with `storage.put_if_absent`: a create that
fails if the name exists (link(2) locally, `If-None-Match: *` on object stores), and whose object is whole
whenever it is visible. So there is no rename to lose on an object store, a crash before the create leaves readers
on the previous record, and of two writers that race for the same number exactly one wins (the other fails without
anything of it served). Old records are pruned; a writer that recreated a pruned number would not be the highest
and fails its post-create check. Stores published before this layout have a single `manifest.json`, read until
their first switch.

Every publish also leaves a copy in `manifests/<seq>-<run id>.json`; rollback serves one of those again. Sequence
numbers come from the manifest itself (`last_seq`, carried through rollbacks), never from counting files, so two
publishes can not take the same number and a pruned history does not make numbers repeat.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from genre_ray.errors import StoreError
from genre_ray.layout import atomic_write_text
from genre_ray.storage import StoragePath
from genre_ray.storage.records import claim, numbered

log = logging.getLogger(__name__)

# the single manifest of stores published before the serving/ switch log (read until their first switch)
MANIFEST = "manifest.json"
SERVING_DIR = "serving"
HISTORY_DIR = "manifests"
# switch records kept: the current one and a few before it (the history/ copies are what rollback uses)
KEEP_SWITCHES = 8


# The number of the switch record a manifest was read from. Added on reading (the record's name is the truth), never
# written into a record: a writer hands the manifest it started from back to `switch`, which creates number + 1.
SWITCH = "switch"


def manifest_json(manifest: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in manifest.items() if k != SWITCH}, indent=2, sort_keys=True)


def switches(store_dir: StoragePath) -> list[tuple[int, StoragePath]]:
    """Every switch record, (number, path), lowest first."""
    return numbered(store_dir / SERVING_DIR)


def read_manifest(store_dir: StoragePath) -> dict[str, Any] | None:
    """The manifest readers are served: the highest switch record, with its number under "switch" (None: nothing
    published)."""
    for _ in range(5):
        records = switches(store_dir)
        if not records:
            legacy = store_dir / MANIFEST
            return json.loads(legacy.read_text(encoding="utf-8")) if legacy.exists() else None
        n, path = records[-1]
        try:
            return json.loads(path.read_text(encoding="utf-8")) | {SWITCH: n}
        except FileNotFoundError:
            continue  # pruned by a newer switch between the listing and the read: list again
    raise StoreError(f"{store_dir}: the served manifest kept changing while being read; retry")


def history_files(store_dir: StoragePath) -> list[StoragePath]:
    """Every kept publish record, oldest first (the zero-padded sequence number sorts them)."""
    return sorted((store_dir / HISTORY_DIR).glob("*.json"))


def read_history(store_dir: StoragePath) -> list[dict[str, Any]]:
    return [json.loads(f.read_text(encoding="utf-8")) for f in history_files(store_dir)]


def last_seq(manifest: Mapping[str, Any] | None) -> int:
    """The highest sequence number ever published (-1: none); a rolled-back manifest carries it forward."""
    if manifest is None:
        return -1
    return int(manifest.get("last_seq", manifest.get("seq", -1)))


_UNREAD: Any = object()


def record(
    store_dir: StoragePath, manifest: dict[str, Any], based_on: Mapping[str, Any] | None = _UNREAD
) -> dict[str, Any]:
    """Give a new publish the next sequence number, keep it in the history, and make it the served manifest.

    `based_on`: the manifest the publish started from (read_manifest's, None: an empty store); the switch fails if
    another writer switched since. Left out, the manifest served now is taken."""
    if based_on is _UNREAD:
        based_on = read_manifest(store_dir)
    seq = last_seq(based_on) + 1
    manifest["seq"] = manifest["last_seq"] = seq
    kept = store_dir / HISTORY_DIR / f"{seq:06d}-{manifest['run_id']}.json"
    atomic_write_text(kept, manifest_json(manifest))
    try:
        switch(store_dir, manifest, based_on)
    except StoreError:
        kept.unlink(missing_ok=True)  # never served: not a rollback target
        raise
    return manifest


def switch(store_dir: StoragePath, manifest: Mapping[str, Any], based_on: Mapping[str, Any] | None) -> int:
    """The one atomic step that makes a run (or a rollback) visible: create the record after the one `based_on`
    was read from. If any writer switched since, that number exists and the create fails: no switch is lost."""
    records = switches(store_dir)
    n = int(based_on.get(SWITCH, -1)) + 1 if based_on is not None else 0
    claimed = claim(store_dir / SERVING_DIR, n, manifest_json(manifest).encode("utf-8"))
    if claimed == "taken":
        raise StoreError(
            f"{store_dir}: another writer switched the store at the same moment (record {n}); this run's switch "
            "was not applied and readers stay on what that writer published"
        )
    if claimed == "overtaken":
        newest = switches(store_dir)[-1][0]
        raise StoreError(f"{store_dir}: switch record {n} is not the newest ({newest}): another writer got ahead")
    for _, f in records[: max(0, len(records) + 1 - KEEP_SWITCHES)]:
        f.unlink(missing_ok=True)
    if n == 0:
        (store_dir / MANIFEST).unlink(missing_ok=True)  # a pre-switch-log store: serving/ is the truth from now on
    return n


def rollback_target(store_dir: StoragePath, current: Mapping[str, Any], to: str | None) -> dict[str, Any]:
    """The kept publish `to` names (a run id), or the one before the current; a clear error for anything else."""
    history = read_history(store_dir)
    if to is None:
        earlier = [m for m in history if m["seq"] < current["seq"]]
        if not earlier:
            if current["seq"] > 0:
                raise StoreError(
                    f"nothing to roll back to: the publishes before run {current['run_id']} are no longer kept "
                    "(store.keep_publishes)"
                )
            raise StoreError(f"nothing to roll back to: run {current['run_id']} is the first publish")
        return dict(earlier[-1])
    matches = [m for m in history if m["run_id"] == to]
    if not matches:
        known = ", ".join(m["run_id"] for m in history)
        raise StoreError(
            f"no kept publish with run id {to!r} (older publishes are pruned after store.keep_publishes); "
            f"known: {known}"
        )
    return dict(matches[-1])


def read_history_file(path: StoragePath) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
