"""Mixup properties: convex combinations of real pairs, label mass preserved, off switches, determinism."""

from __future__ import annotations

import pytest
import torch

from genre_ray.mixup import apply_mixup, mixup_batch, plan_mixup


def batch(n: int = 12, d: int = 5, g: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=gen)
    y = (torch.rand(n, g, generator=gen) > 0.5).float()
    return x, y


def test_mixed_samples_are_convex_combinations_of_real_pairs() -> None:
    x, y = batch()
    plan = plan_mixup(len(x), alpha=0.4, factor=3, generator=torch.Generator().manual_seed(0))
    assert plan is not None
    mx, my = apply_mixup(x, y, plan)
    assert mx.shape == (3 * len(x), x.shape[1]) and my.shape == (3 * len(x), y.shape[1])
    assert ((plan.lam >= 0) & (plan.lam <= 1)).all()
    lam = plan.lam.unsqueeze(1)
    torch.testing.assert_close(mx, lam * x[plan.first] + (1 - lam) * x[plan.second])
    torch.testing.assert_close(my, lam * y[plan.first] + (1 - lam) * y[plan.second])
    # every real sample is a first parent exactly `factor` times, paired through a fresh permutation each round
    assert torch.bincount(plan.first, minlength=len(x)).tolist() == [3] * len(x)
    assert torch.bincount(plan.second, minlength=len(x)).tolist() == [3] * len(x)


def test_label_mass_is_preserved() -> None:
    x, y = batch()
    plan = plan_mixup(len(x), alpha=1.0, factor=2, generator=torch.Generator().manual_seed(0))
    assert plan is not None
    _, my = apply_mixup(x, y, plan)
    expected = plan.lam * y[plan.first].sum(1) + (1 - plan.lam) * y[plan.second].sum(1)
    torch.testing.assert_close(my.sum(1), expected)
    assert ((my >= 0) & (my <= 1)).all()


def test_mixup_batch_keeps_real_samples_first() -> None:
    x, y = batch()
    out_x, out_y = mixup_batch(x, y, alpha=0.4, factor=10, generator=torch.Generator().manual_seed(0))
    assert out_x.shape[0] == out_y.shape[0] == 11 * len(x)
    torch.testing.assert_close(out_x[: len(x)], x)
    torch.testing.assert_close(out_y[: len(x)], y)


@pytest.mark.parametrize(("alpha", "factor"), [(0.0, 10), (0.4, 0), (0.0, 0)])
def test_off_switches_leave_data_unchanged(alpha: float, factor: int) -> None:
    x, y = batch()
    out_x, out_y = mixup_batch(x, y, alpha=alpha, factor=factor, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out_x, x) and torch.equal(out_y, y)


def test_single_sample_batch_is_not_mixed() -> None:
    x, y = batch(n=1)
    out_x, _ = mixup_batch(x, y, alpha=0.4, factor=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out_x, x)


def test_seeded_generator_is_deterministic_and_leaves_global_rng_alone() -> None:
    x, y = batch()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = mixup_batch(x, y, 0.4, 4, torch.Generator().manual_seed(7))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = mixup_batch(x, y, 0.4, 4, torch.Generator().manual_seed(7))
    c = mixup_batch(x, y, 0.4, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
