"""Catalog ingest throughput: the embedded TMDB file, then many-file synthetic catalogs built from it.

    python -m bench.catalog_ingest [--copies 1 8 32] [--dup-fraction 0.01] [--num-cpus 2]
    python -m bench.catalog_ingest --file big.csv --bytes-per-task 0 16777216   # one file: 0 = one task


Each copy is the TMDB 5000 file with its ids offset by copy * 10^7 (so rows stay unique), written as its own CSV;
`--dup-fraction` of each copy's rows keep their original id, so the cross-file dedup path does real work. Runs on a
local Ray node (started once, outside the timings) and prints one row per size: files, rows, rejects, seconds,
rows/s. The first size also pays Ray's worker start-up; it is run twice and both timings are shown.

`--file` ingests one given file instead, once per `--bytes-per-task` value (0: the whole file in one task), after
one warm-up ingest, and checks every run reads the same rows, rejects and field warnings as the first.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import ray

from genre_ray.catalog import ingest
from genre_ray.config import DEFAULT_CATALOG, Config
from genre_ray.layout import RunLayout

ID_OFFSET = 10_000_000


def make_copies(dst: Path, copies: int, dup_fraction: float) -> list[Path]:
    with DEFAULT_CATALOG.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    id_col = header.index("id")
    keep_every = int(1 / dup_fraction) if dup_fraction > 0 else 0
    paths = []
    for c in range(copies):
        path = dst / f"tmdb-{c:04d}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            w = csv.writer(out)
            w.writerow(header)
            for i, row in enumerate(rows):
                row = list(row)
                if c and not (keep_every and i % keep_every == 0):
                    row[id_col] = str(int(row[id_col]) + c * ID_OFFSET)
                w.writerow(row)
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--dup-fraction", type=float, default=0.01)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--file", type=Path, help="time one file (e.g. from genre_ray.synthetic) instead of copies")
    p.add_argument("--bytes-per-task", type=int, nargs="+", default=[0, 64 * 1024 * 1024])
    args = p.parse_args()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.file is not None:
        one_file(args.file, args.bytes_per_task)
        ray.shutdown()
        return

    print(f"{'files':>6} {'rows in':>9} {'ok':>9} {'rejected':>9} {'seconds':>8} {'rows/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for n, copies in enumerate(args.copies):
            src = Path(tmp) / f"src-{copies}"
            src.mkdir()
            paths = make_copies(src, copies, args.dup_fraction)
            cfg = Config(workdir=str(Path(tmp) / "run"))
            cfg.catalog.paths = [str(src)]
            for _ in range(2 if n == 0 else 1):
                start = time.perf_counter()
                r = ingest(cfg, RunLayout.of(cfg.workdir, cfg.storage.options))
                secs = time.perf_counter() - start
                print(
                    f"{len(paths):>6} {r.rows_in:>9} {r.rows_ok:>9} {r.rows_rejected:>9} {secs:>8.2f} "
                    f"{r.rows_in / secs:>9.0f}"
                )
    ray.shutdown()


def one_file(path: Path, sizes: list[int]) -> None:
    print(f"{path}: {path.stat().st_size / 2**20:.0f} MiB")
    print(f"{'bytes/task':>12} {'rows in':>9} {'ok':>9} {'rejected':>9} {'warnings':>9} {'seconds':>8} {'rows/s':>9}")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for n, size in enumerate([sizes[0], *sizes]):  # the first run warms Ray's workers up and is not shown
            cfg = Config(workdir=str(Path(tmp) / "run"))
            cfg.catalog.paths = [str(path)]
            cfg.catalog.bytes_per_task = size or 1 << 62
            start = time.perf_counter()
            r = ingest(cfg, RunLayout.of(cfg.workdir))
            secs = time.perf_counter() - start
            counts = (r.rows_in, r.rows_ok, r.rows_rejected, r.rejects_by_reason, r.field_warnings_by_reason)
            first = first or counts
            if counts != first:
                raise SystemExit(f"bytes_per_task={size}: different result {counts} vs {first}")
            if n:
                print(
                    f"{size or 'one task':>12} {r.rows_in:>9} {r.rows_ok:>9} {r.rows_rejected:>9} "
                    f"{r.field_warnings:>9} {secs:>8.2f} {r.rows_in / secs:>9.0f}"
                )


if __name__ == "__main__":
    main()
