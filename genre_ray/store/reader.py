"""Read side of the store: immutable views of one publish (tables at its manifest's versions), vector search,
lookups by id and title."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genre_ray import schema, serving_params, storage
from genre_ray.errors import StoreError
from genre_ray.serving_params import ServingParams
from genre_ray.sql import sql_in, sql_str
from genre_ray.storage import StoragePath
from genre_ray.store import manifest as manifests

log = logging.getLogger(__name__)

VECTOR = "vector"
# Lower-cased, whitespace-collapsed title: what title lookups compare, with a scalar (B-tree) index on it.
TITLE_KEY = "title_key"
# Titles considered per table for "did you mean" suggestions.
SUGGEST_POOL = 200
# Columns a query returns besides the distance (the vector only when the caller needs it, e.g. for MMR).
# How often a long-lived reader checks the switch log for a newer publish (Store.view).
REFRESH_S = 1.0
RESULT_COLUMNS = ["movie_id", "title", "year", "language", "genres", "popularity", "votes", "genre_probs"]


# Threads for searching a query's tables side by side, shared by every view of the process (a view per publish
# must not start a pool of its own).
SEARCH_THREADS = 8
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _search_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="lance-search")
        return _POOL


# Any run of whitespace or Unicode space separators (no-break space, em space, ideographic space): RE2's \s alone is
# ASCII, so a title written with U+00A0 would never match one typed with a plain space.
_SPACES = r"[\s\p{Z}]+"


def title_keys(titles: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """title_key of every title: lower-cased, whitespace collapsed to one space, trimmed. The one definition: the
    writer applies it to each batch it serves, the reader to the title a query names."""
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(titles), _SPACES, " "))


def title_key(title: str) -> str:
    return title_keys(pa.array([str(title)], pa.string()))[0].as_py()


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


@dataclass(frozen=True)
class Publish:
    """Which publish a view serves: what every answer names."""

    run_id: str
    seq: int | None
    model_version: str | None
    # the switch record the manifest was read from (None: a store from before the switch log)
    switch: int | None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seq": self.seq, "model_version": self.model_version}


@dataclass(frozen=True, eq=False)
class View:
    """One publish, immutable: its manifest, its tables opened once at the manifest's versions, its vocabulary and
    ranking parameters. A query takes one view and routes, searches and looks up on it alone, so a switch made
    while it runs cannot give it the tables of one publish and the routing (or vocabulary) of another."""

    dir: StoragePath
    manifest: Mapping[str, Any]
    tables: Mapping[str, lancedb.table.Table]
    vocab: tuple[str, ...]
    max_log_votes: float
    params: ServingParams
    publish: Publish
    nprobes: int = 20
    refine_factor: int = 10
    # search the routed tables side by side (a shared thread pool) rather than in turn
    parallel: bool = True

    @classmethod
    def open(
        cls,
        db: lancedb.DBConnection,
        store_dir: StoragePath,
        manifest: dict[str, Any],
        nprobes: int = 20,
        refine_factor: int = 10,
        parallel: bool = True,
    ) -> View:
        tables = {}
        for name, info in manifest["tables"].items():
            tbl = db.open_table(name)
            tbl.checkout(info["version"])  # read-only, time-travel mode: later commits do not move it
            tables[name] = tbl
        return cls(
            dir=store_dir,
            manifest=MappingProxyType(manifest),
            tables=MappingProxyType(tables),
            vocab=tuple(manifest["vocab"]),
            max_log_votes=float(manifest["stats"]["max_log_votes"] or 1.0),
            params=serving_params.from_manifest(manifest),
            publish=Publish(
                run_id=manifest["run_id"],
                seq=manifest.get("seq"),
                model_version=manifest.get("model_version"),
                switch=manifest.get(manifests.SWITCH),
            ),
            nprobes=nprobes,
            refine_factor=refine_factor,
            parallel=parallel,
        )

    def count(self) -> int:
        return sum(t.count_rows() for t in self.tables.values())

    def route(self, filters: Filters | None) -> list[str]:
        """Tables a query must visit: one when it filters on the partition key, all otherwise."""
        m = self.manifest
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
        where = filters.where() if filters else None
        columns = RESULT_COLUMNS + ([VECTOR] if with_vectors else [])
        # naming _distance explicitly: Lance deprecates projecting it implicitly (and warns on every query)
        query = np.asarray(vector, dtype=np.float32)

        def one(name: str) -> pa.Table:
            q = self.tables[name].search(query, vector_column_name=VECTOR).distance_type("cosine").limit(k)
            q = q.nprobes(self.nprobes).refine_factor(self.refine_factor).select([*columns, "_distance"])
            if where:
                q = q.where(where, prefilter=True)
            res = q.to_arrow()
            return res.append_column("_table", pa.array([name] * res.num_rows, pa.string()))

        names = self.route(filters)
        # An unfiltered query visits every language table (~19 at 1M titles), each a few ms of fixed cost spent in
        # Lance's native code: side by side on a shared pool, not one after another (bench/serve.py measures it).
        parts = list(_search_pool().map(one, names)) if self.parallel and len(names) > 1 else [one(n) for n in names]
        if not parts:
            return pa.table({c: [] for c in [*columns, "_distance", "_table"]})
        merged = pa.concat_tables(parts, promote_options="permissive")
        return merged.sort_by("_distance").slice(0, k)

    def get(self, movie_ids: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        """Rows for these ids (any table), in no particular order; missing ids are simply absent."""
        if not movie_ids:
            return schema.served_schema(1).empty_table().select(list(columns or RESULT_COLUMNS))
        return self.scan(list(columns or [*RESULT_COLUMNS, VECTOR]), sql_in("movie_id", movie_ids))

    def by_title(self, title: str, columns: Sequence[str]) -> pa.Table:
        """Rows whose normalised title equals `title`'s: a B-tree lookup on title_key in every table."""
        return self.scan(columns, f"{TITLE_KEY} = {sql_str(title_key(title))}")

    def titles_near(self, title: str, limit: int = SUGGEST_POOL) -> list[str]:
        """Up to `limit` titles per table sharing the first characters of `title`: the candidate pool for
        close-match suggestions, a bounded B-tree range query rather than a scan of every title."""
        key = title_key(title)
        for n in (2, 1):
            if len(key) < n:
                continue
            prefix = key[:n]
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            where = f"{TITLE_KEY} >= {sql_str(prefix)} AND {TITLE_KEY} < {sql_str(upper)}"
            titles = self.scan(["title"], where, limit=limit)
            if titles.num_rows:
                return [t for t in titles["title"].to_pylist() if t]
        return []

    def language_counts(self) -> dict[str, int]:
        """Movies per language: a partition table's rows from the manifest, and a count per language of the
        catch-all only (the one table holding several), so no query reads every table's language column."""
        m = self.manifest
        counts: dict[str, int] = {}
        if m["partition_key"] == "language":
            counts = {lang: m["tables"][t]["rows"] for lang, t in m["partitions"].items() if t in m["tables"]}
        rest = [t for name, t in self.tables.items() if m["partition_key"] != "language" or name == m["catch_all"]]
        for t in rest:
            values = t.search().select(["language"]).limit(None).to_arrow()["language"]
            for item in pc.value_counts(values).to_pylist():
                if item["values"]:
                    counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
        return counts

    def scan(self, columns: Sequence[str], where: str | None = None, limit: int | None = None) -> pa.Table:
        """Rows matching `where` from every table (a scalar index on the filtered column makes this a lookup)."""
        parts = []
        for t in self.tables.values():
            q = t.search().select(list(columns)).limit(limit)
            if where:
                q = q.where(where)
            parts.append(q.to_arrow())
        return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})


