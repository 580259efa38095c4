"""Train the genre classifier on Ray Train: data-parallel TorchTrainer, on-the-fly mixup, early stopping, resume.

Flow: catalog genres joined to embeddings on the cluster (data) -> seeded train / val / test split by movie id ->
genre vocabulary from the training movies' counts -> TorchTrainer fed by Ray Data shards (loop) -> the best epoch's
weights exported with model.save_classifier -> test metrics computed once, on movies training never saw (trainer).

`data` is imported eagerly, `loop` and `trainer` on first use: the Ray Data tasks that split, count and label the
training rows run functions of `data` in pooled workers, which would otherwise import torch, scikit-learn and
Ray Train (seconds per fresh worker) for nothing.
"""

from typing import TYPE_CHECKING

from genre_ray.lazy import lazy_attributes
from genre_ray.train.data import TrainingData, Vocabulary, labelled_movies, prepare

if TYPE_CHECKING:  # type checkers and IDEs see the lazy names below
    from genre_ray.train.loop import READ_WINDOW, classification_metrics, predict_proba, tune_threshold
    from genre_ray.train.trainer import (
        HISTORY,
        TrainResult,
        build_trainer,
        load_training_table,
        spec_for,
        train_classifier,
        train_on_data,
        train_on_table,
        worker_plan,
    )

_LAZY = {
    "READ_WINDOW": "loop",
    "classification_metrics": "loop",
    "predict_proba": "loop",
    "tune_threshold": "loop",
    "HISTORY": "trainer",
    "TrainResult": "trainer",
    "build_trainer": "trainer",
    "load_training_table": "trainer",
    "spec_for": "trainer",
    "train_classifier": "trainer",
    "train_on_data": "trainer",
    "train_on_table": "trainer",
    "worker_plan": "trainer",
}

__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "HISTORY",
    "READ_WINDOW",
    "TrainResult",
    "TrainingData",
    "Vocabulary",
    "build_trainer",
    "classification_metrics",
    "labelled_movies",
    "load_training_table",
    "predict_proba",
    "prepare",
    "spec_for",
    "train_classifier",
    "train_on_data",
    "train_on_table",
    "tune_threshold",
    "worker_plan",
]
