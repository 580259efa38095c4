"""The nightly job at scale, in local mode: per-stage time and peak memory on a synthetic catalog, two nights.

    python -m bench.nightly [--n 2000] [--changed 0.01] [--removed 0.002] [--bad-fraction 0.005] [--workdir DIR]
    python -m bench.nightly --n 200000 --epochs 5          # the scale run (hours on 2 CPU cores; minutes on GPUs)

Night 1 runs on an empty workdir (ingest, full embed, train, full publish). Night 2 runs after `--changed` of the
movies got a new overview and `--removed` left the catalog: the incremental path (embed only the changed movies,
no retraining, publish the delta). The catalog comes from genre_ray.synthetic (the real catalog's distributions,
TMDB CSV format, `--bad-fraction` deliberately bad rows), so ingest, rejects and the store see realistic input.

Memory: the driver's RSS every 0.2 s, and every 2 s the PSS of this process and every process of the Ray node it
starts (all descendants; shared pages split between the processes that map them, so the sum does not count the
object store once per worker). The capacity section turns the measured per-worker throughput into hours for 1M /
10M titles.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from genre_ray.config import TrainConfig, load_config
from genre_ray.layout import RunLayout
from genre_ray.pipeline import run_stages
from genre_ray.runtime import init_ray, set_offline_env
from genre_ray.synthetic import synthesize

STAGES = ("ingest", "embed", "train", "publish")


# ----------------------------------------------------------------------------------------------- memory sampling


def _proc_kib(pid: int | str, file: str, key: str) -> int:
    """A "Key:  N kB" line of /proc/<pid>/<file>, in KiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _pss_kib(pid: int | str) -> int:
    return _proc_kib(pid, "smaps_rollup", "Pss:")


