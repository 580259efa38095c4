"""The HTTP service under load: latency, throughput and errors per endpoint, and what a publish does to them.

    python -m bench.serve --rows 100000 [--rows 1000000] [--tables 19] [--requests 300] [--clients 1,8,32]

Per --rows: builds a served store from stand-in vectors (64-d, `--tables` language tables as `bench.nightly`'s
catalogs give at 1M titles, IVF-PQ and B-tree indexes on each, the served schema), starts `genre-ray serve`'s
application on the local node, and drives it from a bounded loopback load generator: `--clients` threads, each
with its own keep-alive connection, sharing a fixed number of requests per endpoint. Prints p50 / p95 / p99, QPS
and errors per endpoint and client count, then the same queries through the in-process `Recommender` (the floor:
no HTTP, no Serve), with the tables searched side by side and in turn (the fast path's A/B).

Phase 2: 8 clients keep asking `similar` by id while a nightly publish lands (1% of one table's rows re-vectored
through the nightly table task: delete + merge_insert, compaction, index update, then the switch) and then a
rollback; reports failed requests (goal 0) and the seconds from each switch until every answer names it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import BTree, IvfPq

from bench.machine import describe as describe_machine
from genre_ray import schema
from genre_ray.config import Config, RayConfig, StoreConfig
from genre_ray.layout import RunLayout
from genre_ray.recommend import Recommender
from genre_ray.store import Store, ivf_pq_params
from genre_ray.store import manifest as manifests
from genre_ray.store.tables import served_schema, with_title_key

DIM = 64
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Science Fiction", "Thriller", "Animation"]
WORDS = ["red", "blue", "night", "day", "river", "city", "ghost", "love", "war", "star", "dark", "sun", "moon"]
ENDPOINTS = ("similar?id", "similar?title", "for-user", "movies/{id}")


# ----------------------------------------------------------------------------------------------- the store


def _table(rng: np.random.Generator, language: str, start: int, n: int, centers: np.ndarray) -> pa.Table:
    x = centers[rng.integers(0, len(centers), n)] + 0.4 * rng.normal(size=(n, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    probs = rng.dirichlet(np.ones(len(GENRES)), n).astype(np.float32)
    ids = np.arange(start, start + n)
    data = pa.table(
        {
            "movie_id": pa.array(ids.astype(str)),
            "title": pa.array([f"{WORDS[i % len(WORDS)].title()} {WORDS[i // 7 % len(WORDS)]} {i}" for i in ids]),
            "year": pa.array(rng.integers(1950, 2025, n), pa.int32()),
            "language": pa.array([language] * n),
            "genres": pa.array([[GENRES[int(i)]] for i in probs.argmax(axis=1)]),
            "popularity": rng.uniform(0, 100, n),
            "votes": rng.integers(1, 20_000, n),
            "genre_probs": pa.array(list(probs), pa.list_(pa.float32())),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
            "content_hash": pa.array([f"h{i}" for i in ids]),
            "model_version": pa.array(["bench"] * n),
        }
    )
    data = with_title_key(data.select([f.name for f in schema.served_schema(DIM) if f.name in data.column_names]))
    return data.cast(served_schema(DIM), safe=False)


def build_store(root: Path, rows: int, tables: int, seed: int = 0) -> float:
    """`tables` language tables of `rows` movies in all (sizes skewed like real catalogs), published as run
    bench-1. Returns the build seconds."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, DIM))
    db = lancedb.connect(str(root / "store"))
    weights = 1.0 / np.arange(1, tables + 1)  # Zipf-like: English biggest, a long tail of small languages
    sizes = np.maximum(300, (rows * weights / weights.sum()).astype(int))
    info, partitions, first = {}, {}, 0
    for t, n in enumerate(sizes):
        lang, name = f"l{t:02d}", f"movies_l{t:02d}"
        tbl = db.create_table(name, _table(rng, lang, first, int(n), centers), mode="overwrite")
        first += int(n)
        parts, subs = ivf_pq_params(int(n), DIM)
        tbl.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=subs))
        for column in ("movie_id", "title_key"):
            tbl.create_index(column, config=BTree())
        info[name] = {"rows": int(n), "indexed": True, "version": tbl.version}
        partitions[lang] = name
    manifest = {
        "run_id": "bench-1",
        "published_at": "bench",
        "model_version": "bench",
        "pinned": False,
        "vocab": GENRES,
        "spectrum_dim": DIM,
        "partition_key": "language",
        "partitions": partitions,
        "catch_all": f"movies_l{tables - 1:02d}",
        "tables": info,
        "stats": {"rows": int(sizes.sum()), "max_log_votes": math.log1p(20_000)},
    }
    manifests.record(root / "store", manifest, based_on=None)
    return time.perf_counter() - start


