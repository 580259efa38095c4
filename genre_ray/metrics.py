"""Pure evaluation metrics: ranking (HR@k, NDCG@k), neighbourhood genre coherence, ANN recall, classification.

No I/O and no randomness here, so every function is checked against hand-computed cases in tests/test_metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap
from sklearn.metrics import average_precision_score, f1_score

from genre_ray.ranking import nearest_neighbours, unit_rows


@dataclass(frozen=True)
class RankingMetrics:
    """Per-user hit and NDCG at k; means are taken by the caller so slices (long tail, ...) reuse them."""

    hit: np.ndarray
    ndcg: np.ndarray


def hit_and_ndcg_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> RankingMetrics:
    """HR@k and NDCG@k of one held-out target per row, as expectations over random tie-breaking.

    `scores` is (users, items); an item a user may not be recommended must already be set to -inf. Ties matter:
    a popularity score gives hundreds of items the same count, and breaking them by item index would quietly
    favour whichever items happen to come first. With `above` candidates scoring strictly higher than the target
    and `tied` candidates (target included) scoring equal, the target is equally likely to sit at any position
    above .. above + tied - 1. This is exactly how sklearn's ndcg_score(ignore_ties=False) averages tied gains
    (checked in tests), extended to the hit rate.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(targets))
    target_score = scores[rows, targets]
    if not np.all(np.isfinite(target_score)):
        raise ValueError("a target is excluded from its own candidates (score -inf or nan)")
    above = (scores > target_score[:, None]).sum(axis=1)
    tied = (scores == target_score[:, None]).sum(axis=1)
    return hit_and_ndcg_from_counts(above, tied, k)


def hit_and_ndcg_from_counts(above: np.ndarray, tied: np.ndarray, k: int) -> RankingMetrics:
    """HR@k and NDCG@k from, per user, the candidates scoring above the target and equal to it (target included).

    What hit_and_ndcg_at_k computes from a dense score matrix, for callers that count in blocks (evaluate).
    """
    above = np.asarray(above, dtype=np.int64)
    tied = np.asarray(tied, dtype=np.int64)
    positions = np.arange(k)
    # (users, k): which of the first k positions the target may occupy, each with probability 1 / tied.
    reachable = (positions[None, :] >= above[:, None]) & (positions[None, :] < (above + tied)[:, None])
    discount = 1.0 / np.log2(positions + 2.0)
    hit = reachable.sum(axis=1) / tied
    ndcg = (reachable * discount[None, :]).sum(axis=1) / tied
    return RankingMetrics(hit=hit.astype(np.float64), ndcg=ndcg.astype(np.float64))


def mean_with_ci(values: np.ndarray, seed: int, resamples: int = 2000) -> dict[str, float]:
    """Mean over users with a seeded 95% percentile-bootstrap interval.

    Percentile rather than normal: hit rates near 0 on small slices would get intervals reaching below 0.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan")}
    ci = bootstrap(
        (values,), np.mean, n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed)
    ).confidence_interval
    return {"mean": mean, "ci_low": float(ci.low), "ci_high": float(ci.high)}


def coherence_at_k(
    vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int, rows: int = 256, cols: int = 8192
) -> np.ndarray:
    """Per query: the share of its k cosine-nearest neighbours (itself excluded) sharing at least one label.

    `vectors` (n, d) is the neighbour pool, `labels` (n, g) its multi-hot genres, `queries` indices into the pool.
    A query is excluded from its own neighbours by index, so an exact duplicate of it elsewhere in the catalog
    still counts as a neighbour (it is a different catalog entry); equally similar neighbours are taken in pool
    order. Scanned `rows` queries x `cols` pool movies at a time (ranking.nearest_neighbours), so memory does not
    grow with the pool, and the answer does not depend on the chunk sizes.
    """
    labels = np.asarray(labels, dtype=bool)
    queries = np.asarray(queries, dtype=np.int64)
    unit = unit_rows(vectors)
    shares = []
    for start, neighbours in zip(
        range(0, len(queries), rows), nearest_neighbours(unit, queries, k, rows, cols), strict=True
    ):
        mine = labels[queries[start : start + rows]]
        shares.append((labels[neighbours] & mine[:, None, :]).any(axis=2).mean(axis=1))
    return np.concatenate(shares) if shares else np.zeros(0)


def recall_at_k(approx: list[list[str]], exact: list[list[str]], k: int) -> float:
    """Mean |approx top-k ∩ exact top-k| / k: how much of the exact answer the index returns."""
    if len(approx) != len(exact):
        raise ValueError("approx and exact must have one result list per query")
    if not exact:
        return float("nan")
    hits = [len(set(a[:k]) & set(e[:k])) / min(k, len(e)) for a, e in zip(approx, exact, strict=True) if e]
    return float(np.mean(hits))


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, genres: list[str], threshold: float = 0.5
) -> dict[str, object]:
    """Multi-label genre metrics; genres without a positive in `y_true` are left out of the macro averages.

    A genre with no positive example has no defined recall or average precision, and counting it as 0 (or 1)
    would move macro-F1 / mAP by an amount that depends only on the split, not on the model.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    pred = (np.asarray(probs) >= threshold).astype(np.int64)
    support = y_true.sum(axis=0)
    present = np.flatnonzero(support > 0)
    per_genre_f1 = f1_score(y_true, pred, average=None, zero_division=0)
    return {
        "movies": len(y_true),
        "threshold": threshold,
        "micro_f1": float(f1_score(y_true, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, pred, labels=present, average="macro", zero_division=0)),
        "mAP": float(average_precision_score(y_true[:, present], np.asarray(probs)[:, present], average="macro")),
        "genres_scored": len(present),
        "per_genre": {
            g: {"f1": float(per_genre_f1[i]), "support": int(support[i])}
            for i, g in enumerate(genres)
            if support[i] > 0
        },
    }


def paired_difference(ours: np.ndarray, baseline: np.ndarray, seed: int) -> dict[str, float]:
    """Mean of the per-user difference with its seeded 95% bootstrap interval: both sides on the same users."""
    return mean_with_ci(np.asarray(ours, dtype=np.float64) - np.asarray(baseline, dtype=np.float64), seed)


# ---------------------------------------------------------------- beyond accuracy (top-k lists of item indices)


def aplt(top: np.ndarray, is_tail: np.ndarray) -> float:
    """Average percentage of long tail: the mean share of tail movies in a user's list."""
    return float(is_tail[top].mean()) if top.size else float("nan")


def catalog_coverage(top: np.ndarray, n_candidates: int) -> float:
    """The share of the candidates that appear in at least one user's list."""
    return len(np.unique(top)) / n_candidates if n_candidates else float("nan")


def intra_list_diversity(top: np.ndarray, genres: np.ndarray) -> float:
    """Mean over users of the mean pairwise (1 - cosine) between the one-hot genre vectors of their list."""
    if top.shape[1] < 2:
        return float("nan")
    unit = unit_rows(genres.astype(np.float64))[top]  # (users, k, g)
    sims = np.einsum("ukg,ujg->ukj", unit, unit)
    k = top.shape[1]
    pairs = (sims.sum(axis=(1, 2)) - np.einsum("ukk->u", sims)) / (k * (k - 1))
    return float((1.0 - pairs).mean())


def novelty(top: np.ndarray, counts: np.ndarray, users: int) -> float:
    """Mean self-information -log2((ratings + 1) / (users + 1)) of the recommended movies (higher: less known)."""
    p = (np.asarray(counts, dtype=np.float64) + 1.0) / (users + 1.0)
    return float((-np.log2(np.minimum(p, 1.0)))[top].mean()) if top.size else float("nan")
