"""What a publish must change, decided in one Ray task next to the data: the driver never holds the catalog.

The task reads the catalog's metadata columns (no documents), checks ids are unique, picks the partition tables,
and on a nightly diffs the catalog against the published (movie_id, content_hash, model_version, table, and a
hash of the served metadata columns). It returns three objects: a small `PublishPlan` (counts, tables, the ids to
delete, and the ids to infer when they are few enough to fetch their embeddings by a filter) that the driver
reads; the metadata of the movies to infer, which stays in the object store for the spectrum actors
(genre_ray.spectrum), each of which indexes it once; and the metadata of the movies whose document is unchanged but
whose served metadata (votes, popularity, genres) moved, for the table tasks to update in place.

Why not a Ray Data hash join: measured on 2 cores with 20k titles (bench.nightly), a publish built on three hash
shuffles (uniqueness, the diff, metadata x embeddings) took 104 s for night 1 and 125 s for a 1% nightly, against
48 s and 12 s for the same diff done in the driver, which this task now does in a worker. One task needs memory
for the catalog's metadata and keys (a few hundred bytes a movie: ~0.5 GB at 1M titles) on one worker, not in
the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray

from genre_ray.catalog.reader import read_catalog
from genre_ray.config import StoreConfig
from genre_ray.errors import StoreError
from genre_ray.layout import RunLayout
from genre_ray.runtime import worker_result
from genre_ray.schema import CATALOG, METADATA_COLUMNS
from genre_ray.store.partitions import partition_tables, route
from genre_ray.store.reader import Store

TABLE = "_table"  # the table a movie is served from after this publish
# Up to this many movies to infer, their embeddings are fetched by an id filter instead of scanned whole.
DELTA_FILTER_MAX_IDS = 20_000


@dataclass(frozen=True)
class PublishPlan:
    partitions: dict[str, str]  # partition value -> table
    targets: list[str]  # tables that get rows written
    delete: dict[str, list[str]]  # table -> ids to remove from it (removed from the catalog, or moved away)
    upserted: int  # movies to (re)infer
    unchanged: int
    full: bool
    max_votes: float
    # the ids to infer on a nightly small enough to fetch only their embeddings; None: scan them all
    fetch_ids: list[str] | None = field(default=None, repr=False)
    # movies whose document is unchanged but whose served metadata (votes, popularity, ...) moved: their metadata
    # columns are updated in place, nothing is embedded or inferred; and the tables that holds them
    refreshed: int = 0
    refresh_tables: list[str] = field(default_factory=list)

    @property
    def deleted(self) -> int:
        return sum(len(ids) for ids in self.delete.values())


# The served columns that come from the catalog and not from the document: a movie whose content hash is unchanged
# can still have new votes (the commonest nightly change), or new genres (labels never enter the document).
REFRESHED_COLUMNS = [c for c in METADATA_COLUMNS if c not in ("movie_id", "content_hash")]
_META = "_meta"  # a row hash of REFRESHED_COLUMNS
# served and catalog columns share these types; the cast makes the hash independent of how a reader typed them
_REFRESHED_SCHEMA = pa.schema([CATALOG.field(c).with_nullable(True) for c in REFRESHED_COLUMNS])


def _published_state(store: Store) -> pa.Table:
    """movie_id, content_hash, model_version, _pub_table and the metadata hash of everything published now."""
    parts = []
    for name, tbl in store.open_tables().items():
        t = tbl.search().select(["movie_id", "content_hash", "model_version", *REFRESHED_COLUMNS]).limit(None)
        t = _with_meta_hash(t.to_arrow()).select(["movie_id", "content_hash", "model_version", _META])
        parts.append(t.append_column("_pub_table", pa.array([name] * t.num_rows, pa.string())))
    if not parts:
        return pa.table({"movie_id": [], "content_hash": [], "model_version": [], _META: [], "_pub_table": []})
    return pa.concat_tables(parts)


def _with_meta_hash(table: pa.Table) -> pa.Table:
    """`table` with _META: one 64-bit hash of its REFRESHED_COLUMNS per row. Both sides of a diff are hashed in the
    same process by the same function, so equal metadata always hashes equal; a list column (genres) hashes by
    value, which a pandas comparison of the columns themselves would not do."""
    import polars as pl

    values = pl.from_arrow(table.select(REFRESHED_COLUMNS).cast(_REFRESHED_SCHEMA))
    # as text: pandas would turn a uint64 into float64 where the outer merge leaves gaps, merging near hashes
    return table.append_column(_META, values.hash_rows(seed=0).cast(pl.String).to_arrow())


def diff(
    catalog: pa.Table, published: pa.Table, model_version: str
) -> tuple[pa.Table, pa.Table, dict[str, list[str]], int]:
    """(catalog rows to infer, catalog rows to refresh, table -> ids to delete, unchanged count). `catalog` carries
    TABLE and REFRESHED_COLUMNS, `published` the metadata hash; a movie is stale when its content, the model or its
    table changed, refreshed when only its metadata changed, and removed when only the published side has it."""
    catalog = _with_meta_hash(catalog)
    cat = catalog.select(["movie_id", "content_hash", TABLE, _META]).to_pandas()
    m = cat.merge(published.to_pandas(), on="movie_id", how="outer", suffixes=("", "_pub"), indicator=True)
    both = m["_merge"] == "both"
    moved = both & (m[TABLE] != m["_pub_table"])
    stale = both & ((m["content_hash"] != m["content_hash_pub"]) | (m["model_version"] != model_version) | moved)
    refresh = both & ~stale & (m[_META] != m[f"{_META}_pub"])
    leaving = (m["_merge"] == "right_only") | moved
    delete = {str(t): sorted(ids) for t, ids in m.loc[leaving].groupby("_pub_table")["movie_id"]}

    def rows(mask: pd.Series) -> pa.Table:
        ids = pa.array(m.loc[mask, "movie_id"].tolist(), pa.string())
        return catalog.filter(pc.is_in(catalog["movie_id"], value_set=ids)).drop_columns([_META])

    upsert = rows((m["_merge"] == "left_only") | stale)
    return upsert, rows(refresh), delete, int((both & ~stale & ~refresh).sum())


def _plan(
    layout: RunLayout, cfg: StoreConfig, catch_all: str, model_version: str, full: bool
) -> tuple[PublishPlan, pa.Table, pa.Table]:
    catalog = read_catalog(layout, METADATA_COLUMNS)
    if pc.count_distinct(catalog["movie_id"]).as_py() != catalog.num_rows:
        counts = pc.value_counts(catalog["movie_id"])
        twice = sorted(str(v) for v in counts.field("values").filter(pc.greater(counts.field("counts"), 1))[:5])
        raise StoreError(f"{layout.movies}: movie_id is not unique (e.g. {twice}); the catalog stage must deduplicate")
    key = cfg.partition_key
    partitions = partition_tables(catalog[key], cfg)
    catalog = catalog.append_column(TABLE, route(catalog[key], partitions, catch_all))
    if full:
        upsert, refresh, delete, unchanged = catalog, catalog.slice(0, 0), {}, 0
    else:
        upsert, refresh, delete, unchanged = diff(catalog, _published_state(Store(layout.store_dir)), model_version)
    small = not full and upsert.num_rows <= DELTA_FILTER_MAX_IDS
    plan = PublishPlan(
        partitions=partitions,
        targets=sorted(pc.unique(upsert[TABLE]).to_pylist()),
        delete=delete,
        upserted=upsert.num_rows,
        unchanged=unchanged,
        full=full,
        max_votes=float(pc.max(catalog["votes"]).as_py() or 0.0),
        fetch_ids=upsert["movie_id"].to_pylist() if small else None,
        refreshed=refresh.num_rows,
        refresh_tables=sorted(pc.unique(refresh[TABLE]).to_pylist()),
    )
    return plan, upsert, refresh


def plan_publish(
    layout: RunLayout, cfg: StoreConfig, catch_all: str, model_version: str, full: bool
) -> tuple[PublishPlan, ray.ObjectRef, ray.ObjectRef]:
    """The plan, and references to the metadata (METADATA_COLUMNS + TABLE) of the movies to infer and of those
    whose served metadata is only to be refreshed (both stay in the object store for the workers)."""
    task = ray.remote(num_returns=3, max_retries=1)(_plan)
    plan_ref, upsert_ref, refresh_ref = task.remote(layout, cfg, catch_all, model_version, full)
    return worker_result(plan_ref), upsert_ref, refresh_ref
