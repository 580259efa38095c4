"""Keeping a long-lived store bounded: compaction, retention of publishes, and a status report.

Every nightly merge_insert / delete leaves small fragments and a new Lance version behind. After a publish:
- the tables it touched are compacted (small fragments merged, deletions materialised) before their versions go
  into the manifest, so the manifest points at the compacted version;
- only the newest `store.keep_publishes` publishes (and the current one, which a rollback may have made older)
  stay in the history; every Lance version one of them references is tagged `pub-<seq>`, and
  `cleanup_old_versions` removes every other old version (tagged versions are never cleaned up). Lance's own
  `Table.optimize()` is not used: it deletes versions older than 7 days whether a manifest points at them or not;
- the embeddings dataset is compacted and keeps only its latest version (nothing rolls back to old embeddings);
- model copies no kept publish serves are removed.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import lance
import lancedb

from genre_ray import storage
from genre_ray.embed.dataset import embeddings_uri, open_embeddings
from genre_ray.layout import RunLayout
from genre_ray.storage import StoragePath
from genre_ray.store import manifest as manifests
from genre_ray.store import models
from genre_ray.store.partitions import table_names
from genre_ray.store.reader import Store

log = logging.getLogger(__name__)

TAG_PREFIX = "pub-"
# Fragments at least this big are left alone by compaction (unless a tenth of their rows are deleted). Lance's own
# default (1M rows) made every nightly rewrite a whole 1M-row table or embeddings dataset: a full write leaves one
# fragment of just under 1M rows, which counted as small, so the night's new small fragment was merged into it.
COMPACT_TARGET_ROWS = 256 * 1024


def compact_dataset(ds: lance.LanceDataset, target_rows: int = COMPACT_TARGET_ROWS) -> Any:
    """Merge adjacent fragments smaller than `target_rows` and materialise deletions above a tenth of a fragment
    (one new version, same rows; indexes are remapped). Returns Lance's compaction metrics."""
    return ds.optimize.compact_files(target_rows_per_fragment=target_rows)


def compact(tbl: lancedb.table.Table) -> None:
    metrics = compact_dataset(tbl.to_lance())
    if metrics.fragments_removed:
        log.info(
            "table %s: compacted %d fragments into %d", tbl.name, metrics.fragments_removed, metrics.fragments_added
        )


def _prune_versions(ds: lance.LanceDataset, keep: dict[str, int]) -> int:
    """Tag the versions kept publishes reference (tag -> version), drop other pub- tags, clean the rest."""
    tags = ds.tags.list()
    for tag in tags:
        if tag.startswith(TAG_PREFIX) and tag not in keep:
            ds.tags.delete(tag)
    for tag, version in keep.items():
        if tag not in tags:
            ds.tags.create(tag, version)
    # The caller holds the writer lease, so no other writer has unverified (in-flight) files to lose.
    stats = ds.cleanup_old_versions(older_than=timedelta(0), delete_unverified=True, error_if_tagged_old_versions=False)
    return int(stats.old_versions)


def _compact_embeddings(uri: StoragePath) -> int:
    """Compact the embeddings dataset and drop its old versions (nothing rolls back to old embeddings)."""
    compact_dataset(open_embeddings(uri))
    return _prune_versions(open_embeddings(uri), {})


def retain(store: Store, keep_publishes: int, layout: RunLayout | None = None) -> dict[str, Any]:
    """Prune the history to the newest `keep_publishes` publishes (+ the current one) and everything only older
    publishes referenced. Returns what was removed."""
    current = store.require_manifest()
    files = manifests.history_files(store.dir)
    kept_files = files[-keep_publishes:]
    records = {f: manifests.read_history_file(f) for f in files}
    for f in files:
        if records[f]["seq"] == current.get("seq") and f not in kept_files:
            kept_files.append(f)  # a rollback to a publish older than the window keeps it
    dropped = [f for f in files if f not in kept_files]
    for f in dropped:
        f.unlink()
    kept = [records[f] for f in kept_files]

    versions_removed = 0
    for name in sorted(table_names(store.db)):
        refs = {f"{TAG_PREFIX}{m['seq']:06d}": m["tables"][name]["version"] for m in kept if name in m["tables"]}
        ds = store.db.open_table(name).to_lance()
        versions_removed += _prune_versions(ds, refs)
    if layout is not None:
        uri = embeddings_uri(layout)
        if uri.exists():
            # a rewrite of the catalog's embeddings: in a worker, never in the driver
            from genre_ray.runtime import in_workers  # here: `store status` reads and never starts Ray

            versions_removed += in_workers(_compact_embeddings, [(uri,)])[0]
    removed_models = models.prune_models(store.dir, {m["model_version"] for m in kept})
    if dropped or versions_removed:
        log.info(
            "retention (keep_publishes=%d): %d publish records, %d Lance versions, %d model copies removed",
            keep_publishes,
            len(dropped),
            versions_removed,
            len(removed_models),
        )
    return {"publishes": len(dropped), "versions": versions_removed, "models": removed_models}


def table_status(store: Store, name: str) -> dict[str, Any]:
    tbl = store.db.open_table(name)
    ds = tbl.to_lance()
    unindexed = {}
    for ix in tbl.list_indices():
        stats = tbl.index_stats(ix.name)
        unindexed[",".join(ix.columns)] = None if stats is None else stats.num_unindexed_rows
    return {
        "rows": tbl.count_rows(),
        "version": tbl.version,
        "versions": len(ds.versions()),
        "fragments": len(ds.get_fragments()),
        "bytes": storage.tree_bytes(store.dir / f"{name}.lance"),
        "unindexed_rows": unindexed,
    }


def status(store: Store) -> dict[str, Any]:
    """Everything `genre-ray store status` prints: tables (latest state on disk), the manifest, the history."""
    current = store.manifest()
    return {
        "store": str(store.dir),
        "current": None
        if current is None
        else {k: current.get(k) for k in ("run_id", "seq", "model_version", "pinned")},
        "tables": {name: table_status(store, name) for name in sorted(table_names(store.db))},
        "history": [
            {k: m.get(k) for k in ("seq", "run_id", "published_at", "model_version")}
            | {"rows": m.get("stats", {}).get("rows")}
            for m in store.history()
        ],
    }


def format_status(info: dict[str, Any]) -> str:
    cur = info["current"]
    lines = [f"store {info['store']}"]
    if cur is None:
        lines.append("  nothing published")
    else:
        pin = " (pinned by rollback)" if cur.get("pinned") else ""
        lines.append(f"  serving run {cur['run_id']} (publish #{cur['seq']}), model {cur['model_version']}{pin}")
    lines.append(f"  {'table':<24} {'rows':>9} {'version':>8} {'versions':>9} {'fragments':>10} {'MiB':>8}  unindexed")
    for name, t in info["tables"].items():
        unindexed = ", ".join(f"{c}:{n}" for c, n in t["unindexed_rows"].items()) or "no index"
        lines.append(
            f"  {name:<24} {t['rows']:>9} {t['version']:>8} {t['versions']:>9} {t['fragments']:>10} "
            f"{t['bytes'] / 2**20:>8.2f}  {unindexed}"
        )
    lines.append("  publish history (kept):")
    for h in info["history"]:
        lines.append(
            f"    #{h['seq']:<5} {h['run_id']:<28} {h['published_at']}  model {h['model_version']}  {h['rows']} rows"
        )
    return "\n".join(lines)
