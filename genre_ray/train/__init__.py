"""Train the genre classifier on Ray Train: data-parallel TorchTrainer, on-the-fly mixup, early stopping, resume.

Flow: catalog genres joined to embeddings on the cluster (data) -> seeded train / val / test split by movie id ->
genre vocabulary from the training movies' counts -> TorchTrainer fed by Ray Data shards (loop) -> the best epoch's
weights exported with model.save_classifier -> test metrics computed once, on movies training never saw (trainer).
"""

from genre_ray.train.data import TrainingData, Vocabulary, labelled_movies, prepare
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
