"""IVF-PQ (LanceDB) vs exact numpy search: build time, recall@10, single-query latency.

    python -m bench.index [--sizes 100000,1000000 | 0] [--dim 64] [--queries 200] [--nprobes 10,20,40]
                          [--refine 1,10] [--workdir runs/local]

Synthetic data: unit vectors around 1 cluster per ~1,000 rows (Gaussian spread), queries drawn from the same
mixture but not in the table. The index uses the store's own rule (`store.ivf_pq_params`) and cosine distance.
Exact search is a float32 matrix-vector product + argpartition over the same (in-memory) matrix, i.e. the fastest
brute force there is; LanceDB reads from disk (page cache warm after the first queries). With --workdir, every
indexed table of that run's published store is measured too, with 200 of its own rows as queries.
Goal (issue #5): recall@10 >= 0.95 at >= 3x faster than brute force at 1M.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import IvfPq

from genre_ray.layout import RunLayout
from genre_ray.store import Store, ivf_pq_params

K = 10


@dataclass
class Row:
    data: str
    rows: int
    build_s: float
    nprobes: int
    refine: int
    recall: float
    p50_ms: float
    p95_ms: float
    exact_p50_ms: float
    exact_p95_ms: float
    # LanceDB's own exact scan (no index): what a table below store.index_min_rows answers with
    flat_p50_ms: float

    @property
    def speedup(self) -> float:
        return self.exact_p50_ms / self.p50_ms


def clustered(centers: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + 0.35 * rng.normal(size=(n, centers.shape[1])).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(x: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Top-K by cosine (x and queries are unit vectors) and per-query latency in ms."""
    top, lat = [], []
    for q in queries:
        t = time.perf_counter()
        sims = x @ q
        part = np.argpartition(-sims, K)[:K]
        top.append(part[np.argsort(-sims[part])])
        lat.append((time.perf_counter() - t) * 1e3)
    return np.asarray(top), lat


def ann(
    tbl: lancedb.table.Table, queries: np.ndarray, nprobes: int, refine: int, flat: bool = False
) -> tuple[list[set[int]], list[float]]:
    hits, lat = [], []
    for q in queries:
        t = time.perf_counter()
        res = tbl.search(q).distance_type("cosine").nprobes(nprobes).refine_factor(refine).limit(K)
        if flat:
            res = res.bypass_vector_index()
        ids = res.select(["id", "_distance"]).to_arrow()["id"].to_pylist()
        lat.append((time.perf_counter() - t) * 1e3)
        hits.append(set(ids))
    return hits, lat


def build(db: lancedb.DBConnection, name: str, x: np.ndarray) -> tuple[lancedb.table.Table, float]:
    data = pa.table(
        {
            "id": pa.array(np.arange(len(x), dtype=np.int64)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
        }
    )
    tbl = db.create_table(name, data, mode="overwrite")
    partitions, sub_vectors = ivf_pq_params(len(x), x.shape[1])
    t = time.perf_counter()
    tbl.create_index(
        "vector", config=IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors)
    )
    return tbl, time.perf_counter() - t


def measure(
    label: str, tbl: lancedb.table.Table, x: np.ndarray, queries: np.ndarray, build_s: float, args: argparse.Namespace
) -> list[Row]:
    truth, exact_lat = exact(x, queries)
    ann(tbl, queries[:5], 1, 1, flat=True)
    flat_lat = ann(tbl, queries[: min(len(queries), 50)], 1, 1, flat=True)[1]
    rows = []
    for nprobes in args.nprobes:
        for refine in args.refine:
            ann(tbl, queries[:10], nprobes, refine)  # warm the page cache and index caches
            hits, lat = ann(tbl, queries, nprobes, refine)
            recall = np.mean([len(h & set(t.tolist())) / K for h, t in zip(hits, truth, strict=True)])
            rows.append(
                Row(
                    label,
                    len(x),
                    build_s,
                    nprobes,
                    refine,
                    float(recall),
                    *np.percentile(lat, [50, 95]),
                    *np.percentile(exact_lat, [50, 95]),
                    float(np.percentile(flat_lat, 50)),
                )
            )
            print(_fmt(rows[-1]), flush=True)
    return rows


def store_vectors(workdir: Path) -> np.ndarray:
    """Every published spectrum vector of a run (all partition tables), as unit rows."""
    store = Store(RunLayout.of(workdir).store_dir)
    x = np.asarray(store.scan(["vector"])["vector"].to_pylist(), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


HEADER = (
    f"{'data':<22} {'rows':>9} {'build s':>8} {'nprobes':>7} {'refine':>6} {'recall@10':>9} "
    f"{'p50 ms':>7} {'p95 ms':>7} {'exact p50':>9} {'exact p95':>9} {'speedup':>7} {'lance flat p50':>14}"
)


def _fmt(r: Row) -> str:
    return (
        f"{r.data:<22} {r.rows:>9} {r.build_s:>8.1f} {r.nprobes:>7} {r.refine:>6} {r.recall:>9.3f} "
        f"{r.p50_ms:>7.2f} {r.p95_ms:>7.2f} {r.exact_p50_ms:>9.2f} {r.exact_p95_ms:>9.2f} {r.speedup:>6.1f}x "
        f"{r.flat_p50_ms:>14.2f}"
    )


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_ints, default=[100_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobes", type=_ints, default=[10, 20, 40])
    p.add_argument("--refine", type=_ints, default=[1, 10])
    p.add_argument("--workdir", type=Path, default=None, help="a run directory with a published store")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    print(HEADER, flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        db = lancedb.connect(tmp)
        for n in (n for n in args.sizes if n > 0):  # --sizes 0: real store only
            centers = np.random.default_rng(args.seed).normal(size=(max(16, n // 1000), args.dim)).astype(np.float32)
            x = clustered(centers, n, args.seed)
            queries = clustered(centers, args.queries, args.seed + 1)  # same mixture, not rows of the table
            tbl, build_s = build(db, f"synthetic_{n}", x)
            rows += measure(f"synthetic {args.dim}-d", tbl, x, queries, build_s, args)
            del tbl, x
        if args.workdir is not None:
            # The run's real spectra, re-indexed in a scratch table with the store's rule (queries: its own rows).
            x = store_vectors(args.workdir)
            pick = np.random.default_rng(args.seed).choice(len(x), min(args.queries, len(x)), replace=False)
            tbl, build_s = build(db, "store", x)
            rows += measure(f"store {args.workdir.name}", tbl, x, x[pick], build_s, args)
    print("\n" + HEADER)
    for r in rows:
        print(_fmt(r))


if __name__ == "__main__":
    main()
