"""Train the genre classifier on Ray Train: data-parallel TorchTrainer, on-the-fly mixup, early stopping, resume.

Flow: catalog + embeddings -> seeded train / val / test split by movie id (genre_ray.split) -> genre vocabulary from
the training movies -> TorchTrainer (train split sharded over workers, val read whole by every worker) -> the best
epoch's weights exported with model.save_classifier -> test metrics computed once, on movies training never saw.

Worker sizing. Ray Data feeds the workers from tasks that need CPU too. A TorchTrainer with N workers x 1 CPU on an
N-CPU node reserves every CPU, the input pipeline can never be scheduled and the run hangs without an error. So a
worker reserves a fraction of a CPU (train.cpus_per_worker, default 0.5) and, unless train.num_workers is set, there
is one worker per GPU, or on CPU-only clusters one per CPU pair: the reservation is bookkeeping, torch still uses
the threads Ray gives it, and the spare CPU of each pair runs the data pipeline.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score, f1_score
from torch import nn

from genre_ray import schema
from genre_ray import split as splits
from genre_ray.catalog import read_catalog
from genre_ray.config import Config, TrainConfig
from genre_ray.errors import PreconditionError
from genre_ray.layout import RunLayout
from genre_ray.mixup import mixup_batch
from genre_ray.model import ClassifierSpec, GenreClassifier, save_classifier

log = logging.getLogger(__name__)

HISTORY = "history.json"
# checkpoint files: resumable training state (torch, loaded with weights_only=True) + progress (JSON)
STATE = "state.pt"
BEST = "best.safetensors"
PROGRESS = "progress.json"
# batches per Ray Data read in the training loop (see train_loop)
READ_WINDOW = 16
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)


@dataclass
class TrainResult:
    model_version: str
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]  # best epoch's validation metrics
    test_metrics: dict[str, float]  # held-out test split, computed once after training
    seconds: float
    rows_per_s: float  # rows (real + mixed) through forward/backward per second, all workers together
    threshold: float = 0.5
    num_workers: int = 1
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        t = self.test_metrics
        return (
            f"model {self.model_version}: best epoch {self.best_epoch}/{self.epochs_run}, "
            f"val mAP {self.metrics.get('map', float('nan')):.3f}, test micro-F1 {t['micro_f1']:.3f} "
            f"macro-F1 {t['macro_f1']:.3f} mAP {t['map']:.3f} @ threshold {self.threshold:.2f}, "
            f"{self.num_workers} worker(s), {self.rows_per_s:,.0f} rows/s, {self.seconds:.0f}s"
        )


# ----------------------------------------------------------------------------------------------- data


@dataclass
class LabeledData:
    """Features and multi-hot labels of the labelled movies, with each movie's split."""

    movie_ids: list[str]
    x: np.ndarray  # [N, D] float32
    y: np.ndarray  # [N, G] float32
    split: np.ndarray  # [N] str: train / val / test
    vocab: list[str]

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.split == name
        return self.x[mask], self.y[mask]


def load_training_table(layout: RunLayout, embeddings: pa.Table | None = None) -> pa.Table:
    """movie_id, genres, embedding of the catalog's labelled movies that have an embedding.

    `embeddings` defaults to the embed stage's output (genre_ray.embed.read_embeddings).
    """
    if embeddings is None:
        from genre_ray.embed import read_embeddings  # the embed stage's reader: one place knows its storage format

        embeddings = read_embeddings(layout)
    catalog = read_catalog(layout, ["movie_id", "genres", "no_genres"])
    if catalog.num_rows == 0:
        raise PreconditionError(
            f"train: the catalog in {layout.movies} has no movies: run ingest on a catalog with usable rows "
            "(catalog/accounting.json says what it kept)"
        )
    if pc.all(catalog["no_genres"]).as_py():
        raise _no_labels(catalog.num_rows)
    catalog = catalog.filter(pc.invert(catalog["no_genres"]))
    row_of = {m: i for i, m in enumerate(embeddings["movie_id"].to_pylist())}
    ids = catalog["movie_id"].to_pylist()
    keep = [i for i, m in enumerate(ids) if m in row_of]
    if len(keep) < len(ids):
        log.warning("%d labelled movies have no embedding and are left out of training", len(ids) - len(keep))
    catalog = catalog.take(pa.array(keep, pa.int64()))
    rows = pa.array([row_of[m] for m in catalog["movie_id"].to_pylist()], pa.int64())
    return pa.table(
        {"movie_id": catalog["movie_id"], "genres": catalog["genres"], "embedding": embeddings["embedding"].take(rows)}
    )


