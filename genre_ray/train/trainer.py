"""The driver side of training: size the worker group, run the TorchTrainer, export the best epoch, score test.

Worker sizing. Ray Data feeds the workers from tasks that need CPU too. A TorchTrainer with N workers x 1 CPU on an
N-CPU node reserves every CPU, the input pipeline can never be scheduled and the run hangs without an error. So a
worker reserves a fraction of a CPU (train.cpus_per_worker, default 0.5) and, unless train.num_workers is set, there
is one worker per GPU, or on CPU-only clusters one per CPU pair: the reservation is bookkeeping, torch still uses
the threads Ray gives it, and the spare CPU of each pair runs the data pipeline.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from safetensors.torch import load_file

from genre_ray import split as splits
from genre_ray import storage
from genre_ray.config import Config, TrainConfig
from genre_ray.layout import RunLayout, atomic_write_text
from genre_ray.model import ClassifierSpec, GenreClassifier, save_classifier
from genre_ray.train.data import TrainingData, check_catalog, labelled_movies, prepare, read_arrays
from genre_ray.train.gate import GateDecision, check_retrain, hold_back
from genre_ray.train.loop import BEST, PROGRESS, classification_metrics, predict_proba, train_loop, tune_threshold

HISTORY = "history.json"


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
    movies: dict[str, int] = field(default_factory=dict)  # labelled movies per split (val: before its sample cap)
    worker_nodes: list[str] = field(default_factory=list)  # Ray node id of each rank
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # the retrain gate's decision (train_classifier against a served model); None: not gated
    gate: GateDecision | None = None

    @property
    def served(self) -> bool:
        """False when the gate held this model back: model/ holds the served model again."""
        return self.gate is None or self.gate.served

    def summary(self) -> str:
        t = self.test_metrics
        gate = f"; NOT SERVED: {self.gate.reason}" if self.gate is not None and not self.gate.served else ""
        return (
            f"model {self.model_version}: best epoch {self.best_epoch}/{self.epochs_run}, "
            f"val mAP {self.metrics.get('map', float('nan')):.3f}, test micro-F1 {t.get('micro_f1', float('nan')):.3f} "
            f"macro-F1 {t.get('macro_f1', float('nan')):.3f} mAP {t.get('map', float('nan')):.3f} "
            f"@ threshold {self.threshold:.2f}, {self.num_workers} worker(s), {self.rows_per_s:,.0f} rows/s, "
            f"{self.seconds:.0f}s{gate}"
        )


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


def spec_for(cfg: Config, input_dim: int, num_genres: int) -> ClassifierSpec:
    tc = cfg.train
    return ClassifierSpec(
        input_dim=input_dim,
        num_genres=num_genres,
        hidden_dims=list(tc.hidden_dims),
        spectrum_dim=tc.spectrum_dim,
        dropout=tc.dropout,
        norm=tc.norm,
    )


def build_trainer(
    cfg: Config, layout: RunLayout, data: TrainingData, run_name: str, extra: dict[str, Any] | None = None
) -> Any:
    """The TorchTrainer for `data`; `extra` goes into the loop config (tests use it for failure injection)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    n_train = data.vocab.rows["train"]
    workers, resources, use_gpu = worker_plan(tc, n_train)
    # kept in memory, every worker reads the whole train split and keeps its slice (see loop._Windows)
    cache = n_train * (data.input_dim + len(data.genres) + 2) * 4 <= tc.cache_shard_mb * 2**20
    loop_config = {
        "train": tc.model_dump(),
        "spec": spec_for(cfg, data.input_dim, len(data.genres)).__dict__,
        "seed": cfg.seed if tc.seed is None else tc.seed,
        "pos_weight": data.vocab.positive_weights() if tc.pos_weight else None,
        "cache_shard": cache,
        **(extra or {}),
    }
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=tc.placement_strategy,
        ),
        # randomize_block_order: each epoch's execution visits blocks in a new order (with the local shuffle
        # buffer that is the per-epoch shuffle of a streamed shard)
        datasets={"train": data.train.randomize_block_order(), "val": data.val},
        # val is never split: every worker scores the whole (bounded) val set, so all stop together
        dataset_config=DataConfig(datasets_to_split=[] if cache else ["train"]),
        run_config=RunConfig(
            # an object-store workdir: Train writes checkpoints through the same pyarrow filesystem as the rest
            storage_path=storage.arrow_fs(layout.checkpoints_dir)[1],
            storage_filesystem=storage.arrow_fs(layout.checkpoints_dir)[0],
            name=run_name,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            # the latest checkpoint carries the best weights too, so two suffice (one may be mid-write)
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


@contextmanager
def _sigint_handler_restored() -> Iterator[None]:
    """Put back the SIGINT handler that `TrainerV2.fit()` installs and never removes.

    Its closure holds the run's TrainController handle, so the controller, its DatasetManager and SplitCoordinator
    actors and their references to every train/val block (~1.2 GB at 1M titles) lived until the next fit(): a
    long-lived driver (a nightly bench, a test session) ran every later stage with that much of the object store
    taken. Dropping the handler drops the last handle, and Ray ends the actors.
    """
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and before is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, before)


