"""A local workdir against an S3-backed one: the same two nights (full, then 1% changed), seconds per stage.

    python -m bench.object_store [--n 2000] [--changed 0.01] [--epochs 5] [--tiny-encoder] [--set KEY=VALUE ...]

The S3 side is a real S3-compatible server on loopback (moto's server, `pip install -e .[dev]`, in its own
process so its request handling does not share the driver's interpreter), with the catalog in the bucket too:
the workdir, the catalog, Ray Train's checkpoints, the Lance datasets and the store all go through HTTP. It
measures what the object-store code path costs (more requests, no rename, no page cache), not a cloud's network:
a real bucket adds its round-trip time to every request.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv

from bench.nightly import next_night, tiny_encoder
from genre_ray.config import load_config
from genre_ray.pipeline import run_stages
from genre_ray.runtime import init_ray, set_offline_env
from genre_ray.synthetic import synthesize

STAGES = ("ingest", "embed", "train", "publish")
KEYS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "aws_region": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def night(cfg: Any) -> dict[str, float]:
    report = run_stages(cfg, ["nightly"], echo=lambda line: print(f"  {line}", flush=True))
    return {s: float(report.results.get(s, {}).get("seconds", 0.0)) for s in STAGES}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="synthetic movies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--changed", type=float, default=0.01, help="share of movies with a new overview on night 2")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--tiny-encoder", action="store_true", help="a random 1-layer encoder (see bench.nightly)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    set_offline_env()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from genre_ray.cli import parse_overrides

    scratch = Path(tempfile.mkdtemp(prefix="bench-object-store-"))
    server, endpoint = start_s3()
    try:
        import boto3

        options = {"aws_endpoint": endpoint, **KEYS}
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="genre-bench")
        catalog = synthesize(args.n, seed=args.seed, bad_fraction=0.0).table
        tonight, n_changed, _ = next_night(catalog, args.changed, 0.0, args.seed)
        local_csv = scratch / "catalog" / "movies.csv"
        local_csv.parent.mkdir(parents=True)

        base = {
            "train.epochs": args.epochs,
            **({"encoder.model": str(tiny_encoder(scratch / "tiny-encoder"))} if args.tiny_encoder else {}),
            **parse_overrides(args.overrides),
        }
        runs = {
            "local": {**base, "workdir": str(scratch / "run"), "catalog.paths": [str(local_csv)]},
            "s3": {
                **base,
                "workdir": "s3://genre-bench/nightly",
                "catalog.paths": ["s3://genre-bench/catalog/*.csv"],
                "storage.options": options,
            },
        }
        figures: dict[tuple[str, str], dict[str, float]] = {}
        for name, overrides in runs.items():
            cfg = load_config(None, overrides)
            init_ray(cfg.ray)
            for label, table in (("1 (full)", catalog), (f"2 ({n_changed} changed)", tonight)):
                pacsv.write_csv(table, local_csv)
                s3.put_object(Bucket="genre-bench", Key="catalog/movies.csv", Body=local_csv.read_bytes())
                print(f"{name}, night {label}", flush=True)
                figures[(name, label)] = night(cfg)
    finally:
        server.terminate()
        server.wait()

    nights = sorted({label for _, label in figures})
    print(f"\n{args.n} movies, {os.cpu_count()} CPUs, load average (1 min) {os.getloadavg()[0]:.1f}\n")
    print("| night | stage | local s | S3 s | S3 / local |\n| --- | --- | --- | --- | --- |")
    for label in nights:
        for stage in [*STAGES, "total"]:
            loc, rem = (
                sum(figures[(w, label)].values()) if stage == "total" else figures[(w, label)][stage]
                for w in ("local", "s3")
            )
            ratio = f"{rem / loc:.2f}" if loc else "-"
            print(f"| {label} | {stage} | {loc:.1f} | {rem:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
