"""Bounded-memory, exact scoring behind evaluation: rank counts per user and nearest neighbours per movie.

Evaluation ranks every candidate for every user and finds every held-out movie's neighbours. Done densely that is a
users x catalog matrix (and a full-catalog neighbour index); here it is done in blocks of at most
`rows x cols` scores, so memory stays flat whatever the catalog size, and the result does not depend on the block
sizes.

Why the dot products are exact rather than plain BLAS: HR@k / NDCG@k treat equal scores as ties (an expectation
over a random order), and movies with the same genres, or the same embedding, have mathematically equal scores.
One BLAS matrix product does not give them equal bits: OpenBLAS accumulates an element differently depending on
its position in the block and on the block's shape (measured here: identical columns of one `A @ B.T` differ in the
last bit), so ties split at random and a result would change with the chunk size. `exact_dot` instead splits each
vector into two integer parts of `bits` bits; every partial product sum is an integer below 2**53, which float64
holds exactly in any summation order, so a score depends only on its two vectors (and agrees with the float64
cosine to about 1e-13).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# float64 holds every integer up to 2**53 exactly
_MANTISSA_BITS = 53


@dataclass(frozen=True)
class Fixed:
    """Vectors with entries in [-1, 1] as hi * 2**-bits + lo * 2**-2bits, hi and lo integers (stored as float64)."""

    hi: np.ndarray
    lo: np.ndarray
    bits: int

    def __len__(self) -> int:
        return len(self.hi)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised rows; an all-zero row stays zero (its cosine with anything is 0, not nan)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def fixed_bits(dim: int) -> int:
    """The most bits per part for which a dim-long sum of part products stays below 2**53."""
    return (_MANTISSA_BITS - math.ceil(math.log2(max(dim, 2)))) // 2


def to_fixed(x: np.ndarray) -> Fixed:
    """Unit-length rows (or any entries within [-1, 1]) in two integer parts; rounding is per entry."""
    x = np.asarray(x, dtype=np.float64)
    # a normalised entry can exceed 1 by an ulp; hi is then 2**bits, still inside the bound fixed_bits allows for
    if x.size and np.abs(x).max() > 1.0 + 1e-9:
        raise ValueError("to_fixed needs entries in [-1, 1] (unit vectors)")
    bits = fixed_bits(x.shape[1])
    scale = 2.0**bits
    hi = np.rint(x * scale)
    lo = np.rint((x - hi / scale) * scale * scale)
    return Fixed(hi, lo, bits)


def exact_dot(a: Fixed, b: Fixed) -> np.ndarray:
    """(len(a), len(b)) dot products that depend only on each pair of rows, never on the block around them.

    Three products of integer parts, hi.hi, hi.lo + lo.hi (one product of the concatenated parts) and lo.lo: each
    is a sum of integers below 2**53, exact in float64 whatever order BLAS adds them in. Scaling by a power of two
    is exact, so the only roundings left are the two final additions, the same for every pair of equal vectors.
    """
    if a.bits != b.bits:
        raise ValueError("both sides must use the same fixed-point bits (same dimension)")
    top = a.hi @ b.hi.T
    cross = np.concatenate([a.hi, a.lo], axis=1) @ np.concatenate([b.lo, b.hi], axis=1).T
    low = a.lo @ b.lo.T
    return top * 2.0 ** (-2 * a.bits) + (cross * 2.0 ** (-3 * a.bits) + low * 2.0 ** (-4 * a.bits))


# ---------------------------------------------------------------- rank counts (HR@k, NDCG@k)


@dataclass(frozen=True)
class RankCounts:
    """Per user: candidates scoring strictly above the target, and equal to it (the target included).

    That is all HR@k / NDCG@k with expected-value tie handling need (metrics.hit_and_ndcg_from_counts); a top-k
    list alone would not do, because the number of candidates tied with the target may reach far past k.
    `ranked` is how many candidates each user's ranking held after the exclusions.
    """

    above: np.ndarray
    tied: np.ndarray
    ranked: np.ndarray

    @staticmethod
    def concat(parts: list[RankCounts]) -> RankCounts:
        return RankCounts(
            above=np.concatenate([p.above for p in parts]).astype(np.int64),
            tied=np.concatenate([p.tied for p in parts]).astype(np.int64),
            ranked=np.concatenate([p.ranked for p in parts]).astype(np.int64),
        )


# (user rows of the chunk, candidate items of the block) -> {variant: (users, items) scores}
BlockScorer = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class RankChunk:
    """One chunk's result: which users (positions in the split), their counts per variant, and the largest score
    block built for them (rows, cols), so callers and tests can see the memory bound held."""

    users: np.ndarray
    counts: dict[str, RankCounts]
    block_shape: tuple[int, int]


def rank_chunks(
    score: BlockScorer,
    targets: np.ndarray,
    seen: list[np.ndarray],
    candidates: np.ndarray,
    rows: int,
    cols: int,
) -> Iterator[RankChunk]:
    """Tie-aware rank counts of each user's target among the candidates, `rows` users x `cols` candidates at a time.

    `candidates` are sorted item indices; `seen[u]` the items user u may not be recommended (never its target).
    A score block is built for at most `rows` users and `cols` candidates, so memory is bounded by the chunk
    sizes, not by the numbers of users or movies. `score` must give a (user, item) pair the same value whichever
    block it is in (exact_dot does); the target's own score is taken from a block of the same scorer.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    pos = np.searchsorted(candidates, targets)
    if np.any(pos >= len(candidates)) or np.any(candidates[np.minimum(pos, len(candidates) - 1)] != targets):
        raise ValueError("a target is excluded from its own candidates (not a candidate)")
    for start in range(0, len(targets), rows):
        users = np.arange(start, min(start + rows, len(targets)))
        yield _rank_chunk(score, users, targets[users], [seen[u] for u in users], candidates, cols)


