"""The manifest: which Lance version of every table readers see, and the history of publishes behind rollback.

`manifest.json` is the one file whose atomic replacement makes a publish visible. Every publish also leaves a copy
in `manifests/<seq>-<run id>.json`; rollback points `manifest.json` back at one of those. Sequence numbers come
from the manifest itself (`last_seq`, carried through rollbacks), never from counting files, so two publishes can
not take the same number and a pruned history does not make numbers repeat.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genre_ray.layout import atomic_write_text
from genre_ray.store.errors import StoreError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HISTORY_DIR = "manifests"


def manifest_json(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True)


def read_manifest(store_dir: Path) -> dict[str, Any] | None:
    path = store_dir / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def history_files(store_dir: Path) -> list[Path]:
    """Every kept publish record, oldest first (the zero-padded sequence number sorts them)."""
    return sorted((store_dir / HISTORY_DIR).glob("*.json"))


def read_history(store_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(f.read_text(encoding="utf-8")) for f in history_files(store_dir)]


def last_seq(manifest: Mapping[str, Any] | None) -> int:
    """The highest sequence number ever published (-1: none); a rolled-back manifest carries it forward."""
    if manifest is None:
        return -1
    return int(manifest.get("last_seq", manifest.get("seq", -1)))


def record(store_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Give a new publish the next sequence number, keep it in the history, and make it the served manifest."""
    seq = last_seq(read_manifest(store_dir)) + 1
    manifest["seq"] = manifest["last_seq"] = seq
    atomic_write_text(store_dir / HISTORY_DIR / f"{seq:06d}-{manifest['run_id']}.json", manifest_json(manifest))
    switch(store_dir, manifest)
    return manifest


def switch(store_dir: Path, manifest: Mapping[str, Any]) -> None:
    # The one atomic step that makes a run visible.
    atomic_write_text(store_dir / MANIFEST, manifest_json(manifest))


def rollback_target(store_dir: Path, current: Mapping[str, Any], to: str | None) -> dict[str, Any]:
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


def read_history_file(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
