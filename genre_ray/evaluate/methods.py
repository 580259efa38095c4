"""The recommenders evaluation compares: baselines, content, collaborative filtering and hybrids.

A *score method* maps a chunk of split users (positions) to a (users, items) score block over the rated movies; a
*list method* builds each user's top lists from other methods' masked blocks (hybrids, MMR). Everything is fitted
on `split.train` only: the held-out events never reach a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from genre_ray.evaluate.protocols import Split
from genre_ray.ranking import Fixed, exact_dot, to_fixed, unit_rows
from genre_ray.recommend import mmr

# (positions of split users) -> (users, items) scores
Scorer = Callable[[np.ndarray], np.ndarray]
# a finite score below anything a method gives: what CF gives a movie it has no interaction of (all tied, last)
UNKNOWN = -1e9


def interactions(train: pd.DataFrame, users: np.ndarray, n_items: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Binary user x item matrix of the training ratings, and the matrix row of each of `users`."""
    all_users = np.union1d(train["user"].to_numpy(), users)
    rows = np.searchsorted(all_users, train["user"].to_numpy())
    x = sp.csr_matrix(
        (np.ones(len(train), dtype=np.float32), (rows, train["item"].to_numpy())), shape=(len(all_users), n_items)
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x, np.searchsorted(all_users, users)


# ---------------------------------------------------------------- baselines


def constant(scores: np.ndarray) -> Scorer:
    """The same scores for every user (popularity, TMDB votes)."""
    row = np.asarray(scores, dtype=np.float64)[None, :]
    return lambda users: np.repeat(row, len(users), axis=0)


def lookahead_free_popularity(split: Split, n_items: int) -> Scorer:
    """Per user, training ratings strictly before their target's time: what popularity could have known then."""
    order = np.argsort(split.train["timestamp"].to_numpy(), kind="stable")
    times = split.train["timestamp"].to_numpy()[order]
    items = split.train["item"].to_numpy(dtype=np.int64)[order]
    before = np.searchsorted(times, split.target_time, side="left")

    def score(users: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(items[: before[u]], minlength=n_items) for u in users]).astype(np.float64)

    return score


def log_scaled(values: np.ndarray, top: float | None = None) -> np.ndarray:
    """log1p scaled to [0, 1] (by `top`, the log1p of the largest value, when given): blends with a cosine."""
    logv = np.log1p(np.maximum(np.asarray(values, dtype=np.float64), 0.0))
    top = float(logv.max()) if top is None else top
    return logv / top if top > 0 else logv


# ---------------------------------------------------------------- content


@dataclass
class Content:
    """cosine(mean of the user's unit history vectors, candidate), blended as (1 - w) cosine + w prior.

    Exact fixed-point dot products (ranking.exact_dot): movies with equal vectors tie exactly, as they should.
    """

    vectors: np.ndarray
    history: list[np.ndarray]
    prior: np.ndarray | None = None
    weight: float = 0.0

    def __post_init__(self) -> None:
        self.unit = unit_rows(self.vectors)
        self.items: Fixed = to_fixed(self.unit)

    def profiles(self, users: np.ndarray) -> np.ndarray:
        # a user with no liked training movie (all of them cold) has the zero profile: every cosine 0, all tied
        zero = np.zeros(self.unit.shape[1])
        return unit_rows(
            np.stack([self.unit[self.history[u]].mean(axis=0) if len(self.history[u]) else zero for u in users])
        )

    def cosine(self, users: np.ndarray) -> np.ndarray:
        return exact_dot(to_fixed(self.profiles(users)), self.items)

    def __call__(self, users: np.ndarray) -> np.ndarray:
        cos = self.cosine(users)
        if self.prior is None or self.weight == 0.0:
            return cos
        return (1.0 - self.weight) * cos + self.weight * self.prior[None, :]


# ---------------------------------------------------------------- collaborative filtering


@dataclass(frozen=True)
class ALSParams:
    factors: int
    regularization: float
    alpha: float
    iterations: int = 15


class ALS:
    """implicit's ALS on the binary training matrix; user x item factor products as scores."""

    def __init__(self, split: Split, n_items: int, params: ALSParams, seed: int):
        from implicit.cpu.als import AlternatingLeastSquares

        x, self.rows = interactions(split.train, split.users, n_items)
        # one thread: the factors are then the same bits on every machine and every run; and no OpenBLAS threads
        # under implicit's own (implicit warns that they oversubscribe the cores)
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=params.factors,
                regularization=params.regularization,
                alpha=params.alpha,
                iterations=params.iterations,
                random_state=seed,
                num_threads=1,
            )
            model.fit(x, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float64)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float64)
        self.known = np.asarray(x.sum(axis=0)).ravel() > 0

    def __call__(self, users: np.ndarray) -> np.ndarray:
        scores = self.user_factors[self.rows[users]] @ self.item_factors.T
        scores[:, ~self.known] = UNKNOWN
        return scores


