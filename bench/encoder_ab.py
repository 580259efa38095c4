"""A/B of the encoder's own code: `TextEncoder` at another commit against this tree's, real MiniLM, one process,
alternating rounds (on a shared machine only same-run pairs compare).

    python -m bench.encoder_ab [--ref c3e8421] [--n 256] [--rounds 3]

The other commit's genre_ray/encoder.py is loaded from `git show REF:genre_ray/encoder.py` next to this tree's
package (its imports resolve here), so what differs is the encode loop: tokenise, pad, model, pool.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.embed import catalog_slice
from bench.machine import describe
from genre_ray.config import Config
from genre_ray.encoder import TextEncoder
from genre_ray.runtime import init_ray, set_offline_env

ROOT = Path(__file__).resolve().parents[1]


def encoder_at(ref: str, scratch: Path) -> type:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:genre_ray/encoder.py"], capture_output=True, text=True, check=True
    ).stdout
    path = scratch / f"encoder_{ref}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"encoder_{ref}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TextEncoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="c3e8421", help="the commit to compare with (default: before issue 28)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    set_offline_env()
    scratch = Path(tempfile.mkdtemp(prefix="bench-encoder-ab-"))
    cfg = Config(workdir=str(scratch / "run"))
    init_ray(cfg.ray)  # the catalog stage runs on Ray
    docs = catalog_slice(cfg, scratch, args.n)["document"].to_pylist()
    encoders = {args.ref: encoder_at(args.ref, scratch)(cfg.encoder), "this tree": TextEncoder(cfg.encoder)}
    for enc in encoders.values():
        enc.encode(docs[: args.batch_size], args.batch_size)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in encoders}
    for r in range(args.rounds):
        for name in list(encoders)[:: 1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            encoders[name].encode(docs, args.batch_size)
            rates[name].append(len(docs) / (time.perf_counter() - t0))
    a, b = (encoders[k].encode(docs, args.batch_size) for k in encoders)
    print(f"{len(docs)} TMDB documents, MiniLM fp32, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"CPU: {describe().summary()}\n")
    print("| encoder | docs/s per round | median |\n| --- | --- | --- |")
    for name, r in rates.items():
        print(f"| {name} | {' / '.join(f'{x:.1f}' for x in r)} | {np.median(r):.1f} |")
    print(f"\nmax |vector difference| {np.abs(a - b).max():.2e}")


if __name__ == "__main__":
    sys.exit(main())
