"""The training loop in one process, on arrays: for sweeps over `train.*` (bench.genre_quality's ablation).

Same model, optimizer, loss, mixup, per-epoch seeding, early stopping and threshold search as the Ray Train loop
(genre_ray.train.loop's shared steps) with one worker and the training rows held in memory; what it leaves out is
Ray: no dataset shards, no checkpoints, no restarts. The pipeline's train stage never uses it, and a sweep's chosen
defaults are confirmed through train_on_table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from genre_ray.config import TrainConfig
from genre_ray.model import ClassifierSpec, GenreClassifier
from genre_ray.train.loop import (
    READ_WINDOW,
    _cpu_state,
    make_optimizer,
    new_progress,
    predict_proba,
    record_epoch,
    score_val,
    train_window,
    tune_threshold,
)
from genre_ray.train.losses import make_criterion


@dataclass
class LocalFit:
    model: GenreClassifier  # the best epoch's weights, in eval mode
    threshold: float
    best_epoch: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)


def fit_arrays(
    tc: TrainConfig,
    spec: ClassifierSpec,
    seed: int,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    pos_weight: list[float] | None = None,
) -> LocalFit:
    """Train on (x, y) arrays with early stopping on `val`; the threshold is tuned on `val` when tc says so."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = GenreClassifier(spec)
    optimizer = make_optimizer(model, tc)
    criterion = make_criterion(tc, torch.tensor(pos_weight) if pos_weight else None)
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    window = tc.batch_size * READ_WINDOW
    progress = new_progress()
    best_state = _cpu_state(model)
    for epoch in range(tc.epochs):
        epoch_seed = seed * 1_000_003 + epoch * 101
        gen = torch.Generator().manual_seed(epoch_seed)
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for w in perm.split(window):
            train_window(model, optimizer, criterion, x[w], y[w], tc, gen)
        if record_epoch(progress, {"epoch": epoch, **score_val(model, val[0], val[1], tc, "cpu")}, tc):
            best_state = _cpu_state(model)
        if progress["stopped"]:
            break
    model.load_state_dict(best_state)
    model.eval()
    threshold = tune_threshold(val[1], predict_proba(model, val[0])) if tc.tune_threshold else tc.threshold
    return LocalFit(model, threshold, progress["best_epoch"], time.perf_counter() - start, progress["history"])
