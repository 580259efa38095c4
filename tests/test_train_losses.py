"""The loss choices and the one-process fit the ablation bench uses (no Ray)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genre_ray.config import TrainConfig
from genre_ray.model import ClassifierSpec
from genre_ray.train.local import fit_arrays
from genre_ray.train.losses import AsymmetricLoss, make_criterion


def test_asymmetric_loss_without_focusing_is_bce_and_focusing_drops_easy_negatives() -> None:
    logits = torch.tensor([[3.0, -3.0, 0.2], [-0.5, 2.0, -4.0]])
    target = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 0.0]])  # soft targets, as mixup makes
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(AsymmetricLoss(0.0, 0.0, 0.0)(logits, target), bce, atol=1e-6)
    easy_negative = (torch.tensor([[-4.0]]), torch.tensor([[0.0]]))
    assert AsymmetricLoss(4.0, 0.0, 0.05)(*easy_negative) == 0  # below the clip: no loss at all
    assert AsymmetricLoss(2.0, 2.0, 0.0)(*easy_negative) < nn.functional.binary_cross_entropy_with_logits(
        *easy_negative
    )
    assert isinstance(make_criterion(TrainConfig(loss="focal")), AsymmetricLoss)
    assert isinstance(make_criterion(TrainConfig()), nn.BCEWithLogitsLoss)


def test_one_process_fit_learns_separable_genres_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((300, 3)) < 0.4).astype(np.float32)
    x = (y @ rng.normal(size=(3, 8)) + 0.2 * rng.normal(size=(300, 8))).astype(np.float32)
    tc = TrainConfig(hidden_dims=[16], spectrum_dim=4, epochs=8, mixup_factor=1, lr=5e-3, dropout=0.1)
    spec = ClassifierSpec(input_dim=8, num_genres=3, hidden_dims=[16], spectrum_dim=4, dropout=0.1)
    fit = fit_arrays(tc, spec, 0, (x[:200], y[:200]), (x[200:], y[200:]))
    assert fit.history[fit.best_epoch]["map"] > 0.9
    again = fit_arrays(tc, spec, 0, (x[:200], y[:200]), (x[200:], y[200:]))
    assert again.history == fit.history and again.threshold == fit.threshold
