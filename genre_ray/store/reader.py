"""Read side of the store: tables at the versions of the current manifest, vector search, lookups by id."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from genre_ray import schema, storage
from genre_ray.sql import sql_in, sql_str
from genre_ray.storage import StoragePath
from genre_ray.store import manifest as manifests
from genre_ray.store.errors import StoreError

log = logging.getLogger(__name__)

VECTOR = "vector"
# Lower-cased, whitespace-collapsed title: what title lookups compare, with a scalar (B-tree) index on it.
TITLE_KEY = "title_key"
# Titles considered per table for "did you mean" suggestions.
SUGGEST_POOL = 200
# Columns a query returns besides the distance (the vector only when the caller needs it, e.g. for MMR).
RESULT_COLUMNS = ["movie_id", "title", "year", "language", "genres", "popularity", "votes", "genre_probs"]


def title_key(title: str) -> str:
    return " ".join(str(title).lower().split())


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

    def __init__(self, store_dir: str | StoragePath, nprobes: int = 20, refine_factor: int = 10):
        # a local Path or an ObjectPath; a string is resolved with the environment's storage settings only
        self.dir = storage.location(store_dir)
        self.nprobes = nprobes
        self.refine_factor = refine_factor
        self._db: lancedb.DBConnection | None = None
        self._tables: dict[str, lancedb.table.Table] | None = None
        self._tables_for: str | None = None

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
        self._tables = None
        log.info("rolled back from run %s to run %s", current["run_id"], target["run_id"])
        return target

    # -- tables -----------------------------------------------------------------------------------------------
    def open_tables(self) -> dict[str, lancedb.table.Table]:
        """The published tables, each checked out at its manifest version (read-only, time-travel mode)."""
        m = self.require_manifest()
        key = f"{m['run_id']}:{m.get('seq')}"
        if self._tables is None or self._tables_for != key:
            tables = {}
            for name, info in m["tables"].items():
                tbl = self.db.open_table(name)
                tbl.checkout(info["version"])
                tables[name] = tbl
            self._tables, self._tables_for = tables, key
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

    def scan(self, columns: Sequence[str], where: str | None = None, limit: int | None = None) -> pa.Table:
        """Rows matching `where` from every table (a scalar index on the filtered column makes this a lookup)."""
        parts = []
        for t in self.open_tables().values():
            q = t.search().select(list(columns)).limit(limit)
            if where:
                q = q.where(where)
            parts.append(q.to_arrow())
        return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})