def _score(model: GenreClassifier, ds: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) over a streamed split: memory is O(movies x genres), never the embeddings."""
    ys, ps = [], []
    for batch in ds.iter_batches(batch_size=8192, batch_format="numpy"):
        ys.append(batch["y"].astype(np.float32))
        ps.append(predict_proba(model, batch["x"].astype(np.float32)))
    if not ys:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(ys), np.concatenate(ps)


def train_on_data(
    cfg: Config, layout: RunLayout, data: TrainingData, extra_loop_config: dict[str, Any] | None = None
) -> TrainResult:
    """Train on prepared data; export the best model to layout.model_dir; score the test split once."""
    start = time.perf_counter()
    layout.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    # A fresh run name every time: Ray Train v2 would otherwise resume a finished run found under the same name.
    run_name = time.strftime("classifier-%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
    trainer = build_trainer(cfg, layout, data, run_name, extra_loop_config)
    with _sigint_handler_restored():
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        progress = json.loads((Path(d) / PROGRESS).read_text())
        best = load_file(str(Path(d) / BEST))

    spec = spec_for(cfg, data.input_dim, len(data.genres))
    model = GenreClassifier(spec)
    model.load_state_dict(best)
    model.eval()
    threshold = cfg.train.threshold
    if cfg.train.tune_threshold:
        val_x, val_y, _ = read_arrays(data.val)  # bounded by train.max_val_rows
        threshold = tune_threshold(val_y, predict_proba(model, val_x))
    # The split is part of the artifact: evaluate scores on this model's test movies whatever the config says then.
    split = {"seed": cfg.seed, "val_fraction": cfg.train.val_fraction, "test_fraction": splits.TEST_FRACTION}
    version = save_classifier(model, spec, data.genres, layout.model_dir, threshold=threshold, split=split)
    history = progress["history"]
    atomic_write_text(layout.model_dir / HISTORY, json.dumps(history, indent=2))

    test_y, test_probs = _score(model, data.test)
    test_metrics = classification_metrics(test_y, test_probs, threshold) if len(test_y) else {}
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
        movies=dict(data.vocab.rows),
        worker_nodes=list(progress.get("worker_nodes", [])),
        history=history,
    )


def train_on_table(
    cfg: Config, layout: RunLayout, table: pa.Table, extra_loop_config: dict[str, Any] | None = None
) -> TrainResult:
    """Train on an in-memory (movie_id, genres, embedding) table: benches and tests with small data."""
    return train_on_data(cfg, layout, prepare(ray.data.from_arrow(table), cfg), extra_loop_config)


def load_training_table(layout: RunLayout, embeddings: pa.Table | None = None) -> pa.Table:
    """The labelled movies of a run as one Arrow table, for benches and tests on small catalogs only.

    The pipeline never calls this: train_classifier streams the same rows (labelled_movies) through Ray Data.
    """
    refs = labelled_movies(layout, embeddings).to_arrow_refs()
    return pa.concat_tables(ray.get(refs)).combine_chunks()


def train_classifier(
    cfg: Config, layout: RunLayout, embeddings: pa.Table | ray.data.Dataset | None = None, promote: bool = False
) -> TrainResult:
    """Pipeline entry: catalog (layout.movies) + embeddings (embed stage, or `embeddings`) -> exported classifier.

    With a published store the new model must pass the retrain gate (genre_ray.train.gate) unless `promote`: one
    worse than the served model on the same validation movies is moved to model_candidate/ and model/ gets the
    served model back, so the publish that follows changes nothing.
    """
    from genre_ray.runtime import init_ray

    init_ray(cfg.ray)
    check_catalog(layout)
    data = prepare(labelled_movies(layout, embeddings), cfg)
    result = train_on_data(cfg, layout, data)
    if not promote:
        result.gate = check_retrain(cfg, layout, data)
    if result.served:
        if layout.candidate_dir.exists():  # an older held-back retrain is superseded by this one
            storage.remove_tree(layout.candidate_dir)
    else:
        hold_back(layout, result.gate)
    return result
