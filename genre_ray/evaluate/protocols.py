"""Ratings on catalog rows and the three protocols' splits: warm (leave-last-liked-out), cold items, long tail.

Every split holds what a method may learn from (`train`, the ratings without the held-out events) and what the
protocol masks (`seen`, every other rating of the user: those are never candidates, for any method alike).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from genre_ray.catalog import MOVIELENS_ID_PREFIX
from genre_ray.errors import PreconditionError

RATING_COLUMNS = ("userId", "movieId", "rating", "timestamp")


@dataclass(frozen=True)
class JoinedRatings:
    """Ratings on catalog rows (columns user, item, rating, timestamp) and how much of the file joined."""

    frame: pd.DataFrame
    ratings_in: int
    ratings_joined: int
    movies_rated: int

    @property
    def join_rate(self) -> float:
        return self.ratings_joined / self.ratings_in if self.ratings_in else 0.0


def rated_catalog_ids(ratings: pd.DataFrame, links: pd.DataFrame | None) -> set[str]:
    """The catalog ids the ratings can join: `ml:<movieId>` (a MovieLens-layout catalog) and, through links.csv,
    the TMDB id (a TMDB catalog)."""
    movies = pd.unique(ratings["movieId"])
    ids = {f"{MOVIELENS_ID_PREFIX}{int(m)}" for m in movies}
    if links is not None:
        linked = links[links["movieId"].isin(movies)].dropna(subset=["tmdbId"])
        ids |= set(linked["tmdbId"].astype("int64").astype(str))
    return ids


def join_ratings(ratings: pd.DataFrame, links: pd.DataFrame | None, movie_ids: np.ndarray) -> JoinedRatings:
    """MovieLens ratings on rows of `movie_ids`: movieId -> `ml:<movieId>` if the catalog has it, else
    movieId -> links.tmdbId -> the catalog's TMDB id. Ratings of movies outside the catalog are dropped. Two
    MovieLens ids can share one TMDB id; a user's repeated rating of the same catalog movie keeps the latest one.
    """
    row_of = pd.Series(np.arange(len(movie_ids)), index=pd.Index(np.asarray(movie_ids, dtype=str)))
    ml_items = (MOVIELENS_ID_PREFIX + ratings["movieId"].astype("int64").astype(str)).map(row_of)
    item = ml_items
    if links is not None:
        links = links.dropna(subset=["tmdbId"])
        by_tmdb = links["tmdbId"].astype("int64").astype(str).map(row_of)
        movie_to_item = pd.Series(by_tmdb.to_numpy(), index=links["movieId"].to_numpy()).dropna()
        movie_to_item = movie_to_item[~movie_to_item.index.duplicated()]
        item = ml_items.fillna(ratings["movieId"].map(movie_to_item))
    out = pd.DataFrame(
        {
            "user": ratings["userId"].to_numpy(dtype=np.int64),
            "item": item.to_numpy(),
            "rating": ratings["rating"].to_numpy(dtype=np.float64),
            "timestamp": ratings["timestamp"].to_numpy(dtype=np.int64),
        }
    ).dropna(subset=["item"])
    out["item"] = out["item"].astype("int64")
    joined = len(out)
    out = out.sort_values(["user", "item", "timestamp"], kind="stable").drop_duplicates(["user", "item"], keep="last")
    out = out.sort_values(["user", "timestamp", "item"], kind="stable").reset_index(drop=True)
    return JoinedRatings(out, len(ratings), joined, int(out["item"].nunique()))


@dataclass(frozen=True)
class Split:
    """One held-out liked movie per user, the ratings a method may train on, and what the protocol masks."""

    users: np.ndarray
    target: np.ndarray
    target_time: np.ndarray
    # the ratings without the held-out events (user, item, rating, timestamp)
    train: pd.DataFrame
    # per split user: their liked training items (content profiles), and every training item (never a candidate)
    history: list[np.ndarray]
    seen: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, rows: np.ndarray) -> Split:
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            users=self.users[rows],
            target=self.target[rows],
            target_time=self.target_time[rows],
            history=[self.history[i] for i in rows],
            seen=[self.seen[i] for i in rows],
        )


def leave_last_liked_out(ratings: pd.DataFrame, like_threshold: float, what: str = "ratings") -> Split:
    """The last liked movie per user (time, then item index, as the tie-break) is held out.

    Users with fewer than two likes have no history to recommend from and are left out. `train` is every other
    rating (other users' later ratings included: the standard leave-one-out protocol); `seen` is every other
    rating of the user, masked from every method's candidates alike.
    """
    r = ratings.sort_values(["user", "timestamp", "item"], kind="stable")
    likes = r[r["rating"] >= like_threshold]
    likes = likes[likes.groupby("user")["item"].transform("size") >= 2]
    if likes.empty:
        raise PreconditionError(
            f"{what}: no user has two ratings >= {like_threshold} on catalog movies, so there is nothing to hold "
            "out (check eval.ratings_path / eval.links_path and eval.like_threshold)"
        )
    last = likes.groupby("user", sort=True).tail(1)
    users = last["user"].to_numpy(dtype=np.int64)
    target = last["item"].to_numpy(dtype=np.int64)
    is_target = pd.MultiIndex.from_frame(r[["user", "item"]]).isin(pd.MultiIndex.from_arrays([users, target]))
    train = r[~is_target].reset_index(drop=True)
    history, seen = _per_user(train, users, like_threshold)
    return Split(users, target, last["timestamp"].to_numpy(dtype=np.int64), train, history, seen)


def _per_user(train: pd.DataFrame, users: np.ndarray, like_threshold: float) -> tuple[list, list]:
    groups = train[train["user"].isin(users)].groupby("user", sort=True)
    items = {u: g["item"].to_numpy(dtype=np.int64) for u, g in groups}
    liked = {u: g.loc[g["rating"] >= like_threshold, "item"].to_numpy(dtype=np.int64) for u, g in groups}
    empty = np.zeros(0, dtype=np.int64)
    return [liked.get(u, empty) for u in users], [items.get(u, empty) for u in users]


def validation_split(test: Split, like_threshold: float) -> Split:
    """Each user's second-to-last like, from the ratings with the test targets removed: tuning on it cannot see a
    test answer."""
    return leave_last_liked_out(test.train, like_threshold, "the validation slice (test targets removed)")


def sample_users(split: Split, max_users: int | None, seed: int) -> Split:
    """At most `max_users` users (a seeded sample, kept in user order); training data is unchanged."""
    if max_users is None or len(split) <= max_users:
        return split
    return split.subset(np.sort(np.random.default_rng(seed).choice(len(split), size=max_users, replace=False)))


# ---------------------------------------------------------------- cold items


def cold_folds(n_items: int, folds: int, seed: int) -> list[np.ndarray]:
    """A seeded partition of the rated movies into `folds` cold sets: each movie is cold in exactly one fold."""
    order = np.random.default_rng(seed).permutation(n_items)
    return [np.sort(part) for part in np.array_split(order, folds)]


def without_items(split: Split, cold: np.ndarray, like_threshold: float) -> Split:
    """The split with every training interaction of the `cold` movies removed (the ColdRec-style split).

    `seen` is kept: a cold movie the user rated is still not a candidate for them (the protocol's mask, not
    something a method learns from)."""
    is_cold = np.zeros(int(split.train["item"].max()) + 1 if len(split.train) else 0, dtype=bool)
    is_cold[cold[cold < len(is_cold)]] = True
    train = split.train[~is_cold[split.train["item"].to_numpy()]].reset_index(drop=True)
    history, _ = _per_user(train, split.users, like_threshold)
    return replace(split, train=train, history=history)


# ---------------------------------------------------------------- popularity and the long tail


def train_counts(split: Split, n_items: int) -> np.ndarray:
    return np.bincount(split.train["item"].to_numpy(dtype=np.int64), minlength=n_items)


def head_items(counts: np.ndarray, share: float) -> np.ndarray:
    """The most popular movies that together hold `share` of the training interactions (ties by item index)."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    cum = np.cumsum(counts[order])
    n_head = int(np.searchsorted(cum, share * cum[-1]) + 1) if len(cum) and cum[-1] > 0 else 0
    head = np.zeros(len(counts), dtype=bool)
    head[order[:n_head]] = True
    return head
