"""Metric functions on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score, top_k_accuracy_score

from genre_ray.metrics import (
    classification_metrics,
    coherence_at_k,
    hit_and_ndcg_at_k,
    mean_with_ci,
    recall_at_k,
)

INF = -np.inf


def test_hit_and_ndcg_distinct_scores():
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.1],  # target 0 at rank 1
            [0.9, 0.8, 0.7, 0.1],  # target 2 at rank 3
            [0.9, 0.8, 0.7, 0.1],  # target 3 at rank 4: outside k=3
        ]
    )
    m = hit_and_ndcg_at_k(scores, np.array([0, 2, 3]), k=3)
    np.testing.assert_allclose(m.hit, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(m.ndcg, [1.0, 1.0 / math.log2(4), 0.0])


def test_excluded_items_do_not_take_a_slot():
    # Item 0 outscores the target but the user already rated it: the target moves up to rank 1.
    m = hit_and_ndcg_at_k(np.array([[INF, 0.5, 0.9]]), np.array([1]), k=1)
    assert m.hit[0] == 0.0  # item 2 still ranks above the target
    m = hit_and_ndcg_at_k(np.array([[INF, 0.5, 0.1]]), np.array([1]), k=1)
    assert m.hit[0] == 1.0 and m.ndcg[0] == 1.0


def test_ties_count_as_expected_value_over_random_order():
    # Target tied with 3 others for first place; k=2: it lands in the top 2 with probability 2/4.
    scores = np.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
    m = hit_and_ndcg_at_k(scores, np.array([2]), k=2)
    assert m.hit[0] == pytest.approx(0.5)
    assert m.ndcg[0] == pytest.approx((1.0 + 1.0 / math.log2(3)) / 4)


def test_matches_sklearn_ndcg_and_top_k_accuracy():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(40, 30)).astype(float)  # many ties, like popularity counts
    targets = rng.integers(0, 30, size=40)
    y_true = np.zeros_like(scores)
    y_true[np.arange(40), targets] = 1
    m = hit_and_ndcg_at_k(scores, targets, k=5)
    assert m.ndcg.mean() == pytest.approx(ndcg_score(y_true, scores, k=5, ignore_ties=False))
    # Without ties, HR@k is sklearn's top-k accuracy.
    distinct = rng.permutation(30 * 40).reshape(40, 30).astype(float)
    hr = hit_and_ndcg_at_k(distinct, targets, k=5).hit.mean()
    assert hr == pytest.approx(top_k_accuracy_score(targets, distinct, k=5, labels=np.arange(30)))


def test_excluded_target_is_an_error():
    with pytest.raises(ValueError, match="target"):
        hit_and_ndcg_at_k(np.array([[INF, 1.0]]), np.array([0]), k=1)


def test_coherence_hand_computed():
    # Four movies on a line of angles; genres: A, A, B, A|B.
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.6]])
    labels = np.array([[1, 0], [1, 0], [0, 1], [1, 1]], dtype=bool)
    # Query 0: nearest two (itself excluded) are 1 (shares A) and 3 (shares A) -> 1.0
    # Query 2: nearest two are 3 (shares B) and 1 (A only) -> 0.5
    np.testing.assert_allclose(coherence_at_k(vectors, labels, np.array([0, 2]), k=2), [1.0, 0.5])


def test_coherence_excludes_self_but_not_duplicates():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([[1, 0], [0, 1], [1, 0]], dtype=bool)
    # Movie 1 is an exact duplicate vector of movie 0 with a different genre: it is the nearest neighbour.
    assert coherence_at_k(vectors, labels, np.array([0]), k=1)[0] == 0.0


def test_recall_at_k():
    approx = [["a", "b", "c"], ["x", "y", "z"]]
    exact = [["a", "b", "d"], ["x", "y", "z"]]
    assert recall_at_k(approx, exact, k=3) == pytest.approx((2 / 3 + 1) / 2)


def test_classification_metrics_hand_computed():
    genres = ["A", "B", "C"]
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])  # C has no positive: left out of macro averages
    p = np.array([[0.9, 0.2, 0.7], [0.8, 0.1, 0.0], [0.6, 0.7, 0.0]])
    out = classification_metrics(y, p, genres)
    # predictions: [1,0,1], [1,0,0], [1,1,0] -> TP=3 (A,A,B), FP=2 (C, A), FN=1 (B)
    assert out["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    f1_a, f1_b = 2 * 2 / (2 * 2 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1)
    assert out["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    # AP(A): ranking 0.9(+) 0.8(+) 0.6(-) -> 1.0; AP(B): 0.7(+) 0.2(-) 0.1(+) -> (1 + 2/3) / 2
    assert out["mAP"] == pytest.approx((1.0 + (1 + 2 / 3) / 2) / 2)
    assert set(out["per_genre"]) == {"A", "B"}
    assert out["per_genre"]["A"] == {"f1": pytest.approx(f1_a), "support": 2}


def test_mean_with_ci_is_seeded_and_bounded():
    hits = np.r_[np.ones(3), np.zeros(57)]
    out = mean_with_ci(hits, seed=0)
    assert out["mean"] == pytest.approx(0.05)
    assert 0.0 <= out["ci_low"] < 0.05 < out["ci_high"] <= 1.0  # never below 0, unlike a normal interval
    assert mean_with_ci(hits, seed=0) == out
    assert mean_with_ci(np.zeros(10), seed=0) == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
