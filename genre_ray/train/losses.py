"""Multi-label losses over soft targets (mixup makes every target a mix of two multi-hot vectors).

bce: BCE-with-logits, optionally with per-genre positive weights. asl: the asymmetric loss of Ridnik et al. (2021),
which down-weights easy negatives (gamma_neg) and drops very easy ones (clip): with 18 genres and ~2.5 per movie
most of the loss is negatives the model already gets right. focal: asl with one gamma on both sides and no clip.
"""

from __future__ import annotations

import torch
from torch import nn

from genre_ray.config import TrainConfig


class AsymmetricLoss(nn.Module):
    def __init__(self, gamma_neg: float, gamma_pos: float, clip: float):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        # the shifted negative probability: a negative predicted below `clip` contributes nothing
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        log_p = nn.functional.logsigmoid(logits)
        log_not = torch.log((1 - p_neg).clamp(min=1e-8))
        pos = target * (1 - p).pow(self.gamma_pos) * log_p
        neg = (1 - target) * p_neg.pow(self.gamma_neg) * log_not
        return -(pos + neg).mean()


def make_criterion(tc: TrainConfig, pos_weight: torch.Tensor | None = None) -> nn.Module:
    if tc.loss == "asl":
        return AsymmetricLoss(tc.loss_gamma_neg, tc.loss_gamma_pos, tc.loss_clip)
    if tc.loss == "focal":
        return AsymmetricLoss(tc.loss_gamma_neg, tc.loss_gamma_neg, 0.0)
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
