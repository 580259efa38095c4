"""Which table a movie is served from, and the IVF-PQ parameters for a table of a given size.

Layout decision: one LanceDB table per partition value (default: original language) plus a catch-all table for
values with few movies, rather than one dataset with a partition column. Lance has no partition pruning for vector
search, so a single table answers a `language = 'fr'` query by pre-filtering the whole index; a table per
language gives each language its own IVF-PQ index whose partitions are all relevant, a filtered query touches one
small index, and a nightly change to one language rewrites and re-indexes only that table. The catch-all keeps
long-tail languages from producing hundreds of tiny tables that could not carry an index anyway.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from genre_ray.config import StoreConfig


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
