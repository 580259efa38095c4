"""On-the-fly mixup for multi-label batches (Zhang et al., 2018), in plain torch.

Each real sample is paired with a shuffled partner from the same batch and mixed with lambda ~ Beta(alpha, alpha):
    x = lam * x_a + (1 - lam) * x_b,    y = lam * y_a + (1 - lam) * y_b
Features and multi-hot labels use the same lambda, so a mixed label vector keeps the mixed label mass
(sum(y) = lam * sum(y_a) + (1 - lam) * sum(y_b)) and BCE-with-logits trains on soft targets.

`factor` mixed samples are drawn per real sample (the method's ~10x augmentation), each with its own lambda and
partner; the real samples stay in the batch. Nothing here draws from torch's global RNG: pass a seeded
torch.Generator, so a resumed epoch sees the same mixed samples as the uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MixPlan:
    """Which rows to mix and how: mixed row i = lam[i] * x[first[i]] + (1 - lam[i]) * x[second[i]]."""

    lam: torch.Tensor  # [M] float
    first: torch.Tensor  # [M] long
    second: torch.Tensor  # [M] long


def plan_mixup(batch_size: int, alpha: float, factor: int, generator: torch.Generator) -> MixPlan | None:
    """Draw lambdas and partners for `factor` mixed samples per real sample; None when mixup is off."""
    if batch_size < 2 or alpha <= 0 or factor <= 0:
        return None
    first = torch.arange(batch_size).repeat(factor)
    # One independent permutation per round: every real sample is the first parent exactly `factor` times.
    second = torch.cat([torch.randperm(batch_size, generator=generator) for _ in range(factor)])
    lam = _beta(alpha, first.numel(), generator)
    return MixPlan(lam=lam, first=first, second=second)


def _beta(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    # torch.distributions.Beta samples only from torch's global RNG; numpy's Beta takes a seed, drawn here from the
    # caller's generator, and is ~10x faster than forking torch's RNG state for every batch.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n).astype(np.float32))


def apply_mixup(x: torch.Tensor, y: torch.Tensor, plan: MixPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixed samples of `plan` (features and labels with the same lambda), without the real ones."""
    lam = plan.lam.to(device=x.device, dtype=x.dtype).unsqueeze(1)
    first, second = plan.first.to(x.device), plan.second.to(x.device)
    mixed_x = torch.lerp(x[second], x[first], lam)
    mixed_y = torch.lerp(y[second].to(x.dtype), y[first].to(x.dtype), lam)
    return mixed_x, mixed_y


def mixup_batch(
    x: torch.Tensor, y: torch.Tensor, alpha: float, factor: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The real batch followed by `factor` mixed samples per real sample; unchanged when alpha or factor is 0."""
    plan = plan_mixup(x.shape[0], alpha, factor, generator)
    if plan is None:
        return x, y
    mixed_x, mixed_y = apply_mixup(x, y, plan)
    return torch.cat([x, mixed_x]), torch.cat([y.to(x.dtype), mixed_y])