def _tree(root: int) -> list[int]:
    """root and all its live descendants (the driver and the Ray node it started)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _rss_kib(pid: int) -> int:
    return _proc_kib(pid, "status", "VmRSS:")


def _object_store_kib() -> int:
    """Bytes in the Ray object store now, 0 if it cannot be asked.

    From the node's resource view (total minus available object_store_memory), which tracks plasma's bytes in use:
    `ray memory`'s own call asks every worker for its reference table, which costs the workers CPU every sample.
    """
    try:
        import ray

        if not ray.is_initialized():
            return 0
        total = ray.cluster_resources().get("object_store_memory", 0.0)
        return int(total - ray.available_resources().get("object_store_memory", total)) // 1024
    except Exception:  # a sampler must never take the benchmark down
        return 0


class MemorySampler:
    """Per stage peaks: PSS of this process tree (driver + the Ray node it started), the driver's own RSS, and the
    object store's bytes in use. The stage switches when run_stages echoes "[stage] running".

    Only the driver's RSS is cheap to read. A process's PSS walks its page tables, and every Ray worker maps the
    whole object store: sampled every 0.2 s, the node's PSS cost the 1M run ~0.5 of a core in kernel time (more
    in night 2, with more workers alive), taken from the stages it timed. So the tree is sampled every 2 s and the
    sampler's own CPU time is reported (`cpu_seconds`).
    """

    def __init__(self, interval: float = 0.2, tree_every: int = 10, store_every: int = 5) -> None:
        self.interval, self.tree_every, self.store_every = interval, tree_every, store_every
        self.stage = "setup"
        self.peak_kib: dict[str, int] = {}
        self.driver_peak_kib: dict[str, int] = {}
        self.store_peak_kib: dict[str, int] = {}
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def echo(self, line: str) -> None:
        print(line, flush=True)
        if line.startswith("[") and line.endswith("running"):
            self.stage = line[1 : line.index("]")]

    def _run(self) -> None:
        me, tick, last = os.getpid(), 0, None
        while not self._stop.is_set():
            stage = self.stage
            self.driver_peak_kib[stage] = max(self.driver_peak_kib.get(stage, 0), _rss_kib(me))
            if tick % self.tree_every == 0 or stage != last:  # a short stage gets a sample too
                total = sum(_pss_kib(p) for p in _tree(me))
                self.peak_kib[stage] = max(self.peak_kib.get(stage, 0), total)
            if tick % self.store_every == 0 or stage != last:  # a call to the GCS
                self.store_peak_kib[stage] = max(self.store_peak_kib.get(stage, 0), _object_store_kib())
            tick, last = tick + 1, stage
            self.cpu_seconds = time.thread_time()  # this thread's user + system time so far
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------------------------- the nights


@dataclass
class StageRow:
    night: str
    stage: str
    seconds: float
    rows: int
    note: str
    peak_mib: float
    driver_peak_mib: float = 0.0
    store_peak_mib: float = 0.0


@dataclass
class Night:
    name: str
    rows: list[StageRow] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    sampler_cpu_seconds: float = 0.0


def _rows_and_note(stage: str, result: dict[str, Any]) -> tuple[int, str]:
    r = result.get("result") or {}
    if stage == "ingest":
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("rejects_by_reason", {}).items()))
        warned = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("field_warnings_by_reason", {}).items()))
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in r.get("phase_seconds", {}).items())
        return r.get("rows_in", 0), (
            f"{r.get('rows_ok', 0)} ok, {r.get('rows_rejected', 0)} rejected ({reasons}); "
            f"{r.get('rows_with_field_warnings', 0)} rows with field warnings ({warned}); {phases}"
        )
    if stage == "embed":
        plan = r.get("plan") or {}
        actors = f"{plan.get('num_actors', 0)} x {plan.get('device', '-')} actor" if plan else "no actors"
        return r.get("docs_embedded", 0), (
            f"{r.get('mode')}: {r.get('docs_reused', 0)} reused, {r.get('docs_removed', 0)} removed, {actors}, "
            f"steady {r.get('steady_seconds', 0):.1f}s, model load {r.get('model_load_seconds', 0):.1f}s"
        )
    if stage == "train":
        if result.get("status") == "skipped":
            return 0, "skipped: a model is published (the nightly retrains only when asked)"
        return r.get("epochs_run", 0), f"epochs; {r.get('num_workers')} worker(s), {r.get('rows_per_s', 0):.0f} rows/s"
    if stage == "publish":
        return r.get("upserted", 0), (
            f"{r.get('rows_total', 0)} served, {r.get('deleted', 0)} deleted, {r.get('unchanged', 0)} unchanged, "
            f"{r.get('embeddings_read', 0)} embeddings read{', full rebuild' if r.get('full_rebuild') else ''}"
        )
    return 0, ""


def run_night(name: str, cfg: Any) -> Night:
    night = Night(name)
    with MemorySampler() as mem:
        report = run_stages(cfg, ["nightly"], echo=mem.echo)
    night.results = report.results
    night.sampler_cpu_seconds = mem.cpu_seconds
    for stage in STAGES:
        result = report.results.get(stage, {})
        rows, note = _rows_and_note(stage, result)
        night.rows.append(
            StageRow(
                name,
                stage,
                float(result.get("seconds", 0.0)),
                rows,
                note,
                mem.peak_kib.get(stage, 0) / 1024,
                mem.driver_peak_kib.get(stage, 0) / 1024,
                mem.store_peak_kib.get(stage, 0) / 1024,
            )
        )
    return night


def next_night(table: pa.Table, changed: float, removed: float, seed: int) -> tuple[pa.Table, int, int]:
    """The catalog a day later: `changed` of the movies get a new overview sentence, `removed` leave."""
    rng = np.random.default_rng(seed + 1)
    n = table.num_rows
    n_changed, n_removed = int(n * changed), int(n * removed)
    picks = rng.choice(n, size=n_changed + n_removed, replace=False)
    change, drop = set(picks[:n_changed].tolist()), set(picks[n_changed:].tolist())
    overview = table["overview"].to_pylist()
    for i in change:
        overview[i] = f"{overview[i] or ''} A restored director's cut adds a new ending."
    table = table.set_column(table.schema.get_field_index("overview"), "overview", pa.array(overview, pa.string()))
    keep = np.ones(n, dtype=bool)
    keep[list(drop)] = False
    return table.filter(pa.array(keep)), n_changed, n_removed


def _first_catalogs(
    source: Path, tomorrow: Path, n: int, seed: int, bad_fraction: float, changed: float, removed: float
) -> tuple[dict[str, int], tuple[Any, Any], int, int]:
    """Night 1's synthetic catalog at `source` and night 2's at `tomorrow`; the injected defects and changes."""
    catalog = synthesize(n, seed=seed, bad_fraction=bad_fraction)
    source.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(catalog.table, source)
    table, n_changed, n_removed = next_night(catalog.table, changed, removed, seed)
    pacsv.write_csv(table, tomorrow)
    return catalog.bad, (catalog.expected_rejects, catalog.expected_field_warnings), n_changed, n_removed


def _another_catalog(source: Path, tomorrow: Path, changed: float, removed: float, seed: int) -> tuple[int, int]:
    table, n_changed, n_removed = next_night(_read_all_strings(source), changed, removed, seed)
    pacsv.write_csv(table, tomorrow)
    return n_changed, n_removed


def _read_all_strings(path: Path) -> pa.Table:
    """An earlier night's catalog CSV as written, every column a string (its bad rows must stay bad, not be typed)."""
    with path.open(newline="") as f:
        names = next(csv.reader(f))
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())))


