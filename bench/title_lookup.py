"""`similar TITLE` latency before and after the store's scalar (B-tree) indexes on movie_id and title_key.

    python -m bench.title_lookup [--rows 100000] [--tables 4] [--queries 30]

Builds a synthetic served store (the served schema, titles "<word> <word> <n>", random 64-d vectors, IVF-PQ on
every table so the vector search is the same fast path before and after), then times through the real
`Recommender.similar`:
- known title: resolution by movie id, then by title_key, then the vector query;
- unknown title ("did you mean"): before = the previous code path, every title scanned + difflib over all of
  them; after = `Store.titles_near`, a bounded B-tree range query on the title's first characters.
"before" is the same store with no scalar index (the state of every store published before this change).
"""

from __future__ import annotations

import argparse
import difflib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import BTree, IvfPq

from genre_ray import schema
from genre_ray.config import Config
from genre_ray.layout import RunLayout
from genre_ray.recommend import Recommender
from genre_ray.store import Store, ivf_pq_params
from genre_ray.store.manifest import record
from genre_ray.store.tables import served_schema, with_title_key

WORDS = [
    "red",
    "blue",
    "night",
    "day",
    "river",
    "city",
    "ghost",
    "love",
    "war",
    "star",
    "dark",
    "sun",
    "moon",
    "iron",
    "glass",
    "silent",
    "last",
    "first",
]
GENRES = ["Action", "Comedy", "Drama", "Horror"]
DIM = 64


def build(root: Path, rows: int, tables: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    db = lancedb.connect(str(root / "store"))
    names = [f"movies_t{i}" for i in range(tables)]
    titles: list[str] = []
    info = {}
    for t, name in enumerate(names):
        n = rows // tables
        ids = [f"{t}-{i}" for i in range(n)]
        title = [f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()} {t * n + i}" for i in range(n)]
        titles += title
        vectors = rng.normal(size=(n, DIM)).astype(np.float32)
        data = pa.table(
            {
                "movie_id": ids,
                "title": title,
                "year": pa.array(rng.integers(1950, 2024, n), pa.int32()),
                "language": [f"l{t}"] * n,
                "genres": [[GENRES[i % 4]] for i in range(n)],
                "popularity": rng.uniform(0, 100, n),
                "votes": rng.integers(1, 5000, n),
                "genre_probs": pa.array(
                    [rng.uniform(size=4).astype(np.float32) for _ in range(n)], pa.list_(pa.float32())
                ),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
                "content_hash": ["x"] * n,
                "model_version": ["bench"] * n,
            }
        )
        target = served_schema(DIM)
        data = with_title_key(data.select([f.name for f in schema.served_schema(DIM) if f.name in data.column_names]))
        tbl = db.create_table(name, data.cast(target, safe=False) if data.schema != target else data)
        partitions, sub_vectors = ivf_pq_params(n, DIM)
        tbl.create_index(
            "vector", config=IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors)
        )
        info[name] = {"rows": n, "indexed": True, "version": tbl.version}
    manifest = {
        "run_id": "bench",
        "seq": 0,
        "model_version": "bench",
        "vocab": GENRES,
        "spectrum_dim": DIM,
        "partition_key": "language",
        "partitions": {f"l{t}": name for t, name in enumerate(names)},
        "catch_all": names[-1],
        "tables": info,
        "stats": {"rows": rows, "max_log_votes": 8.5},
    }
    record(root / "store", manifest, None)
    return titles


def add_scalar_indexes(root: Path) -> None:
    store = Store(root / "store")
    manifest = store.require_manifest()
    for name in manifest["tables"]:
        tbl = store.db.open_table(name)
        tbl.create_index("movie_id", config=BTree())
        tbl.create_index("title_key", config=BTree())
        manifest["tables"][name]["version"] = tbl.version
    record(root / "store", manifest)


def old_suggestions(store: Store, title: str) -> list[str]:
    """The code path before this change: every title of the catalog, then difflib over all of them."""
    titles = store.scan(["title"])["title"].to_pylist()
    by_lower = {t.lower(): t for t in titles if t}
    return difflib.get_close_matches(title.lower(), list(by_lower), n=5, cutoff=0.6)


def new_suggestions(store: Store, title: str) -> list[str]:
    by_lower = {t.lower(): t for t in store.titles_near(title)}
    return difflib.get_close_matches(title.lower(), list(by_lower), n=5, cutoff=0.6)


def timed(fn: Callable[[], object], queries: int) -> float:
    fn()  # warm: open tables, page cache
    times = []
    for _ in range(queries):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def measure(root: Path, cfg: Config, probe: str, typo: str, queries: int, before: bool) -> tuple[str, float, float]:
    rec = Recommender(cfg, RunLayout.of(root), Store(root / "store"))
    suggest = old_suggestions if before else new_suggestions
    known = timed(lambda: rec.similar(probe, k=10), queries)
    unknown = timed(lambda: suggest(rec.store, typo), queries)
    label = "before (no scalar index)" if before else "after (B-tree on movie_id, title_key)"
    return label, known, unknown


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--tables", type=int, default=4)
    p.add_argument("--queries", type=int, default=30)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        titles = build(root, args.rows, args.tables)
        probe = titles[len(titles) // 2]
        typo = probe[:-1] + "x"  # no such title: the "did you mean" path
        cfg = Config(workdir=str(root))
        results = [measure(root, cfg, probe, typo, args.queries, before=True)]
        add_scalar_indexes(root)
        results.append(measure(root, cfg, probe, typo, args.queries, before=False))
        print(
            f"\nsimilar TITLE on a synthetic store: {args.rows:,} rows in {args.tables} tables, median of "
            f"{args.queries} queries\n"
        )
        print("| store | similar(known title) ms | unknown title -> suggestions ms |")
        print("| --- | ---: | ---: |")
        for label, known, unknown in results:
            print(f"| {label} | {known:.1f} | {unknown:.1f} |")


if __name__ == "__main__":
    main()