def nightly_publish(root: Path, run_id: str, fraction: float, seed: int) -> None:
    """A stand-in night: `fraction` of the largest table re-vectored through the nightly table task (delete +
    merge_insert, compaction, index maintenance), then the switch."""
    import ray

    from genre_ray.store.tables import TableChange, finish_table

    store_dir = root / "store"
    current = manifests.read_manifest(store_dir)
    assert current is not None
    name = max(current["tables"], key=lambda t: current["tables"][t]["rows"])
    tbl = lancedb.connect(str(store_dir)).open_table(name)
    tbl.checkout(current["tables"][name]["version"])
    n = max(1, int(current["tables"][name]["rows"] * fraction))
    rows = tbl.search().limit(n).to_arrow()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows.num_rows, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    delta = rows.set_column(
        rows.schema.get_field_index("vector"), "vector", pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)
    )
    delta = delta.cast(served_schema(DIM))  # the table's exact schema: finish_table concatenates against it
    cfg = StoreConfig(index_min_rows=1)
    info = finish_table(store_dir, name, cfg, DIM, False, TableChange(delta=[ray.put(delta)]))
    manifest = {k: v for k, v in current.items() if k != manifests.SWITCH}
    manifest["run_id"] = run_id
    manifest["tables"] = {**current["tables"], name: info}
    manifests.record(store_dir, manifest, based_on=current)


# ----------------------------------------------------------------------------------------------- load


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


def drive(
    host: str, port: int, make: Callable[[int], tuple[str, str, bytes | None]], total: int, clients: int
) -> tuple[Tally, float]:
    """`total` requests from `clients` threads (each its own keep-alive connection); (tally, wall seconds)."""
    tally, lock, counter = Tally(), threading.Lock(), iter(range(total))

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            method, path, body = make(i)
            t0 = time.perf_counter()
            try:
                status, _ = _request(conn, method, path, body)
            except (OSError, http.client.HTTPException):
                status = 0
                conn = http.client.HTTPConnection(host, port, timeout=60)
            dt = time.perf_counter() - t0
            with lock:
                tally.latencies.append(dt)
                tally.errors += status != 200
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.perf_counter() - start


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    q = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return float(q[0]), float(q[1]), float(q[2])


def request_maker(endpoint: str, ids: np.ndarray, titles: list[str]) -> Callable[[int], tuple[str, str, bytes | None]]:
    def make(i: int) -> tuple[str, str, bytes | None]:
        movie = str(ids[i % len(ids)])
        if endpoint == "similar?id":
            return "GET", f"/similar?id={movie}&k=10", None
        if endpoint == "similar?title":
            return "GET", "/similar?" + _qs(title=titles[i % len(titles)], k=10), None
        if endpoint == "for-user":
            history = [str(ids[(i + j * 7) % len(ids)]) for j in range(5)]
            return "POST", "/for-user", json.dumps({"history": history, "k": 10}).encode()
        return "GET", f"/movies/{movie}", None

    return make


def _qs(**params: object) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


def floor(rec: Recommender, endpoint: str, ids: np.ndarray, titles: list[str], total: int) -> list[float]:
    """The same queries in process, one at a time: what the service adds HTTP and Serve to."""
    out = []
    for i in range(total):
        movie = str(ids[i % len(ids)])
        t0 = time.perf_counter()
        if endpoint == "similar?id":
            rec.similar(movie, k=10)
        elif endpoint == "similar?title":
            rec.similar(titles[i % len(titles)], k=10)
        elif endpoint == "for-user":
            rec.for_user([str(ids[(i + j * 7) % len(ids)]) for j in range(5)], k=10)
        else:
            rec.view().get([movie])
        out.append(time.perf_counter() - t0)
    return out


