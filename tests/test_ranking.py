"""Exact block scoring and chunked neighbours: the same bits, and the same answers, at any chunk size."""

from __future__ import annotations

import numpy as np
import pytest

from genre_ray.metrics import coherence_at_k
from genre_ray.ranking import exact_dot, fixed_bits, nearest_neighbours, to_fixed, unit_rows


@pytest.mark.parametrize("dim", [4, 20, 384])
def test_exact_dot_is_the_same_in_any_block_and_close_to_float64(dim: int):
    rng = np.random.default_rng(dim)
    a = unit_rows(rng.normal(size=(37, dim)))
    b = unit_rows(rng.normal(size=(101, dim)))
    full = exact_dot(to_fixed(a), to_fixed(b))
    # Blocks at odd offsets and shapes, single rows included: BLAS gives these different bits, exact_dot must not.
    for rows in (slice(0, 1), slice(3, 40), slice(5, 6), slice(0, 37)):
        for cols in (slice(0, 1), slice(17, 18), slice(5, 77), slice(0, 101)):
            block = exact_dot(to_fixed(a[rows]), to_fixed(b[cols]))
            assert np.array_equal(block, full[rows, cols]), (rows, cols)
    np.testing.assert_allclose(full, a @ b.T, rtol=0, atol=1e-13)
    assert dim * 2.0 ** (2 * fixed_bits(dim)) <= 2.0**53  # the integer sums cannot round


def test_identical_vectors_tie_exactly():
    rng = np.random.default_rng(0)
    base = unit_rows(rng.normal(size=(5, 64)))
    items = base[rng.integers(0, 5, size=300)]
    scores = exact_dot(to_fixed(unit_rows(rng.normal(size=(9, 64)))), to_fixed(items))
    for j in range(5):
        same = (items == base[j]).all(axis=1)
        assert (scores[:, same] == scores[:, same][:, :1]).all()


def brute_neighbours(unit: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = exact_dot(to_fixed(unit[queries]), to_fixed(unit))
    sims[np.arange(len(queries)), queries] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(unit)), sims.shape), -sims), axis=1)
    return np.sort(order[:, :k], axis=1)


def test_chunked_neighbours_are_the_brute_force_ones_with_ties_to_the_lower_index():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(60, 8))
    vectors[[10, 20, 30, 40]] = vectors[5]  # five identical movies: ties at the cut-off of k=3
    unit = unit_rows(vectors)
    queries = np.array([5, 10, 40, 0, 59, 33])
    expected = brute_neighbours(unit, queries, k=3)
    assert expected[0].tolist() == [10, 20, 30]  # ties go to the lower index, the query itself excluded
    for rows, cols in ((1, 1), (2, 7), (4, 3), (100, 100)):
        got = np.concatenate(list(nearest_neighbours(unit, queries, 3, rows, cols)))
        assert np.sort(got, axis=1).tolist() == expected.tolist(), (rows, cols)


def test_coherence_does_not_depend_on_the_chunks():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(80, 6)).astype(np.float32)
    labels = rng.random((80, 4)) < 0.3
    queries = np.arange(0, 80, 3)
    reference = coherence_at_k(vectors, labels, queries, k=5)
    for rows, cols in ((1, 1), (3, 11), (1000, 1000)):
        assert coherence_at_k(vectors, labels, queries, 5, rows, cols).tolist() == reference.tolist()


def test_unit_rows_keeps_zero_rows_zero():
    out = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
