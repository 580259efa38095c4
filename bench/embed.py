"""Embedding throughput: plain transformers loop vs sentence-transformers vs the encoder's CPU backends vs the Ray
pipeline with each backend, same documents, one run (so ratios hold even on a busy machine).

    python -m bench.embed [--n 1000] [--batch-size 64] [--backends torch onnx-int8] [--workdir DIR]
    python -m bench.embed --overhead [--n 40960] [--layouts actor stage]

--overhead times the pipeline around the model instead: MiniLM's tokenizer alone in this process against the
embed stage with a 0-layer 384-d stand-in encoder (random BERT, MiniLM's tokenizer: tokenising, embedding lookup
and pooling, none of the transformer's FLOPs) on the TMDB documents replicated to N, once per tokenisation layout.

Documents: the first N movies of the TMDB catalog, normalised by the catalog stage (catalog.ingest) and rendered
by the text stage, i.e. exactly what `embed_catalog` sees in a real run. The Ray row is steady state: from the
first window an actor starts to the last it finishes, timed inside the actors, so Ray start-up and the actors'
model load (reported on their own rows) are not in it. All rows count the same real (unpadded) tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.machine import describe
from genre_ray.config import Config
from genre_ray.encoder import TextEncoder, resolve_model_path
from genre_ray.layout import RunLayout
from genre_ray.runtime import init_ray, set_offline_env


@dataclass
class Row:
    method: str
    docs: int
    seconds: float
    tokens: int
    note: str = ""


def catalog_slice(cfg: Config, workdir: Path, n: int, catalog: Path | None = None) -> pa.Table:
    """The first n rows of the normalised catalog (TMDB, or `catalog`), as the catalog + text stages produce it."""
    from genre_ray.catalog import ingest, read_catalog

    layout = RunLayout.of(workdir / "source")
    source = cfg if catalog is None else cfg.model_copy(deep=True)
    if catalog is not None:
        source.catalog.paths = [str(catalog)]
    ingest(source, layout)
    return read_catalog(layout).slice(0, n)


def plain_loop(path: str, docs: list[str], batch_size: int, max_length: int) -> tuple[np.ndarray, int, int]:
    """The reference: batches in input order, each padded to its longest document, mean pooling."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    out, tokens, padded = [], 0, 0
    with torch.inference_mode():
        for start in range(0, len(docs), batch_size):
            batch = tokenizer(
                docs[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
            tokens += int(batch["attention_mask"].sum())
            padded += int(batch["attention_mask"].numel())
    return np.concatenate(out), tokens, padded


def replicated(table: pa.Table, n: int) -> pa.Table:
    """`table` repeated to n rows, copy k's ids suffixed "#k" (distinct movies with the same documents)."""
    copies = []
    for k in range(-(-n // table.num_rows)):
        ids = pa.array([f"{m}#{k}" for m in table["movie_id"].to_pylist()], pa.string())
        copies.append(table.set_column(table.schema.get_field_index("movie_id"), "movie_id", ids))
    return pa.concat_tables(copies).slice(0, n)


def tokenizer_alone(path: str, docs: list[str], max_length: int, batch_size: int = 256) -> float:
    """docs/s of the fast tokenizer called as transformers documents it, in this one process."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    t0 = time.perf_counter()
    for start in range(0, len(docs), batch_size):
        tokenizer(docs[start : start + batch_size], truncation=True, max_length=max_length)
    return len(docs) / (time.perf_counter() - t0)


def overhead(args: argparse.Namespace, workdir: Path) -> None:
    from bench.nightly import tiny_encoder
    from genre_ray.embed import embed_catalog

    cfg = Config(workdir=str(workdir / "run"))
    cfg.embed.incremental = False
    cfg.embed.batch_size = args.batch_size
    init_ray(cfg.ray)
    table = replicated(catalog_slice(cfg, workdir, 10**9, args.catalog), args.n)
    docs = table["document"].to_pylist()
    model = tiny_encoder(workdir / "encoder-0-layer", layers=0)
    print(f"{len(docs)} documents (TMDB replicated), batch size {args.batch_size}, window {cfg.embed.sort_window}")
    print(f"CPU: {describe().summary()}")
    print(
        "\n| layout | tokenizer alone docs/s | stage docs/s (wall) | stage s | steady docs/s | ratio wall "
        "| ratio steady |"
    )
    print(f"|{' --- |' * 7}")
    results = []
    for layout_name in args.layouts:
        # the tokenizer again before every stage run: on a shared machine only the pair's ratio is comparable
        alone = tokenizer_alone(resolve_model_path(cfg.encoder.model), docs, cfg.encoder.max_length)
        run_cfg = cfg.model_copy(deep=True, update={"workdir": str(workdir / f"run-{layout_name}")})
        run_cfg.encoder.model = str(model)
        if "tokenize" in type(run_cfg.embed).model_fields:  # absent before the layouts: lets this time older commits
            run_cfg.embed.tokenize = layout_name
        layout = RunLayout.of(run_cfg.workdir, run_cfg.storage.options)
        layout.movies.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, layout.movies / "part-0.parquet")
        stats = embed_catalog(run_cfg, layout)
        wall, steady = len(docs) / stats.seconds, len(docs) / max(stats.steady_seconds, 1e-9)
        print(
            f"| {layout_name} | {alone:.0f} | {wall:.0f} | {stats.seconds:.1f} | {steady:.0f} | "
            f"{wall / alone:.2f} | {steady / alone:.2f} |",
            flush=True,
        )
        results.append(
            {"layout": layout_name, "tokenizer_docs_per_s": alone, "stage_docs_per_s": wall}
            | {"stage_seconds": stats.seconds, "steady_docs_per_s": steady, "plan": stats.summary()}
        )
    for r in results:
        print(r["plan"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"docs": len(docs), "rows": results}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--n", type=int, default=None, help="documents (default 1000: minutes on 2 cores; --overhead 40960)"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument(
        "--backends",
        nargs="+",
        default=["torch", "onnx-int8"],
        choices=["torch", "onnx", "onnx-int8"],
        help="encoder.cpu_backend values to time (CPU only; a GPU runs torch)",
    )
    ap.add_argument("--catalog", type=Path, default=None, help="catalog file instead of TMDB (e.g. a synthetic one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    ap.add_argument(
        "--overhead", action="store_true", help="tokenizer alone vs the stage with a 0-layer encoder (--n 40960)"
    )
    ap.add_argument("--layouts", nargs="+", default=["actor", "stage"], choices=["actor", "stage"])
    args = ap.parse_args()
    set_offline_env()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-embed-"))
    if args.overhead:
        args.n = args.n or 40_960
        overhead(args, workdir)
        return
    args.n = args.n or 1000
    cfg = Config(workdir=str(workdir / "run"))
    cfg.embed.batch_size = args.batch_size
    cfg.embed.incremental = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = resolve_model_path(cfg.encoder.model)
    rows: list[Row] = []

    t0 = time.perf_counter()
    init_ray(cfg.ray)
    ray_start = time.perf_counter() - t0

    table = catalog_slice(cfg, workdir, args.n, args.catalog)
    docs = table["document"].to_pylist()
    n = len(docs)
    machine = describe()
    print(f"{n} TMDB documents, batch size {args.batch_size}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"CPU: {machine.summary()}")

    if device == "cpu":
        t0 = time.perf_counter()
        reference, tokens, padded = plain_loop(path, docs, args.batch_size, cfg.encoder.max_length)
        rows.append(
            Row("plain transformers loop", n, time.perf_counter() - t0, tokens, f"padding {1 - tokens / padded:.0%}")
        )
    else:
        # on a GPU the reference is the same loop through TextEncoder (unsorted), in the GPU dtype
        enc = TextEncoder(cfg.encoder, device=device)
        enc.encode(docs[: args.batch_size], args.batch_size)  # CUDA warm-up (kernels, allocator)
        t0 = time.perf_counter()
        reference, st = enc.encode_with_stats(docs, args.batch_size, sort_by_length=False)
        torch.cuda.synchronize()
        tokens = st.tokens
        rows.append(
            Row(f"plain loop ({enc.dtype})", n, time.perf_counter() - t0, tokens, f"padding {st.padding_fraction:.0%}")
        )

    # The CPU side of a GPU node: what one process's tokenizer feeds, beside the GPU actor's rate below.
    tokenizer_rate = tokenizer_alone(path, docs, cfg.encoder.max_length)
    rows.append(Row("tokenizer alone (CPU, one process)", n, n / tokenizer_rate, tokens, "no model"))

    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(path, device=device, local_files_only=True)
    st_model.max_seq_length = cfg.encoder.max_length
    if device != "cpu":
        st_model.half()
        st_model.encode(docs[: args.batch_size], batch_size=args.batch_size)
    t0 = time.perf_counter()
    st_vectors = st_model.encode(docs, batch_size=args.batch_size, normalize_embeddings=True)
    rows.append(Row("sentence-transformers encode", n, time.perf_counter() - t0, tokens, "sorts by length itself"))
    vectors: dict[str, np.ndarray] = {"sentence-transformers encode": st_vectors}
    del st_model

    backends = ["torch"] if device != "cpu" else args.backends
    for backend in (b for b in backends if b != "torch"):
        # The same encoder a CPU actor runs, in this one process: what Ray's steady state is compared with.
        enc = TextEncoder(cfg.encoder.model_copy(update={"cpu_backend": backend}), device=device)
        enc.encode(docs[: args.batch_size], args.batch_size)  # session warm-up
        t0 = time.perf_counter()
        name = f"encoder {backend}, one process"
        vectors[name], st = enc.encode_with_stats(docs, args.batch_size)
        rows.append(Row(name, n, time.perf_counter() - t0, st.tokens, f"sorted, padding {st.padding_fraction:.0%}"))
        del enc

    from genre_ray.embed import embed_catalog, read_embeddings
    from genre_ray.schema import vector_matrix

    load, busy = {}, {}
    for backend in backends:
        run_cfg = cfg.model_copy(deep=True, update={"workdir": str(workdir / f"run-{backend}")})
        run_cfg.encoder.cpu_backend = backend
        layout = RunLayout.of(run_cfg.workdir, run_cfg.storage.options)
        layout.movies.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, layout.movies / "part-0.parquet")
        stats = embed_catalog(run_cfg, layout)
        stored = read_embeddings(layout)
        order = {m: i for i, m in enumerate(stored["movie_id"].to_pylist())}
        name = f"ray pipeline {backend}, steady state"
        vectors[name] = vector_matrix(stored["embedding"])[[order[m] for m in table["movie_id"].to_pylist()]]
        plan = stats.plan.describe() if stats.plan else ""
        note = f"padding {stats.padding_fraction:.0%}, model busy {stats.model_busy:.0%}, {plan}"
        rows.append(Row(name, n, stats.steady_seconds, stats.tokens, note))
        rows.append(
            Row(f"ray pipeline {backend}, end to end", n, stats.seconds, stats.tokens, "incl. actor start, load, write")
        )
        load[backend] = stats.model_load_seconds
        busy[backend] = stats.model_busy

    base = rows[0].seconds
    print("\n| method | docs | seconds | docs/s | tokens/s | vs plain loop | cosine vs plain: mean / min | note |")
    print(f"|{' --- |' * 8}")
    for r in rows:
        v = vectors.get(r.method.replace(", end to end", ", steady state"))
        cos = (v * reference).sum(axis=1) if v is not None else np.ones(1)
        print(
            f"| {r.method} | {r.docs} | {r.seconds:.1f} | {r.docs / r.seconds:.1f} | {r.tokens / r.seconds:.0f} | "
            f"{base / r.seconds:.2f}x | {cos.mean():.4f} / {cos.min():.4f} | {r.note} |"
        )
    loads = ", ".join(f"{b} {s:.1f}s" for b, s in load.items())
    print(f"\nRay start {ray_start:.1f}s, actor model load: {loads} (not in steady state)")
    if args.json:
        out = {
            "docs": n,
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "machine": dataclasses.asdict(machine),
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "ray_start_seconds": ray_start,
            "model_load_seconds": load,
            # share of the encoder actors' steady state inside the model (CUDA events on a GPU)
            "model_busy": busy,
            "tokenizer_docs_per_s": tokenizer_rate,
            "rows": [
                {"method": r.method, "docs": r.docs, "seconds": r.seconds, "docs_per_s": r.docs / r.seconds}
                | {"tokens_per_s": r.tokens / r.seconds, "vs_plain": base / r.seconds, "note": r.note}
                for r in rows
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
