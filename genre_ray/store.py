"""The served store: LanceDB tables per partition, IVF-PQ indexes, and manifest-based publish / rollback.

Layout decision: one LanceDB table per partition value (default: original language) plus a catch-all table for
values with few movies, rather than one dataset with a partition column. Lance has no partition pruning for vector
search, so a single table answers a `language = 'fr'` query by pre-filtering the whole index; a table per
language gives each language its own IVF-PQ index whose partitions are all relevant, a filtered query touches one
small index, and a nightly change to one language rewrites and re-indexes only that table. The catch-all keeps
long-tail languages from producing hundreds of tiny tables that could not carry an index anyway.

Publish protocol (what readers see is always one consistent run):
1. restore every published table to the version in the current manifest (undoes what an interrupted run wrote);
2. diff the catalog against the published rows (content_hash, model_version, target table);
3. infer only new / changed / moved movies (everything when the model version changed), write them:
   full table writes go through `lance_ray.write_lance` (distributed fragment writes, one commit), nightly
   changes through `merge_insert("movie_id")` + `delete`;
4. index (IVF-PQ when large enough, flat otherwise), record each table's new Lance version;
5. atomically switch `manifest.json` (temp file + os.replace); the previous manifest stays in `manifests/`.
Readers open every table at the manifest's version (`checkout`), so they never see a half-written run, and
rollback is just pointing `manifest.json` at an earlier entry of the history.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from lancedb.index import IvfPq

from genre_ray import schema
from genre_ray.catalog import read_catalog
from genre_ray.config import Config, StoreConfig
from genre_ray.layout import RunLayout, atomic_write_text
from genre_ray.model import load_classifier
from genre_ray.runtime import cluster_cpus, init_ray
from genre_ray.spectrum import compute_spectrum

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HISTORY_DIR = "manifests"
VECTOR = "vector"
# Columns a query returns besides the distance (the vector only when the caller needs it, e.g. for MMR).
RESULT_COLUMNS = ["movie_id", "title", "year", "language", "genres", "popularity", "votes", "genre_probs"]


class StoreError(RuntimeError):
    pass


def table_names(db: lancedb.DBConnection) -> set[str]:
    """Every table in the database. `db.table_names()` is deprecated and returns only its first page (10 names),
    so a store with more partitions than that could never find its own tables again."""
    names: list[str] = []
    token: str | None = None
    while True:
        page = db.list_tables(page_token=token)
        names += page.tables
        token = page.page_token
        if not token:
            return set(names)


# ---------------------------------------------------------------------------------------------------------------
# Partitioning and index parameters


def table_name(prefix: str, value: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_") or "unknown"
    return f"{prefix}_{slug}"


def partition_tables(values: pa.Array | pa.ChunkedArray, cfg: StoreConfig) -> dict[str, str]:
    """Partition value -> table, for the values with at least min_partition_rows movies; the rest go to catch-all."""
    counts = pc.value_counts(values)
    out: dict[str, str] = {}
    for item in counts.to_pylist():
        value, n = item["values"], item["counts"]
        if value is not None and n >= cfg.min_partition_rows:
            out[str(value)] = table_name(cfg.table_prefix, str(value))
    return out


def route(values: pa.Array | pa.ChunkedArray, partitions: Mapping[str, str], catch_all: str) -> pa.Array:
    """The target table of every row (nulls and small partitions: the catch-all)."""
    as_str = pc.cast(values, pa.string())
    keys = pa.array(list(partitions), pa.string())
    names = pa.array(list(partitions.values()), pa.string())
    idx = pc.index_in(as_str, value_set=keys)
    routed = pc.take(names, idx) if len(keys) else pa.nulls(len(as_str), pa.string())
    return pc.fill_null(routed, catch_all)


def ivf_pq_params(num_rows: int, dim: int) -> tuple[int, int]:
    """(num_partitions, num_sub_vectors) for an IVF-PQ index.

    partitions ~ sqrt(n) (the usual IVF balance between centroid scan and list scan), capped at n / 256: Lance's
    k-means wants 256 training vectors per partition and silently trains fewer partitions than asked otherwise
    ("training 17 of the 67 requested IVF partitions" at 4,505 rows). Sub-vectors: 4 dimensions each
    when dim allows (64-d -> 16 codes: finer than Lance's default of 16 dims per code, which lost too much recall
    on 64-d spectra; see bench/index.py), else 8, else one per dimension divisor that exists.
    """
    partitions = max(1, min(round(math.sqrt(num_rows)), num_rows // 256))
    for dims_per_code in (4, 8, 2, 1):
        if dim % dims_per_code == 0:
            return partitions, dim // dims_per_code
    return partitions, 1


# ---------------------------------------------------------------------------------------------------------------
# Manifest


def _manifest_json(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True)


def sql_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"


@dataclass(frozen=True)
class Filters:
    language: str | None = None
    # inclusive; either end may be None
    year_range: tuple[int | None, int | None] | None = None
    exclude_ids: Sequence[str] = ()

    def where(self) -> str | None:
        clauses = []
        if self.language is not None:
            clauses.append(f"language = {sql_str(self.language)}")
        if self.year_range is not None:
            lo, hi = self.year_range
            if lo is not None:
                clauses.append(f"year >= {int(lo)}")
            if hi is not None:
                clauses.append(f"year <= {int(hi)}")
        if self.exclude_ids:
            clauses.append(f"NOT ({sql_in('movie_id', self.exclude_ids)})")
        return " AND ".join(clauses) or None


class Store:
    """Read side of the store: tables at the versions of the current manifest."""

    def __init__(self, store_dir: str | Path, nprobes: int = 20, refine_factor: int = 10):
        self.dir = Path(store_dir)
        self.nprobes = nprobes
        self.refine_factor = refine_factor
        self._db: lancedb.DBConnection | None = None
        self._tables: dict[str, lancedb.table.Table] | None = None
        self._tables_for: str | None = None

    @property
    def db(self) -> lancedb.DBConnection:
        if self._db is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(str(self.dir))
        return self._db

    # -- manifest ---------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any] | None:
        path = self.dir / MANIFEST
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def require_manifest(self) -> dict[str, Any]:
        m = self.manifest()
        if m is None:
            raise StoreError(f"no published store at {self.dir} (run the pipeline's publish step first)")
        return m

    def history(self) -> list[dict[str, Any]]:
        """Every publish, oldest first."""
        files = sorted((self.dir / HISTORY_DIR).glob("*.json"))
        return [json.loads(f.read_text(encoding="utf-8")) for f in files]

    def _switch(self, manifest: dict[str, Any], *, record: bool) -> None:
        if record:
            seq = len(list((self.dir / HISTORY_DIR).glob("*.json")))
            manifest["seq"] = seq
            atomic_write_text(self.dir / HISTORY_DIR / f"{seq:06d}-{manifest['run_id']}.json", _manifest_json(manifest))
        # The one atomic step that makes a run visible.
        atomic_write_text(self.dir / MANIFEST, _manifest_json(manifest))
        self._tables = None

    def rollback(self, to: str | None = None) -> dict[str, Any]:
        """Point readers at an earlier publish: `to` is a run id, None the publish before the current one."""
        current = self.require_manifest()
        history = self.history()
        if to is None:
            earlier = [m for m in history if m["seq"] < current["seq"]]
            if not earlier:
                raise StoreError(f"nothing to roll back to: run {current['run_id']} is the first publish")
            target = earlier[-1]
        else:
            matches = [m for m in history if m["run_id"] == to]
            if not matches:
                known = ", ".join(m["run_id"] for m in history)
                raise StoreError(f"no publish with run id {to!r}; known: {known}")
            target = matches[-1]
        self._switch(dict(target), record=False)
        log.info("rolled back from run %s to run %s", current["run_id"], target["run_id"])
        return target

    # -- tables -----------------------------------------------------------------------------------------------
    def open_tables(self) -> dict[str, lancedb.table.Table]:
        """The published tables, each checked out at its manifest version (read-only, time-travel mode)."""
        m = self.require_manifest()
        if self._tables is None or self._tables_for != m["run_id"] + str(m.get("seq")):
            tables = {}
            for name, info in m["tables"].items():
                tbl = self.db.open_table(name)
                tbl.checkout(info["version"])
                tables[name] = tbl
            self._tables, self._tables_for = tables, m["run_id"] + str(m.get("seq"))
        return self._tables

    def count(self) -> int:
        return sum(t.count_rows() for t in self.open_tables().values())

    def route(self, filters: Filters | None) -> list[str]:
        """Tables a query must visit: one when it filters on the partition key, all otherwise."""
        m = self.require_manifest()
        names = list(m["tables"])
        if filters is None or filters.language is None or m["partition_key"] != "language":
            return names
        target = m["partitions"].get(filters.language, m["catch_all"])
        return [target] if target in m["tables"] else []

    def search(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int,
        filters: Filters | None = None,
        *,
        with_vectors: bool = False,
    ) -> pa.Table:
        """Top-k by cosine distance across the routed tables, best first; adds `_distance` and `_table`."""
        tables = self.open_tables()
        where = filters.where() if filters else None
        columns = RESULT_COLUMNS + ([VECTOR] if with_vectors else [])
        # naming _distance explicitly: Lance deprecates projecting it implicitly (and warns on every query)
        query = np.asarray(vector, dtype=np.float32)
        parts = []
        for name in self.route(filters):
            q = tables[name].search(query, vector_column_name=VECTOR).distance_type("cosine").limit(k)
            q = q.nprobes(self.nprobes).refine_factor(self.refine_factor).select([*columns, "_distance"])
            if where:
                q = q.where(where, prefilter=True)
            res = q.to_arrow()
            parts.append(res.append_column("_table", pa.array([name] * res.num_rows, pa.string())))
        if not parts:
            return pa.table({c: [] for c in [*columns, "_distance", "_table"]})
        merged = pa.concat_tables(parts, promote_options="permissive")
        return merged.sort_by("_distance").slice(0, k)

    def get(self, movie_ids: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        """Rows for these ids (any table), in no particular order; missing ids are simply absent."""
        if not movie_ids:
            return schema.served_schema(1).empty_table().select(list(columns or RESULT_COLUMNS))
        cols = list(columns or [*RESULT_COLUMNS, VECTOR])
        where = sql_in("movie_id", movie_ids)
        parts = [t.search().where(where).select(cols).limit(None).to_arrow() for t in self.open_tables().values()]
        return pa.concat_tables(parts, promote_options="permissive")

    def scan(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        parts = []
        for t in self.open_tables().values():
            q = t.search().select(list(columns)).limit(None)
            if where:
                q = q.where(where)
            parts.append(q.to_arrow())
        return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})


# ---------------------------------------------------------------------------------------------------------------
# Publish


@dataclass
class PublishResult:
    run_id: str
    rows_total: int
    upserted: int
    deleted: int
    unchanged: int
    tables: dict[str, dict[str, Any]]
    model_version: str
    seconds: float
    full_rebuild: bool = False
    published: bool = True

    def summary(self) -> str:
        head = (
            f"publish {self.run_id}: {self.rows_total} movies in {len(self.tables)} tables "
            f"(upserted {self.upserted}, deleted {self.deleted}, unchanged {self.unchanged}"
            f"{', full rebuild' if self.full_rebuild else ''}) model {self.model_version} in {self.seconds:.1f}s"
        )
        if not self.published:
            head += " - nothing changed, manifest kept"
        lines = [head]
        for name, info in sorted(self.tables.items()):
            kind = "ivf-pq" if info["indexed"] else "flat"
            lines.append(f"  {name:<24} {info['rows']:>9} rows  {kind:<6}  version {info['version']}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Diff:
    upsert: pa.Table  # catalog metadata + target table of movies to (re)infer
    delete: dict[str, list[str]]  # table -> ids to remove from it (removed from catalog, or moved away)
    unchanged: int
    full: bool


def _read_catalog(layout: RunLayout) -> pa.Table:
    from genre_ray.spectrum import METADATA_COLUMNS

    table = read_catalog(layout, METADATA_COLUMNS)
    if pc.count_distinct(table["movie_id"]).as_py() != table.num_rows:
        raise StoreError(f"{layout.movies}: movie_id is not unique; the catalog stage must deduplicate")
    return table


def _load_embeddings(layout: RunLayout) -> ray.data.Dataset:
    from genre_ray.embed import load_embeddings  # helper stage, imported late: the store reads it only here

    return load_embeddings(layout)


def _published_state(store: Store) -> pa.Table:
    """movie_id, content_hash, model_version, _table of everything published now."""
    parts = []
    for name, tbl in store.open_tables().items():
        t = tbl.search().select(["movie_id", "content_hash", "model_version"]).limit(None).to_arrow()
        parts.append(t.append_column("_table", pa.array([name] * t.num_rows, pa.string())))
    if not parts:
        return pa.table({"movie_id": [], "content_hash": [], "model_version": [], "_table": []})
    return pa.concat_tables(parts)


def _diff(catalog: pa.Table, published: pa.Table, model_version: str, full: bool) -> _Diff:
    if full or published.num_rows == 0:
        return _Diff(upsert=catalog, delete={}, unchanged=0, full=True)
    cat = catalog.select(["movie_id", "content_hash", "_table"]).to_pandas()
    pub = published.to_pandas()
    m = cat.merge(pub, on="movie_id", how="outer", suffixes=("", "_pub"), indicator=True)
    new = m["_merge"] == "left_only"
    removed = m["_merge"] == "right_only"
    both = m["_merge"] == "both"
    stale = both & (
        (m["content_hash"] != m["content_hash_pub"])
        | (m["model_version"] != model_version)
        | (m["_table"] != m["_table_pub"])
    )
    moved = both & (m["_table"] != m["_table_pub"])
    delete: dict[str, list[str]] = {}
    for table, ids in m.loc[removed | moved].groupby("_table_pub")["movie_id"]:
        delete[str(table)] = sorted(ids)
    upsert_ids = pa.array(m.loc[new | stale, "movie_id"].tolist(), pa.string())
    upsert = catalog.filter(pc.is_in(catalog["movie_id"], value_set=upsert_ids))
    return _Diff(upsert=upsert, delete=delete, unchanged=int((both & ~stale).sum()), full=False)


def _spectrum_rows(
    cfg: Config, layout: RunLayout, embeddings: ray.data.Dataset, upsert: pa.Table
) -> tuple[ray.data.Dataset, list[str]]:
    """Materialised served rows for the movies in `upsert`, and the ids among them with no current embedding."""
    actors = cfg.store.spectrum_actors or max(1, int(cluster_cpus() // 2))
    rows = compute_spectrum(
        embeddings,
        upsert,
        layout.model_dir,
        batch_size=cfg.store.spectrum_batch_size,
        concurrency=actors,
        num_cpus=cfg.store.spectrum_cpus,
    ).materialize()
    got: list[str] = []
    for t in ray.get(list(rows.select_columns(["movie_id"]).to_arrow_refs())):
        got += t.column("movie_id").to_pylist() if t.num_rows else []
    missing = pc.filter(
        upsert["movie_id"], pc.invert(pc.is_in(upsert["movie_id"], value_set=pa.array(got, pa.string())))
    )
    return rows, sorted(missing.to_pylist())


def _rows_for(rows: ray.data.Dataset, table: str, routing: pa.Table) -> ray.data.Dataset:
    ids = routing.filter(pc.equal(routing["_table"], table))["movie_id"]
    ref = ray.put(ids.combine_chunks())

    def keep(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_in(batch["movie_id"], value_set=ray.get(ref)))

    return rows.map_batches(keep, batch_format="pyarrow", num_cpus=0.25, zero_copy_batch=True)


def _index(tbl: lancedb.table.Table, cfg: StoreConfig, dim: int, full: bool) -> bool:
    """IVF-PQ on tables large enough to train it; flat (exact) search below that. Returns whether indexed."""
    n = tbl.count_rows()
    has_index = any(ix.columns == [VECTOR] for ix in tbl.list_indices())
    if n < cfg.index_min_rows:
        log.info("table %s: %d rows < store.index_min_rows=%d, flat (exact) search", tbl.name, n, cfg.index_min_rows)
        return has_index
    if has_index and not full:
        # Nightly deltas join the existing partitions without retraining k-means (full runs retrain).
        tbl.to_lance().optimize.optimize_indices()
        return True
    partitions, sub_vectors = ivf_pq_params(n, dim)
    log.info("table %s: IVF-PQ over %d rows, %d partitions, %d sub-vectors", tbl.name, n, partitions, sub_vectors)
    tbl.create_index(
        VECTOR,
        config=IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors),
        replace=True,
    )
    return True


def _restore_published(store: Store, manifest: Mapping[str, Any] | None) -> None:
    """Undo whatever an interrupted run wrote after the last switch: tables back to their manifest versions."""
    if manifest is None:
        return
    existing = table_names(store.db)
    for name, info in manifest["tables"].items():
        if name not in existing:
            raise StoreError(f"published table {name} is missing from {store.dir}")
        tbl = store.db.open_table(name)
        if tbl.version != info["version"]:
            log.warning("table %s is at version %d, published %d: restoring", name, tbl.version, info["version"])
            tbl.restore(info["version"])


def publish(
    cfg: Config,
    layout: RunLayout,
    run_id: str | None = None,
    *,
    embeddings: ray.data.Dataset | pa.Table | None = None,
) -> PublishResult:
    """Bring the store up to date with the catalog + embeddings + model in `layout`, then switch readers to it.

    `embeddings` defaults to the embed stage's output; pass a Dataset/Table to publish other vectors.
    """
    start = time.perf_counter()
    init_ray(cfg.ray)
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    store = Store(layout.store_dir)
    previous = store.manifest()
    _restore_published(store, previous)

    loaded = load_classifier(layout.model_dir)
    dim = loaded.model.spec.spectrum_dim
    catalog = _read_catalog(layout)
    partitions = partition_tables(catalog[cfg.store.partition_key], cfg.store)
    catch_all = table_name(cfg.store.table_prefix, cfg.store.catch_all)
    routing = route(catalog[cfg.store.partition_key], partitions, catch_all)
    catalog = catalog.append_column("_table", routing)

    full = (
        previous is None
        or previous["model_version"] != loaded.model_version
        or previous["partition_key"] != cfg.store.partition_key
    )
    diff = _diff(catalog, _published_state(store) if not full else pa.table({}), loaded.model_version, full)
    deleted = sum(len(v) for v in diff.delete.values())
    log.info(
        "publish %s: %d to infer, %d to delete, %d unchanged%s",
        run_id,
        diff.upsert.num_rows,
        deleted,
        diff.unchanged,
        " (full rebuild)" if diff.full else "",
    )
    if previous is not None and not diff.full and diff.upsert.num_rows == 0 and deleted == 0:
        return PublishResult(
            run_id=previous["run_id"],
            rows_total=store.count(),
            upserted=0,
            deleted=0,
            unchanged=diff.unchanged,
            tables=previous["tables"],
            model_version=loaded.model_version,
            seconds=time.perf_counter() - start,
            published=False,
        )

    if embeddings is None:
        embeddings = _load_embeddings(layout)
    if isinstance(embeddings, pa.Table):
        embeddings = ray.data.from_arrow(embeddings)
    rows, missing = _spectrum_rows(cfg, layout, embeddings, diff.upsert)
    if missing:
        raise StoreError(
            f"{len(missing)} catalog movies have no embedding for their current content_hash "
            f"(e.g. {missing[:5]}); run the embed stage first"
        )

    touched = _write(store, rows, diff, previous, catalog.select(["movie_id", "_table"]), dim)
    tables: dict[str, dict[str, Any]] = {}
    old_tables = previous["tables"] if previous and not diff.full else {}
    for name in sorted(set(old_tables) | set(touched)):
        tbl = store.db.open_table(name)
        n = tbl.count_rows()
        if n == 0:
            continue  # every movie moved out or was removed: no longer published (the data stays for rollback)
        indexed = _index(tbl, cfg.store, dim, diff.full) if name in touched else old_tables[name]["indexed"]
        # Re-open: index maintenance may have committed through the Lance dataset rather than this handle.
        tables[name] = {"rows": n, "indexed": indexed, "version": store.db.open_table(name).version}

    votes = pc.max(catalog["votes"]).as_py() or 0
    manifest = {
        "run_id": run_id,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": loaded.model_version,
        "vocab": loaded.vocab,
        "spectrum_dim": dim,
        "partition_key": cfg.store.partition_key,
        "partitions": partitions,
        "catch_all": catch_all,
        "tables": tables,
        "stats": {"rows": sum(t["rows"] for t in tables.values()), "max_log_votes": math.log1p(votes)},
    }
    _commit(store, manifest)
    return PublishResult(
        run_id=run_id,
        rows_total=manifest["stats"]["rows"],
        upserted=diff.upsert.num_rows,
        deleted=deleted,
        unchanged=diff.unchanged,
        tables=tables,
        model_version=loaded.model_version,
        seconds=time.perf_counter() - start,
        full_rebuild=diff.full,
    )


def _commit(store: Store, manifest: dict[str, Any]) -> None:
    store._switch(manifest, record=True)


def _write(
    store: Store,
    rows: ray.data.Dataset,
    diff: _Diff,
    previous: Mapping[str, Any] | None,
    routing: pa.Table,
    dim: int,
) -> set[str]:
    """Write served rows into their tables; returns the tables that got a new version."""
    import lance_ray

    published = set(previous["tables"]) if previous and not diff.full else set()
    existing = table_names(store.db)
    target_tables = set(pc.unique(diff.upsert["_table"]).to_pylist())
    served = schema.served_schema(dim)
    touched: set[str] = set()

    for table, ids in sorted(diff.delete.items()):
        if table in published:
            store.db.open_table(table).delete(sql_in("movie_id", ids))
            touched.add(table)

    for table in sorted(target_tables):
        part = _rows_for(rows, table, routing)
        if table in published:
            # Nightly path: the delta is small, so it is collected and upserted in one merge_insert commit.
            delta = pa.concat_tables([served.empty_table(), *ray.get(list(part.to_arrow_refs()))]).cast(served)
            tbl = store.db.open_table(table)
            tbl.merge_insert("movie_id").when_matched_update_all().when_not_matched_insert_all().execute(delta)
        else:
            # Full path: distributed fragment writes and one commit. "overwrite" also replaces a table left by
            # an unpublished run or an older layout, as a new version (earlier versions stay for rollback).
            mode = "overwrite" if table in existing else "create"
            lance_ray.write_lance(part, str(store.dir / f"{table}.lance"), schema=served, mode=mode)
        touched.add(table)
    return touched