def _rank_chunk(
    score: BlockScorer,
    users: np.ndarray,
    targets: np.ndarray,
    seen: list[np.ndarray],
    candidates: np.ndarray,
    cols: int,
) -> RankChunk:
    n = len(users)
    # The target's score for every variant: the diagonal of the users x targets block.
    own = {name: np.diagonal(s).copy() for name, s in score(users, targets).items()}
    shape = (n, n)
    # Exclusions as (row, candidate position), sorted by position so each block takes one slice.
    row_of, at = _excluded(seen, candidates)
    above = {name: np.zeros(n, dtype=np.int64) for name in own}
    tied = {name: np.zeros(n, dtype=np.int64) for name in own}
    for lo in range(0, len(candidates), cols):
        hi = min(lo + cols, len(candidates))
        first, last = np.searchsorted(at, [lo, hi])
        rows_x, cols_x = row_of[first:last], at[first:last] - lo
        for name, block in score(users, candidates[lo:hi]).items():
            block[rows_x, cols_x] = -np.inf  # the same exclusions for every variant
            t = own[name][:, None]
            above[name] += (block > t).sum(axis=1)
            tied[name] += (block == t).sum(axis=1)
            shape = (max(shape[0], block.shape[0]), max(shape[1], block.shape[1]))
    if any((t == 0).any() for t in tied.values()):
        raise ValueError("a target is excluded from its own candidates (the user has seen it)")
    excluded = np.bincount(row_of, minlength=n)
    ranked = len(candidates) - excluded
    counts = {name: RankCounts(above[name], tied[name], ranked) for name in own}
    return RankChunk(users=users, counts=counts, block_shape=shape)


def _excluded(seen: list[np.ndarray], candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, candidate position) of every seen item that is a candidate, sorted by position (duplicates once)."""
    rows = np.repeat(np.arange(len(seen)), [len(s) for s in seen])
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in seen]) if seen else np.zeros(0, np.int64)
    pos = np.searchsorted(candidates, items)
    hit = (pos < len(candidates)) & (candidates[np.minimum(pos, len(candidates) - 1)] == items)
    pairs = np.unique(np.stack([pos[hit], rows[hit]], axis=1), axis=0)  # sorted by position, then row
    return pairs[:, 1].astype(np.int64), pairs[:, 0].astype(np.int64)


# ---------------------------------------------------------------- nearest neighbours (coherence@k)


def nearest_neighbours(unit: np.ndarray, queries: np.ndarray, k: int, rows: int, cols: int) -> Iterator[np.ndarray]:
    """Per query (an index into `unit`, rows of unit length), the indices of its k most cosine-similar rows, itself
    excluded by index; ties go to the lower index. Yields one (<= rows, k) array per chunk of queries.

    The pool is scanned `cols` rows at a time and a running top-k is kept, so memory is rows x (cols + k)
    whatever the pool size; with exact_dot and index tie-breaking the answer is the same for any chunk sizes.
    """
    if len(unit) <= k:
        raise ValueError(f"need more than k={k} movies in the pool, got {len(unit)}")
    queries = np.asarray(queries, dtype=np.int64)
    for start in range(0, len(queries), rows):
        q = queries[start : start + rows]
        mine = to_fixed(unit[q])
        best_s = np.zeros((len(q), 0))
        best_i = np.zeros((len(q), 0), dtype=np.int64)
        for lo in range(0, len(unit), cols):
            hi = min(lo + cols, len(unit))
            sims = exact_dot(mine, to_fixed(unit[lo:hi]))
            own = (q >= lo) & (q < hi)
            sims[np.flatnonzero(own), q[own] - lo] = -np.inf  # a movie is not its own neighbour
            # Kept ones first: their indices are all lower than this block's, so column order is index order.
            best_s = np.concatenate([best_s, sims], axis=1)
            best_i = np.concatenate([best_i, np.broadcast_to(np.arange(lo, hi), sims.shape)], axis=1)
            if best_s.shape[1] > k:
                take = _top_k_mask(best_s, k)
                best_s = best_s[take].reshape(len(q), k)
                best_i = best_i[take].reshape(len(q), k)
        yield best_i


def _top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, exactly k True: every score above the k-th largest, then equal ones from the left (lower index)."""
    kth = np.partition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k][:, None]
    above = scores > kth
    equal = scores == kth
    room = k - above.sum(axis=1, keepdims=True)
    return above | (equal & (np.cumsum(equal, axis=1) <= room))
