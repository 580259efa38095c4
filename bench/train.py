"""Training throughput: the Ray Train loop vs a plain single-process torch loop, and the cost of mixup.

    python -m bench.train [--epochs 5] [--workers 1 2] [--from-run WORKDIR]

Rows/s counts rows through forward + backward (real + mixed), the median epoch of each run, measured inside the epoch
loop (Ray start-up and worker-group creation are a fixed cost per run, reported separately as "run s").
Data: a pipeline run's real catalog + embeddings with --from-run, else synthetic 384-d vectors (the output says
which). Targets: Ray per-worker rate >= 0.8x the plain loop; mixup overhead <= 10%.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from genre_ray.config import REPO_ROOT, Config
from genre_ray.layout import RunLayout
from genre_ray.mixup import mixup_batch
from genre_ray.model import GenreClassifier
from genre_ray.train import READ_WINDOW, load_training_table, prepare, spec_for, train_on_table
from genre_ray.train.data import read_arrays

SYNTHETIC_ROWS = 4800
SYNTHETIC_GENRES = 20


def bench_table(from_run: str | None) -> tuple[pa.Table, str]:
    if from_run:
        table = load_training_table(RunLayout.of(from_run))
        return table, f"real: {table.num_rows} labelled movies, embeddings of pipeline run {from_run}"
    rng = np.random.default_rng(0)
    genres = [f"g{i}" for i in range(SYNTHETIC_GENRES)]
    labels = [
        sorted(rng.choice(genres, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(SYNTHETIC_ROWS)
    ]
    matrix = rng.normal(size=(SYNTHETIC_ROWS, 384)).astype(np.float32)
    table = pa.table(
        {
            "movie_id": pa.array([str(i) for i in range(SYNTHETIC_ROWS)]),
            "genres": pa.array(labels, pa.list_(pa.string())),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), 384),
        }
    )
    return table, f"synthetic: {SYNTHETIC_ROWS} x 384-d normal vectors, {SYNTHETIC_GENRES} genres"


def plain_loop(cfg: Config, table: pa.Table, epochs: int, threads: int) -> tuple[float, float]:
    """The same model, batches, mixup and chunked steps as genre_ray.train.train_loop, in one process, no Ray.

    Returns (median rows/s over epochs, share of the loop's time spent in mixup_batch)."""
    torch.set_num_threads(threads)
    tc = cfg.train
    import ray.data

    data = prepare(ray.data.from_arrow(table), cfg)
    x, y = (torch.from_numpy(a) for a in read_arrays(data.train)[:2])
    torch.manual_seed(cfg.seed)
    model = GenreClassifier(spec_for(cfg, data.input_dim, len(data.genres))).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
    criterion = nn.BCEWithLogitsLoss()
    rates, mix_seconds, total_seconds = [], 0.0, 0.0
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(epoch)
        start, rows = time.perf_counter(), 0
        for window in torch.randperm(len(x), generator=gen).split(tc.batch_size * READ_WINDOW):
            for idx in window.split(tc.batch_size):
                mix_start = time.perf_counter()
                bx, by = mixup_batch(x[idx], y[idx], tc.mixup_alpha, tc.mixup_factor, gen)
                mix_seconds += time.perf_counter() - mix_start
                for xc, yc in zip(bx.split(tc.batch_size), by.split(tc.batch_size), strict=True):
                    loss = criterion(model(xc), yc)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    rows += len(xc)
        total_seconds += time.perf_counter() - start
        rates.append(rows / (time.perf_counter() - start))
    return float(np.median(rates)), mix_seconds / total_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--from-run", default=None, help="pipeline workdir with catalog/ + embeddings/")
    args = parser.parse_args()

    from genre_ray.runtime import init_ray

    base = Config()
    init_ray(base.ray)
    table, source = bench_table(args.from_run)
    rows: list[tuple[str, int, int, float, float]] = []  # loop, workers, mixup factor, rows/s, run seconds
    mix_shares: dict[int, float] = {}
    # A Ray Train worker gets one torch thread (Ray sets OMP_NUM_THREADS from its fractional CPU reservation), so
    # the plain loop is measured with one thread too: the per-worker comparison is like for like.
    for factor in (0, base.train.mixup_factor):
        cfg = base.model_copy(update={"train": base.train.model_copy(update={"mixup_factor": factor})})
        start = time.perf_counter()
        rate, mix_share = plain_loop(cfg, table, args.epochs, threads=1)
        mix_shares[factor] = mix_share
        rows.append(("plain torch", 1, factor, rate, time.perf_counter() - start))
        for workers in args.workers:
            train = cfg.train.model_copy(
                update={"epochs": args.epochs, "patience": args.epochs, "num_workers": workers, "tune_threshold": False}
            )
            run_cfg = cfg.model_copy(update={"train": train})
            layout = RunLayout.of(Path(REPO_ROOT / "runs" / "bench_train" / f"w{workers}_m{factor}"))
            result = train_on_table(run_cfg, layout, table)
            # steady state, like the plain loop: the median epoch (the first one also starts Ray Data's executor)
            rate = float(np.median([h["rows_per_s"] for h in result.history]))
            rows.append(("Ray Train", workers, factor, rate, result.seconds))

    plain = {f: r for loop, _, f, r, _ in rows if loop == "plain torch"}
    print(f"\ndata: {source}; {args.epochs} epochs, batch {base.train.batch_size}, torch threads per worker 1")
    print("| loop | workers | mixup factor | rows/s | rows/s per worker | per worker vs plain | run s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for loop, workers, factor, rate, secs in rows:
        ratio = rate / workers / plain[factor]
        print(f"| {loop} | {workers} | {factor} | {rate:,.0f} | {rate / workers:,.0f} | {ratio:.2f}x | {secs:.0f} |")
    mix = base.train.mixup_factor
    print(f"\nmixup overhead: {mix_shares[mix]:.1%} of the plain loop's time goes to mixup_batch (factor {mix})")
    print(
        f"mixup overhead per trained row (plain loop, rows/s with factor {mix} vs 0): {1 - plain[mix] / plain[0]:+.1%}"
    )
    for workers in args.workers:
        ray_rates = {f: r for loop, w, f, r, _ in rows if loop == "Ray Train" and w == workers}
        print(f"mixup overhead (Ray Train, {workers} worker(s)): {1 - ray_rates[mix] / ray_rates[0]:+.1%}")


if __name__ == "__main__":
    main()