class Store:
    """Read side of the store. `view()` is the publish a reader serves, swapped for the next one in one step when
    a newer switch record appears; the convenience methods below (search, get, scan, ...) each run on the view of
    the publish current when they are called."""

    def __init__(
        self,
        store_dir: str | StoragePath,
        nprobes: int = 20,
        refine_factor: int = 10,
        refresh_s: float = REFRESH_S,
        parallel: bool = True,
    ):
        # a local Path or an ObjectPath; a string is resolved with the environment's storage settings only
        self.dir = storage.location(store_dir)
        self.nprobes = nprobes
        self.refine_factor = refine_factor
        self.refresh_s = refresh_s
        self.parallel = parallel
        self._db: lancedb.DBConnection | None = None
        self._view: View | None = None
        self._checked = -math.inf
        self._lock = threading.Lock()

    @property
    def db(self) -> lancedb.DBConnection:
        if self._db is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(str(self.dir), storage_options=storage.lance_options(self.dir))
        return self._db

    # -- manifest ---------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any] | None:
        return manifests.read_manifest(self.dir)

    def require_manifest(self) -> dict[str, Any]:
        m = self.manifest()
        if m is None:
            raise StoreError(f"no published store at {self.dir} (run the pipeline's publish step first)")
        return m

    def history(self) -> list[dict[str, Any]]:
        """Every kept publish, oldest first."""
        return manifests.read_history(self.dir)

    def rollback(self, to: str | None = None) -> dict[str, Any]:
        """Point readers at an earlier publish: `to` is a run id, None the publish before the current one.

        The rolled-back manifest is pinned: it records that its model was chosen by hand, so a later publish
        does not replace it with whatever model/ holds (see writer.publish)."""
        current = self.require_manifest()
        target = manifests.rollback_target(self.dir, current, to)
        target["last_seq"] = manifests.last_seq(current)
        target["pinned"] = True
        manifests.switch(self.dir, target, based_on=current)
        log.info("rolled back from run %s to run %s", current["run_id"], target["run_id"])
        return target

    # -- views ------------------------------------------------------------------------------------------------
    def view(self) -> View:
        """The view this reader serves, checked against the switch log at most every `refresh_s` seconds (never
        per query: a listing per query would cost more than the query on an object store)."""
        if self._view is None or time.monotonic() - self._checked >= self.refresh_s:
            return self.refresh()
        return self._view

    def refresh(self) -> View:
        """Check the switch log now; open a view of the newest publish if it is not the one held. A request that
        took the old view keeps it (views are immutable), so it finishes on the publish it started on."""
        with self._lock:
            held = self._view
            newest = manifests.switches(self.dir)
            if held is not None and newest and held.publish.switch == newest[-1][0]:
                self._checked = time.monotonic()
                return held
            m = self.require_manifest()
            if held is None or (held.publish.switch, held.publish.run_id, held.publish.seq) != (
                m.get(manifests.SWITCH),
                m["run_id"],
                m.get("seq"),
            ):
                held = View.open(self.db, self.dir, m, self.nprobes, self.refine_factor, self.parallel)
                self._view = held
            self._checked = time.monotonic()
            return held

    # -- one-off reads, each on the publish current now (long-lived readers take a view instead) ----------------
    def open_tables(self) -> Mapping[str, lancedb.table.Table]:
        """The published tables, each checked out at its manifest version (read-only, time-travel mode)."""
        return self.refresh().tables

    def count(self) -> int:
        return self.refresh().count()

    def route(self, filters: Filters | None) -> list[str]:
        return self.refresh().route(filters)

    def search(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int,
        filters: Filters | None = None,
        *,
        with_vectors: bool = False,
    ) -> pa.Table:
        return self.refresh().search(vector, k, filters, with_vectors=with_vectors)

    def get(self, movie_ids: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        return self.refresh().get(movie_ids, columns)

    def by_title(self, title: str, columns: Sequence[str]) -> pa.Table:
        return self.refresh().by_title(title, columns)

    def titles_near(self, title: str, limit: int = SUGGEST_POOL) -> list[str]:
        return self.refresh().titles_near(title, limit)

    def scan(self, columns: Sequence[str], where: str | None = None, limit: int | None = None) -> pa.Table:
        return self.refresh().scan(columns, where, limit)
