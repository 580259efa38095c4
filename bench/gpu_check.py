"""The GPU check: embedding throughput with the GPU actor (bf16) and a short GPU training run, one JSON + one
Markdown table. Run through `bench/gpu_check.sh` (which installs a CUDA build of the pinned torch first); sized to
finish within 8 minutes end to end on one GPU, installs included.

    python -m bench.gpu_check [--n 20000] [--epochs 3] [--out bench/gpu_check_out] [--dry-run]

Steps: a synthetic catalog of N documents (genre_ray.synthetic, sampled from TMDB) -> `bench.embed` on it (plain
loop, sentence-transformers, Ray pipeline with one bf16 actor per GPU) -> the pipeline (ingest, embed, train,
publish) on the same catalog with `embed.use_gpu=yes` / `train.use_gpu=yes` -> gpu_check.json + gpu_check.md.
--dry-run runs the same plan on the CPU with everything tiny (it proves the script's logic in CI, not a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: int


def plan(args: argparse.Namespace, out: Path) -> list[Step]:
    py = sys.executable
    catalog = out / "synthetic.csv"
    workdir = out / "run"
    gpu = "no" if args.dry_run else "yes"
    n, epochs = (64, 1) if args.dry_run else (args.n, args.epochs)
    backends = ["--backends", "torch"]  # a GPU always runs torch (bf16); on --dry-run keep the CPU part short
    # The timeouts are the GPU lease's budget; a dry run on a small (maybe busy) CPU gets more room.
    scale = 4 if args.dry_run else 1
    return [
        Step("synthetic catalog", [py, "-m", "genre_ray.synthetic", "--n", str(n), "--out", str(catalog)], 60 * scale),
        Step(
            "embed bench",
            [
                py,
                "-m",
                "bench.embed",
                "--n",
                str(n),
                "--catalog",
                str(catalog),
                "--json",
                str(out / "embed.json"),
                "--workdir",
                str(out / "bench-embed"),
                *backends,
            ],
            180 * scale,
        ),
        Step(
            "pipeline on the GPU",
            [
                py,
                "-m",
                "genre_ray.cli",
                "run",
                "--no-sample",
                "--workdir",
                str(workdir),
                "--set",
                f"catalog.paths=[{catalog}]",
                "--set",
                f"train.epochs={epochs}",
                "--set",
                f"embed.use_gpu={gpu}",
                "--set",
                f"train.use_gpu={gpu}",
            ],
            150 * scale,
        ),
    ]


def run_steps(steps: list[Step]) -> list[dict[str, Any]]:
    results = []
    for step in steps:
        print(f"[gpu_check] {step.name}: {' '.join(step.argv)}", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(step.argv, timeout=step.timeout_s, capture_output=True, text=True)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            tail = (proc.stdout + proc.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            status, tail = f"timed out after {step.timeout_s}s", ""
        seconds = time.perf_counter() - t0
        print(f"[gpu_check] {step.name}: {status} in {seconds:.0f}s", flush=True)
        if status != "ok":
            print(tail, file=sys.stderr)
        results.append({"step": step.name, "status": status, "seconds": round(seconds, 1)})
    return results


def _feed_lines(embed: dict[str, Any]) -> list[str]:
    """Which side limits: the GPU actor's docs/s (bf16, Ray steady state) beside one CPU process's tokenizer and
    the share of the actor's steady state its model ran (CUDA events)."""
    rows = {r["method"]: r for r in embed.get("rows", [])}
    actor = rows.get("ray pipeline torch, steady state")
    tokenizer = embed.get("tokenizer_docs_per_s")
    if actor is None or tokenizer is None:
        return []
    busy = (embed.get("model_busy") or {}).get("torch", 0.0)
    return [
        f"Encoder actor {actor['docs_per_s']:.0f} docs/s | CPU tokenizer {tokenizer:.0f} docs/s per process | "
        f"model busy {busy:.0%} of the actor's steady state "
        f"({'the feed limits' if busy < 0.8 else 'the model limits'})",
        "",
    ]


def report(out: Path, steps: list[dict[str, Any]], dry_run: bool) -> dict[str, Any]:
    """Collect embed.json and the pipeline's run.json into gpu_check.json + gpu_check.md."""
    embed = json.loads((out / "embed.json").read_text()) if (out / "embed.json").exists() else {}
    run = json.loads((out / "run" / "run.json").read_text()) if (out / "run" / "run.json").exists() else {}
    stages = {k: v.get("seconds") for k, v in run.get("results", {}).items()}
    train = run.get("results", {}).get("train", {}).get("result", {})
    data = {"dry_run": dry_run, "steps": steps, "embed": embed, "pipeline_stages": stages, "train": train}
    (out / "gpu_check.json").write_text(json.dumps(data, indent=2, default=str))
    lines = [
        f"GPU check{' (DRY RUN on CPU: not GPU figures)' if dry_run else ''}: {embed.get('gpu') or embed.get('device')}"
        f", {embed.get('docs', '?')} synthetic documents; CPU {(embed.get('machine') or {}).get('cpu', '?')}",
        "",
        *_feed_lines(embed),
        "| method | docs/s | tokens/s | vs plain loop | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in embed.get("rows", []):
        lines.append(
            f"| {r['method']} | {r['docs_per_s']:.0f} | {r['tokens_per_s']:.0f} | {r['vs_plain']:.2f}x | {r['note']} |"
        )
    lines += ["", "| pipeline stage | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in stages.items()]
    lines += ["", "| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in steps]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="synthetic documents (>= 20k for the issue's check)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the short GPU run")
    ap.add_argument("--out", type=Path, default=Path("bench/gpu_check_out"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, not the GPU")
    args = ap.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device visible to torch (install a CUDA build: bench/gpu_check.sh)", file=sys.stderr)
            return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    steps = run_steps(plan(args, out))
    report(out, steps, args.dry_run)
    print((out / "gpu_check.md").read_text())
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    return 0 if all(s["status"] == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