# ----------------------------------------------------------------------------------------------- capacity plan


def capacity_plan(
    nights: list[Night],
    titles: list[int],
    workers: list[int],
    changed: float,
    train: TrainConfig,
    embed_rate: float | None = None,
) -> str:
    """Hours for `titles` on N workers, from per-worker rates: measured in night 1, or `embed_rate` if given.

    Only the throughput-bound stages are extrapolated: embedding (steady state, timed inside the actors, so actor
    start and model load are out) and training (rows/s per worker, mixed rows included). Ingest and publish at a
    few thousand rows are start-up bound, so their rate here says nothing about 10M rows: run a larger --n.
    """
    first = nights[0].results
    emb = first["embed"]["result"]
    actors = max(1, (emb.get("plan") or {}).get("num_actors", 1))
    steady = emb.get("steady_seconds") or emb.get("seconds") or 0.0
    measured = emb["docs_embedded"] / max(steady, 1e-9) / actors
    rate = embed_rate or measured
    tr = first["train"]["result"]
    # rows_per_s is the whole group's rate over real + mixed rows: per worker, per trained row
    train_rate = tr["rows_per_s"] / max(1, tr["num_workers"])
    rows_per_epoch = (1 - train.val_fraction) * (1 + train.mixup_factor)
    source = f"given (--embed-rate), measured here {measured:.1f}" if embed_rate else "measured here"
    lines = [
        f"embed {rate:.1f} docs/s per worker ({source}); train {train_rate:.0f} rows/s per worker (measured here, "
        f"{rows_per_epoch:.1f} trained rows per title per epoch: {1 - train.val_fraction:.0%} train split x "
        f"(1 + mixup_factor {train.mixup_factor}))",
        "",
        f"| titles | workers | full embed (h) | retrain, {train.epochs} epochs (h) | nightly delta, "
        f"{changed:.0%} changed: embed (min) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in titles:
        for w in workers:
            embed_h = m / (rate * w) / 3600
            train_h = m * rows_per_epoch * train.epochs / (train_rate * w) / 3600
            delta_min = m * changed / (rate * w) / 60
            lines.append(f"| {m:,} | {w} | {embed_h:.1f} | {train_h:.1f} | {delta_min:.1f} |")
    return "\n".join(lines)


def tiny_encoder(out: Path, seed: int = 0, layers: int = 1) -> Path:
    """A random-initialised BERT of `layers` layers with MiniLM's tokenizer and a 384-d output, saved as a local
    model dir. 0 layers leaves tokenising, the embedding lookup and pooling: the pipeline's own cost at 1M titles."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from genre_ray.encoder import resolve_model_path

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=384,
        num_hidden_layers=layers,
        num_attention_heads=6,
        intermediate_size=768,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="synthetic movies (default 2000: minutes on 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bad-fraction", type=float, default=0.005, help="deliberately bad rows in the catalog")
    ap.add_argument("--changed", type=float, default=0.01, help="share of movies with a new overview on night 2")
    ap.add_argument("--removed", type=float, default=0.002, help="share of movies removed on night 2")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs on night 1")
    ap.add_argument("--config", default=None, help="base config (default: all defaults, local mode)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument(
        "--tiny-encoder",
        action="store_true",
        help="embed with a random-initialised 384-d BERT built here (MiniLM's tokenizer): measures the "
        "pipeline without the encoder's FLOPs (the MiniLM rate is bench.embed's job)",
    )
    ap.add_argument(
        "--encoder-layers",
        type=int,
        default=1,
        help="transformer layers of --tiny-encoder (default 1; 0 = tokeniser, embedding lookup and pooling only)",
    )
    ap.add_argument(
        "--another-night",
        action="store_true",
        help="on the --workdir of an earlier run: apply --changed / --removed to its catalog and run one more "
        "nightly only (the incremental path at scale, without repeating night 1)",
    )
    ap.add_argument("--plan-titles", default="1000000,10000000")
    ap.add_argument("--plan-workers", default="1,8,32")
    ap.add_argument(
        "--embed-rate",
        type=float,
        default=None,
        help="docs/s per embed worker for the plan, e.g. from bench.embed on a GPU",
    )
    args = ap.parse_args(argv)
    set_offline_env()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    from genre_ray.cli import parse_overrides

    if args.another_night and not (args.workdir and (args.workdir / "catalog.csv").exists()):
        ap.error("--another-night needs the --workdir of an earlier bench.nightly run")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    source = workdir / "catalog.csv"
    tomorrow = workdir / "catalog-night2.csv"
    expected: tuple[Any, Any] = (None, None)
    # The catalogs are made in a child process: the driver RSS this bench reports is the pipeline's own, not the
    # memory a 1M-row synthetic table (or its CSV read back) leaves in this process's allocators.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        if args.another_night:
            n_changed, n_removed = child.submit(
                _another_catalog, source, tomorrow, args.changed, args.removed, args.seed + 7
            ).result()
        else:
            t0 = time.perf_counter()
            bad, expected, n_changed, n_removed = child.submit(
                _first_catalogs, source, tomorrow, args.n, args.seed, args.bad_fraction, args.changed, args.removed
            ).result()
            print(f"synthetic catalog: {args.n} movies ({bad or 'no bad rows'}) in {time.perf_counter() - t0:.1f}s")

    overrides = {
        "workdir": str(workdir / "run"),
        "catalog.paths": [str(source)],
        "train.epochs": args.epochs,
        **(
            {
                "encoder.model": str(
                    tiny_encoder(workdir / f"tiny-encoder-{args.encoder_layers}", layers=args.encoder_layers)
                )
            }
            if args.tiny_encoder
            else {}
        ),
        **parse_overrides(args.overrides),
    }
    cfg = load_config(args.config, overrides)
    init_ray(cfg.ray)
    nights = []
    if not args.another_night:
        nights.append(run_night("1 (full)", cfg))
        ingested = nights[0].results.get("ingest", {}).get("result") or {}
        exact = (ingested.get("rejects_by_reason"), ingested.get("field_warnings_by_reason")) == expected
        print(f"night 1 ingest accounting is exactly the injected defects: {'yes' if exact else 'NO'}")

    os.replace(tomorrow, source)
    print(f"next night's catalog: {n_changed} changed, {n_removed} removed")
    nights.append(run_night("another (incremental)" if args.another_night else "2 (incremental)", cfg))

    print(
        "\n| night | stage | seconds | rows | rows/s | driver peak RSS MiB | node peak PSS MiB | object store peak MiB "
        f"| notes |\n|{' --- |' * 9}"
    )
    for night in nights:
        for r in night.rows:
            rate = f"{r.rows / r.seconds:.1f}" if r.seconds and r.rows and r.stage != "train" else "-"
            print(
                f"| {r.night} | {r.stage} | {r.seconds:.1f} | {r.rows} | {rate} | {r.driver_peak_mib:.0f} "
                f"| {r.peak_mib:.0f} | {r.store_peak_mib:.0f} | {r.note} |"
            )
    print(f"\nrun record: {RunLayout.of(cfg.workdir, cfg.storage.options).run_json}")
    sampled = ", ".join(f"night {n.name} {n.sampler_cpu_seconds:.1f}s" for n in nights)
    print(f"memory sampler's own CPU time (taken from the stages above): {sampled}")
    load = os.getloadavg()[0]
    print(f"CPUs: {os.cpu_count()}, load average (1 min) at the end: {load:.1f}")
    if args.another_night:
        return
    titles = [int(x) for x in args.plan_titles.split(",")]
    workers = [int(x) for x in args.plan_workers.split(",")]
    print("\nCapacity plan (linear in titles / workers from the rates above):\n")
    print(capacity_plan(nights, titles, workers, args.changed, cfg.train, args.embed_rate))
    summary = {
        n.name: {
            r.stage: {
                "seconds": r.seconds,
                "rows": r.rows,
                "peak_mib": r.peak_mib,
                "driver_peak_mib": r.driver_peak_mib,
                "store_peak_mib": r.store_peak_mib,
            }
            for r in n.rows
        }
        for n in nights
    }
    (workdir / "bench-nightly.json").write_text(json.dumps(summary, indent=2))
    print(f"\nfigures: {workdir / 'bench-nightly.json'}")


if __name__ == "__main__":
    main()