def _no_labels(n_movies: int) -> PreconditionError:
    return PreconditionError(
        f"train: none of the {n_movies} catalog movies has genres, so there is nothing to learn: give the catalog "
        "a genres column (mapped adapter: catalog.columns.genres, catalog.genre_separator) and run ingest and "
        "embed again"
    )


def prepare_data(table: pa.Table, cfg: Config) -> LabeledData:
    """Split by movie id, learn the vocabulary from the training split, encode multi-hot labels.

    Raises PreconditionError, saying what to fix, when the table cannot train a classifier.
    """
    genres = table["genres"].to_pylist()
    labelled = np.array([bool(g) for g in genres], dtype=bool)
    if not genres:
        raise PreconditionError(
            "train: no catalog movie has an embedding: run ingest on a catalog with usable rows, then embed "
            "(catalog/accounting.json says what ingest kept)"
        )
    if not labelled.any():
        raise _no_labels(len(genres))
    table = table.filter(pa.array(labelled))
    genres = [g for g, keep in zip(genres, labelled, strict=True) if keep]
    ids = table["movie_id"].to_pylist()
    part = np.array(splits.assign(ids, cfg.seed, cfg.train.val_fraction))
    n_train, n_val = int((part == "train").sum()), int((part == "val").sum())
    if n_train == 0 or n_val == 0:
        raise PreconditionError(
            f"train: {len(ids)} labelled movies split into {n_train} train / {n_val} val / "
            f"{len(ids) - n_train - n_val} test; training needs at least one in train and in val "
            f"(train.val_fraction={cfg.train.val_fraction:g}): add labelled movies to the catalog"
        )
    counts = Counter(g for gs, p in zip(genres, part, strict=True) if p == "train" for g in set(gs))
    min_count = max(cfg.train.min_genre_count, math.ceil(cfg.train.min_genre_fraction * n_train))
    vocab = sorted(g for g, c in counts.items() if c >= min_count)
    if len(vocab) < 2:
        found = ", ".join(f"{g} ({c})" for g, c in counts.most_common(5)) or "none"
        raise PreconditionError(
            f"train: {len(vocab)} genre(s) with at least {min_count} of the {n_train} training movies "
            f"(most frequent: {found}); a genre spectrum needs two or more. Check the genres column and "
            "catalog.genre_separator (one compound name per film, e.g. 'Action/Comedy', needs the separator), "
            "or lower train.min_genre_fraction / train.min_genre_count"
        )
    index = {g: i for i, g in enumerate(vocab)}
    y = np.zeros((len(ids), len(vocab)), np.float32)
    for row, gs in enumerate(genres):
        for g in gs:
            if g in index:
                y[row, index[g]] = 1.0
    return LabeledData(ids, schema.vector_matrix(table["embedding"]), y, part, vocab)


# -------------------------------------------------------------------------------------------- metrics


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """micro-F1, macro-F1 at `threshold`, and mAP (macro average precision over genres with a positive)."""
    pred = (probs >= threshold).astype(np.int8)
    truth = (y_true >= 0.5).astype(np.int8)
    # AP is undefined for a genre without a positive in this split; sklearn would warn and count it as 0.
    present = truth.sum(axis=0) > 0
    return {
        "micro_f1": float(f1_score(truth, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0)),
        "map": float(average_precision_score(truth[:, present], probs[:, present], average="macro")),
    }