class EASE:
    """EASE (Steck 2019): B = -P / diag(P), P = (X'X + lambda I)^-1, diag(B) = 0; scores = X_u B."""

    def __init__(self, split: Split, n_items: int, lam: float):
        x, self.rows = interactions(split.train, split.users, n_items)
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += lam
        # the Gram matrix plus lambda I is positive definite: inverting through its Cholesky factor is ~3x fewer
        # flops than np.linalg.inv's LU
        factor, info = lapack.dpotrf(gram, lower=True)
        p, info2 = lapack.dpotri(factor, lower=True)
        if info or info2:
            raise np.linalg.LinAlgError(f"EASE: the regularised Gram matrix is not positive definite (lambda {lam})")
        p = np.tril(p) + np.tril(p, -1).T
        self.b = -p / np.diag(p)[None, :]
        np.fill_diagonal(self.b, 0.0)
        self.x = x
        self.known = np.asarray(x.sum(axis=0)).ravel() > 0

    def __call__(self, users: np.ndarray) -> np.ndarray:
        scores = np.asarray(self.x[self.rows[users]] @ self.b)
        scores[:, ~self.known] = UNKNOWN
        return scores


class ContentToCF:
    """A ridge regression from content features to ALS item factors, fitted on the movies ALS has factors for;
    a movie without interactions is scored with its regressed factors (the DropoutNet / Heater baseline)."""

    def __init__(self, als: ALS, features: np.ndarray, alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)):
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.als = als
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
        reg.fit(features[als.known], als.item_factors[als.known])
        self.factors = als.item_factors.copy()
        self.factors[~als.known] = reg.predict(features[~als.known])

    def __call__(self, users: np.ndarray) -> np.ndarray:
        return self.als.user_factors[self.als.rows[users]] @ self.factors.T


# ---------------------------------------------------------------- list methods


@dataclass(frozen=True)
class ReserveHybrid:
    """CF for warm movies, content for cold ones: the top `reserve` of k slots go to the best cold movies by
    `content`, the rest (and everything after k) to the best warm movies by `cf`."""

    cf: str
    content: str
    cold: np.ndarray  # bool over items
    reserve: int
    k: int

    def lists(self, blocks: dict[str, np.ndarray], candidates: np.ndarray, length: int) -> np.ndarray:
        cold = self.cold[candidates]
        warm_block = np.where(cold[None, :], -np.inf, blocks[self.cf])
        cold_block = np.where(cold[None, :], blocks[self.content], -np.inf)
        warm = top_positions(warm_block, length)
        best_cold = top_positions(cold_block, self.reserve)
        out = np.concatenate([warm[:, : self.k - self.reserve], best_cold, warm[:, self.k - self.reserve :]], axis=1)
        return out[:, :length]


@dataclass(frozen=True)
class MMRRerank:
    """MMR (recommend.mmr, the served re-ranker) over the top pool of a score method, by cosine of `unit`."""

    base: str
    unit: np.ndarray
    lam: float
    pool: int
    k: int

    def lists(self, blocks: dict[str, np.ndarray], candidates: np.ndarray, length: int) -> np.ndarray:
        scores = blocks[self.base]
        ranked = top_positions(scores, max(length, self.pool))
        out = np.empty((len(scores), length), dtype=np.int64)
        for row in range(len(scores)):
            pool = ranked[row, : self.pool]
            pool = pool[np.isfinite(scores[row, pool])]
            order = pool[mmr(scores[row, pool], self.unit[candidates[pool]], self.k, self.lam)]
            rest = ranked[row][~np.isin(ranked[row], order)]
            out[row] = np.concatenate([order, rest])[:length]
        return out


def top_positions(scores: np.ndarray, n: int) -> np.ndarray:
    """Per row, the column positions of the n best scores, best first (ties: lower position first)."""
    n = min(n, scores.shape[1])
    if n == 0:
        return np.zeros((len(scores), 0), dtype=np.int64)
    part = (
        np.argpartition(-scores, n - 1, axis=1)[:, :n]
        if n < scores.shape[1]
        else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    )
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)