def publish_under_load(root: Path, host: str, port: int, ids: np.ndarray, clients: int) -> list[str]:
    """8 clients on similar-by-id while a nightly publish and then a rollback land."""
    stop = threading.Event()
    lock = threading.Lock()
    seen: list[tuple[float, str]] = []
    failed = [0]
    done = [0]

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        i = c
        while not stop.is_set():
            i += clients
            try:
                status, body = _request(conn, "GET", f"/similar?id={ids[i % len(ids)]}&k=10", None)
                run = json.loads(body)["publish"]["run_id"] if status == 200 else None
            except (OSError, http.client.HTTPException, ValueError):
                status, run = 0, None
                conn = http.client.HTTPConnection(host, port, timeout=60)
            with lock:
                done[0] += 1
                if status != 200:
                    failed[0] += 1
                else:
                    seen.append((time.monotonic(), run))
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2)
    t_pub0 = time.monotonic()
    nightly_publish(root, "bench-2", 0.01, seed=1)
    t_pub = time.monotonic()
    time.sleep(4)
    Store(root / "store").rollback(to="bench-1")
    t_back = time.monotonic()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()

    def lag(since: float, run: str) -> str:
        after = [(t, r) for t, r in seen if t >= since]
        wrong = [t for t, r in after if r != run and t < since + 3.5]
        if not any(r == run for _, r in after):
            return "never"
        last_wrong = max(wrong, default=since)
        return f"{last_wrong - since:.2f}"

    return [
        f"phase 2 ({clients} clients, similar?id): {done[0]} requests, {failed[0]} failed",
        f"  nightly publish (1% of the largest table): {t_pub - t_pub0:.1f} s to write; every answer named it "
        f"{lag(t_pub, 'bench-2')} s after the switch",
        f"  rollback to bench-1: every answer named it {lag(t_back, 'bench-1')} s after the switch",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Lines(list):
    """The report, printed as it grows (a run takes minutes)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def _start_ray(tries: int = 8) -> None:
    """A local node; on a machine shared with other jobs its raylet can miss Ray's 30 s start deadline, so retry."""
    import ray

    from genre_ray.runtime import init_ray

    for attempt in range(tries):
        try:
            init_ray(RayConfig())
            return
        except Exception:
            if attempt == tries - 1:
                raise
            ray.shutdown()
            time.sleep(10)


def run(rows: int, tables: int, requests: int, clients: list[int], replicas: int, workdir: Path) -> list[str]:
    from genre_ray.serve import deployment

    root = workdir / f"serve-{rows}"
    reused = manifests.read_manifest(root / "store") is not None
    if reused:  # a --workdir kept from an earlier run: the same seeded store, reset to its first publish
        first = manifests.read_history(root / "store")[0]
        if manifests.read_manifest(root / "store")["run_id"] != first["run_id"]:
            Store(root / "store").rollback(to=first["run_id"])
        built = 0.0
    else:
        built = build_store(root, rows, tables)
    _start_ray()  # after the build, which needs no Ray: a local node starts once for every --rows
    cfg = Config(workdir=str(root), ray=RayConfig())
    store = Store(RunLayout.of(root).store_dir)
    probe = store.view()
    n = probe.count()
    rng = np.random.default_rng(7)
    ids = rng.integers(0, n, 2000)
    titles = probe.get([str(i) for i in ids[:200]], ["title"])["title"].to_pylist()
    how = f"built in {built:.0f} s" if built else "reused"
    lines = _Lines()
    lines.append(f"rows {n:,} in {len(probe.tables)} language tables ({how}), {replicas} replica(s)")
    lines.append(f"{'endpoint':<14} {'clients':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'QPS':>7} {'errors':>6}")
    port = _free_port()
    deployment.start(cfg, "127.0.0.1", port, num_replicas=replicas, refresh_s=0.5)
    try:
        for endpoint in ENDPOINTS:
            make = request_maker(endpoint, ids, titles)
            drive("127.0.0.1", port, make, 20, 4)  # warm: page cache, connections
            for c in clients:
                tally, wall = drive("127.0.0.1", port, make, requests, c)
                p50, p95, p99 = percentiles(tally.latencies)
                lines.append(
                    f"{endpoint:<14} {c:>7} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {requests / wall:>7.1f} "
                    f"{tally.errors:>6}"
                )
        for parallel in (True, False):
            rec = Recommender(cfg, RunLayout.of(root), Store(root / "store", parallel=parallel))
            label = "side by side" if parallel else "in turn"
            for endpoint in ENDPOINTS:
                floor(rec, endpoint, ids, titles, 10)
                p50, p95, p99 = percentiles(floor(rec, endpoint, ids, titles, min(requests, 200)))
                lines.append(f"{endpoint:<14} {'floor':>7} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f}   (in process, {label})")
        for line in publish_under_load(root, "127.0.0.1", port, ids, 8):
            lines.append(line)
    finally:
        deployment.stop()
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, action="append", help="catalog sizes (repeatable; default 100000)")
    p.add_argument("--tables", type=int, default=19, help="language tables (bench.nightly's 1M catalog has ~19)")
    p.add_argument("--requests", type=int, default=300, help="requests per endpoint and client count")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--workdir", help="where the stores are built (default: a temporary directory)")
    args = p.parse_args(argv)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU: {describe_machine().summary()}")
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        for rows in args.rows or [100_000]:
            run(rows, args.tables, args.requests, clients, args.replicas, workdir)


if __name__ == "__main__":
    main()