def tune_threshold(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The probability cut with the best micro-F1 on the given (validation) split."""
    truth = (y_true >= 0.5).astype(np.int8)
    scores = [f1_score(truth, (probs >= t).astype(np.int8), average="micro", zero_division=0) for t in THRESHOLD_GRID]
    return float(THRESHOLD_GRID[int(np.argmax(scores))])


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 4096, device: str = "cpu") -> torch.Tensor:
    """Logits in eval mode (dropout off), on the CPU; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch_size]).to(device)).cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 0))


def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 4096, device: str = "cpu") -> np.ndarray:
    return torch.sigmoid(predict_logits(model, x, batch_size, device)).numpy()


# ---------------------------------------------------------------------------------------- train loop


def _positive_weights(y: np.ndarray) -> list[float]:
    # neg/pos per genre, capped: a genre with 3 positives must not dominate the loss by a factor of 1000
    pos = y.sum(axis=0)
    return np.clip((len(y) - pos) / np.maximum(pos, 1.0), 1.0, 50.0).tolist()


def _read_all(shard: Any) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in shard.iter_batches(batch_size=4096, batch_format="numpy"):
        xs.append(batch["x"])
        ys.append(batch["y"])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)


def _save_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, best: dict[str, torch.Tensor], progress: dict
) -> None:
    inner = getattr(model, "module", model)
    torch.save({"model": inner.state_dict(), "optimizer": optimizer.state_dict()}, directory / STATE)
    save_file(best, str(directory / BEST))
    (directory / PROGRESS).write_text(json.dumps(progress))


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    inner = getattr(model, "module", model)
    return {k: v.detach().cpu().clone().contiguous() for k, v in inner.state_dict().items()}


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. Resumes from ray.train.get_checkpoint() when the run restarts after a failure."""
    import ray.train
    import ray.train.torch

    tc = TrainConfig.model_validate(config["train"])
    spec = ClassifierSpec(**config["spec"])
    seed: int = config["seed"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    torch.manual_seed(seed)  # identical initial weights on every worker (DDP also broadcasts rank 0's)
    model = ray.train.torch.prepare_model(GenreClassifier(spec))
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    pos_weight = torch.tensor(config["pos_weight"], device=device) if config.get("pos_weight") else None
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    val_x, val_y = _read_all(ray.train.get_dataset_shard("val"))
    val_criterion = nn.BCEWithLogitsLoss()

    progress: dict[str, Any] = {"epoch": -1, "best_epoch": -1, "best_metrics": {}, "bad_epochs": 0, "history": []}
    best_state = _cpu_state(model)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE, map_location=device, weights_only=True)
            getattr(model, "module", model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            best_state = load_file(str(Path(d) / BEST))
            progress = json.loads((Path(d) / PROGRESS).read_text())
        log.info("rank %d resumes after epoch %d", rank, progress["epoch"])
        if progress.get("stopped"):
            return  # the failure came after early stopping had ended the run: nothing left to train

    shard = ray.train.get_dataset_shard("train")
    cached: dict[str, torch.Tensor] | None = None
    fail_at = config.get("fail_at_epoch")
    for epoch in range(progress["epoch"] + 1, tc.epochs):
        if fail_at == epoch:
            # Test hook (never set by train_classifier): every worker crashes once, at the start of this epoch, so
            # FailureConfig restarts the group and the loop must resume from the last reported checkpoint.
            marker = Path(f"{config['fail_marker']}.rank{rank}")
            if not marker.exists():
                marker.touch()
                raise RuntimeError(f"injected failure in epoch {epoch} on rank {rank}")
        # Seeded per (seed, epoch, rank), not one stream per run: a resumed run draws like a fresh one would.
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + rank)
        model.train()
        start = time.perf_counter()
        rows, loss_sum = 0, 0.0
        # Ray Data hands over windows of READ_WINDOW batches (its per-batch cost and a local shuffle buffer cost
        # more than the MLP's step); rows were shuffled once in the driver and are re-permuted per window here.
        # A shard small enough to keep (config["cache_shard"]) is read through Ray Data once and then reshuffled
        # in memory every epoch: a new Ray Data execution per epoch costs more than a small epoch's compute.
        window_rows = tc.batch_size * READ_WINDOW
        if cached is None:
            windows = shard.iter_torch_batches(batch_size=window_rows, dtypes=torch.float32, device=device)
        else:
            perm = torch.randperm(len(cached["x"]), generator=gen).to(device)
            windows = ({"x": cached["x"][w], "y": cached["y"][w]} for w in perm.split(window_rows))
        seen: list[dict[str, torch.Tensor]] = []
        for window in windows:
            if config.get("cache_shard") and cached is None:
                seen.append(window)
            order = torch.randperm(len(window["x"]), generator=gen).to(device)
            for idx in order.split(tc.batch_size):
                x, y = mixup_batch(window["x"][idx], window["y"][idx], tc.mixup_alpha, tc.mixup_factor, gen)
                # (1 + factor) x batch_size rows: step on batch_size chunks (the real ones, then each mixed round), so
                # mixup adds optimizer steps (the ~10x data) rather than a 10x larger batch with as many steps.
                for xc, yc in zip(x.split(tc.batch_size), y.split(tc.batch_size), strict=True):
                    loss = criterion(model(xc), yc)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += float(loss.detach()) * len(xc)
                    rows += len(xc)
        train_seconds = time.perf_counter() - start
        if seen:
            cached = {k: torch.cat([w[k] for w in seen]) for k in ("x", "y")}

        logits = predict_logits(model, val_x, device=str(device))
        val_loss = float(val_criterion(logits, torch.from_numpy(val_y)))
        probs = torch.sigmoid(logits).numpy()
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(rows, 1),
            "val_loss": val_loss,
            **classification_metrics(val_y, probs, tc.threshold),
            "train_seconds": train_seconds,
            # every worker trains an equal share (streaming_split(equal=True)), so the cluster rate is world x ours
            "rows_per_s": world * rows / max(train_seconds, 1e-9),
        }
        progress["history"].append(metrics)
        progress["epoch"] = epoch
        if metrics[tc.monitor] > progress["best_metrics"].get(tc.monitor, -1.0):
            progress.update(best_epoch=epoch, best_metrics=metrics, bad_epochs=0)
            best_state = _cpu_state(model)
        else:
            progress["bad_epochs"] += 1
        stop = progress["bad_epochs"] > tc.patience or epoch == tc.epochs - 1
        progress["stopped"] = stop

        with tempfile.TemporaryDirectory() as tmp:
            # Only rank 0 writes a checkpoint: the weights are identical on every worker after the all-reduce.
            ckpt = None
            if rank == 0:
                _save_checkpoint(Path(tmp), model, optimizer, best_state, progress)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        # Every worker sees the same val metrics (same weights, same val set), so they all stop together; DDP would
        # hang if one worker left the loop early.
        if stop:
            break


# -------------------------------------------------------------------------------------------- driver


def worker_plan(tc: TrainConfig, n_train: int) -> tuple[int, dict[str, float], bool]:
    """(num_workers, resources_per_worker, use_gpu) from the cluster and the data size; see the module docstring."""
    from genre_ray.runtime import cluster_cpus, cluster_gpus

    gpus = cluster_gpus()
    use_gpu = tc.use_gpu == "yes" or (tc.use_gpu == "auto" and gpus >= 1)
    if tc.num_workers:
        workers = tc.num_workers
    elif use_gpu:
        workers = int(gpus)
    else:
        workers = max(1, int(cluster_cpus() // 2))
        # never more workers than full batches: tiny shards make all-reduce cost more than the compute it splits
        workers = max(1, min(workers, n_train // tc.batch_size))
    resources = {"CPU": tc.cpus_per_worker, **({"GPU": 1.0} if use_gpu else {})}
    return workers, resources, use_gpu


def _tensor_dataset(x: np.ndarray, y: np.ndarray) -> Any:
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    return ray.data.from_arrow(pa.table({"x": ArrowTensorArray.from_numpy(x), "y": ArrowTensorArray.from_numpy(y)}))


def _spec(cfg: Config, data: LabeledData) -> ClassifierSpec:
    tc = cfg.train
    return ClassifierSpec(
        input_dim=data.x.shape[1],
        num_genres=len(data.vocab),
        hidden_dims=list(tc.hidden_dims),
        spectrum_dim=tc.spectrum_dim,
        dropout=tc.dropout,
        norm=tc.norm,
    )


def build_trainer(
    cfg: Config, layout: RunLayout, data: LabeledData, run_name: str, extra: dict[str, Any] | None = None
) -> Any:
    """The TorchTrainer for `data`; `extra` goes into the loop config (tests use it for failure injection)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    train_x, train_y = data.part("train")
    # Shuffle once, seeded: the loop only permutes within read windows, so rows must not arrive in catalog order.
    perm = np.random.default_rng(cfg.seed).permutation(len(train_x))
    train_x, train_y = train_x[perm], train_y[perm]
    val_x, val_y = data.part("val")
    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError(f"need labelled movies in both train and val splits (got {len(train_x)}, {len(val_x)})")
    workers, resources, use_gpu = worker_plan(tc, len(train_x))
    loop_config = {
        "train": tc.model_dump(),
        "spec": _spec(cfg, data).__dict__,
        "seed": cfg.seed,
        "pos_weight": _positive_weights(train_y) if tc.pos_weight else None,
        "cache_shard": (train_x.nbytes + train_y.nbytes) / workers <= tc.cache_shard_mb * 2**20,
        **(extra or {}),
    }
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        datasets={"train": _tensor_dataset(train_x, train_y), "val": _tensor_dataset(val_x, val_y)},
        # val is not split: every worker scores the whole val set, so all reach the same early-stopping decision
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            storage_path=str(layout.checkpoints_dir),
            name=run_name,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            # the latest checkpoint carries the best weights too, so two suffice (one may be mid-write)
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def train_on_table(
    cfg: Config, layout: RunLayout, table: pa.Table, extra_loop_config: dict[str, Any] | None = None
) -> TrainResult:
    """Train on a (movie_id, genres, embedding) table; export the best model to layout.model_dir."""
    start = time.perf_counter()
    data = prepare_data(table, cfg)
    layout.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    # A fresh run name every time: Ray Train v2 would otherwise resume a finished run found under the same name.
    run_name = time.strftime("classifier-%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
    trainer = build_trainer(cfg, layout, data, run_name, extra_loop_config)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        progress = json.loads((Path(d) / PROGRESS).read_text())
        best = load_file(str(Path(d) / BEST))

    spec = _spec(cfg, data)
    model = GenreClassifier(spec)
    model.load_state_dict(best)
    model.eval()
    threshold = cfg.train.threshold
    if cfg.train.tune_threshold:
        threshold = tune_threshold(data.part("val")[1], predict_proba(model, data.part("val")[0]))
    version = save_classifier(model, spec, data.vocab, layout.model_dir, threshold=threshold)
    history = progress["history"]
    (layout.model_dir / HISTORY).write_text(json.dumps(history, indent=2))

    test_x, test_y = data.part("test")
    test_metrics = classification_metrics(test_y, predict_proba(model, test_x), threshold) if len(test_x) else {}
    trained_rows = sum(h["rows_per_s"] * h["train_seconds"] for h in history)
    train_seconds = sum(h["train_seconds"] for h in history)
    return TrainResult(
        model_version=version,
        best_epoch=progress["best_epoch"],
        epochs_run=len(history),
        metrics={k: v for k, v in progress["best_metrics"].items() if k not in ("epoch",)},
        test_metrics=test_metrics,
        seconds=time.perf_counter() - start,
        rows_per_s=trained_rows / max(train_seconds, 1e-9),
        threshold=threshold,
        num_workers=trainer.scaling_config.num_workers,
        history=history,
    )


def train_classifier(cfg: Config, layout: RunLayout, embeddings: pa.Table | None = None) -> TrainResult:
    """Pipeline entry: catalog (layout.movies) + embeddings (embed stage, or `embeddings`) -> exported classifier."""
    from genre_ray.runtime import init_ray

    init_ray(cfg.ray)
    return train_on_table(cfg, layout, load_training_table(layout, embeddings))
