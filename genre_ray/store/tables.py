"""One published table's Lance work: its schema, its nightly change, compaction and indexes.

`finish_table` runs as a Ray task per touched table (runtime.in_workers), side by side: each table is its own Lance
dataset, so they never conflict. This module imports no torch, so a pooled worker that runs table tasks does not
pay for the model's imports (seconds each on a small node).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
import ray
from lancedb.index import BTree, IvfPq

from genre_ray import schema
from genre_ray.config import StoreConfig
from genre_ray.sql import sql_in
from genre_ray.storage import StoragePath
from genre_ray.store import maintenance
from genre_ray.store.partitions import ivf_pq_params
from genre_ray.store.plan import TABLE
from genre_ray.store.reader import TITLE_KEY, VECTOR, Store, title_keys

log = logging.getLogger(__name__)

PRIMARY_KEY_META = {b"lance-schema:unenforced-primary-key": b"true"}


def served_schema(dim: int) -> pa.Schema:
    """The served contract plus the lookup key, with movie_id marked as Lance's (unenforced) primary key:
    merge_insert on a key without that metadata can write duplicate rows when commits race (lance#6018)."""
    base = schema.served_schema(dim)
    fields = [f.with_metadata(PRIMARY_KEY_META) if f.name == "movie_id" else f for f in base]
    return pa.schema([*fields, pa.field(TITLE_KEY, pa.string())], metadata=base.metadata)


def with_title_key(batch: pa.Table) -> pa.Table:
    key = title_keys(batch["title"])
    if TITLE_KEY in batch.column_names:
        return batch.set_column(batch.schema.get_field_index(TITLE_KEY), TITLE_KEY, key)
    return batch.append_column(TITLE_KEY, key)


def _scalar_indexes(tbl: lancedb.table.Table) -> None:
    """B-tree indexes on movie_id (lookups, merge_insert) and title_key (title resolution): created once, kept
    current afterwards by optimize_indices like the vector index."""
    have = {tuple(ix.columns) for ix in tbl.list_indices()}
    for column in ("movie_id", TITLE_KEY):
        if (column,) not in have:
            tbl.create_index(column, config=BTree(), replace=True)


def _index(tbl: lancedb.table.Table, cfg: StoreConfig, dim: int, full: bool) -> bool:
    """IVF-PQ on tables large enough to train it; flat (exact) search below that. Returns whether indexed."""
    n = tbl.count_rows()
    has_index = any(ix.columns == [VECTOR] for ix in tbl.list_indices())
    # Nightly deltas join the existing index partitions (scalar and vector) without retraining them.
    tbl.to_lance().optimize.optimize_indices()
    tbl.checkout_latest()
    _scalar_indexes(tbl)
    if n < cfg.index_min_rows:
        log.info("table %s: %d rows < store.index_min_rows=%d, flat (exact) search", tbl.name, n, cfg.index_min_rows)
        return has_index
    if has_index and not full:
        return True
    partitions, sub_vectors = ivf_pq_params(n, dim)
    log.info("table %s: IVF-PQ over %d rows, %d partitions, %d sub-vectors", tbl.name, n, partitions, sub_vectors)
    tbl.create_index(
        VECTOR,
        config=IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors),
        replace=True,
    )
    return True


@dataclass(frozen=True)
class TableChange:
    """What a published table's nightly task applies: ids to delete, then the delta rows (Arrow blocks) to upsert,
    then the metadata-only refresh (the plan's refresh rows of every table: this task keeps its own)."""

    delete: list[str] = field(default_factory=list)
    delta: list[ray.ObjectRef] = field(default_factory=list)
    refresh: ray.ObjectRef | None = None


def refresh_metadata(tbl: lancedb.table.Table, refresh: pa.Table, dim: int) -> int:
    """Update the metadata columns (votes, popularity, genres, ...) of rows already served, in place: a partial
    merge_insert writes only those columns, so vectors, spectra and indexes are untouched. Returns the rows matched."""
    mine = refresh.filter(pc.equal(refresh[TABLE], tbl.name))
    if not mine.num_rows:
        return 0
    columns = [c for c in schema.METADATA_COLUMNS if c != "content_hash"]
    served = served_schema(dim)
    rows = with_title_key(mine.select(columns))
    rows = rows.cast(pa.schema([served.field(c) for c in rows.column_names]))
    result = tbl.merge_insert("movie_id").when_matched_update_all().execute(rows)
    return int(result.num_updated_rows)


def finish_table(
    store_dir: StoragePath,
    name: str,
    cfg: StoreConfig,
    dim: int,
    full: bool,
    change: TableChange,
) -> dict[str, Any]:
    """A table's nightly change (delete, then upsert the delta), compaction and indexes; what the manifest records of
    it. Runs as a Ray task (in_workers): at catalog scale the merge, compaction and index build read the whole table,
    which the driver must never hold."""
    store = Store(store_dir)
    tbl = store.db.open_table(name)
    if change.delete:
        tbl.delete(sql_in("movie_id", change.delete))
    if change.delta:
        delta = pa.concat_tables([served_schema(dim).empty_table(), *ray.get(change.delta)])
        tbl.merge_insert("movie_id").when_matched_update_all().when_not_matched_insert_all().execute(delta)
    refreshed = refresh_metadata(tbl, ray.get(change.refresh), dim) if change.refresh is not None else 0
    n = tbl.count_rows()
    if n == 0:
        return {"rows": 0, "indexed": False, "version": tbl.version}
    if refreshed:
        log.info("table %s: metadata of %d served rows refreshed in place", name, refreshed)
    maintenance.compact(tbl)
    indexed = _index(store.db.open_table(name), cfg, dim, full)
    # Re-open: compaction and index maintenance commit through the Lance dataset rather than this handle.
    return {"rows": n, "indexed": indexed, "version": store.db.open_table(name).version}
