"""The methods and protocols on small seeded fixtures with planted structure: collaborative filtering must find a
co-watching signal that content cannot see, and content must find a genre signal on cold movies that CF cannot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from genre_ray.evaluate import methods as m
from genre_ray.evaluate import recommendation as rec
from genre_ray.evaluate.data import Catalog
from genre_ray.evaluate.protocols import cold_folds, head_items, leave_last_liked_out, without_items
from genre_ray.evaluate.rank import score_split
from genre_ray.metrics import aplt, catalog_coverage, intra_list_diversity, novelty

N_ITEMS, N_GENRES, N_CLUSTERS = 300, 3, 30
GENRES = ["Action", "Comedy", "Drama"]


def planted_world(seed: int = 0) -> rec.World:
    """Item i has genre i % 3 (its vectors: that genre's basis plus noise) and co-watch cluster i // 10, so every
    cluster mixes the three genres: content vectors carry the genre and nothing of the cluster."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(N_GENRES, 8))
    genre = np.arange(N_ITEMS) % N_GENRES
    vectors = basis[genre] + 0.2 * rng.normal(size=(N_ITEMS, 8))
    votes = rng.integers(1, 1000, size=N_ITEMS).astype(np.float64)
    catalog = Catalog(
        movie_ids=np.array([f"{i:03d}" for i in range(N_ITEMS)]),
        titles=[f"movie {i}" for i in range(N_ITEMS)],
        genres=[[GENRES[g]] for g in genre],
        votes=votes,
        text=vectors.astype(np.float32),
        spectrum=vectors.astype(np.float32),
        probs=np.eye(N_GENRES)[genre].astype(np.float32),
        vocab=GENRES,
        threshold=0.5,
        is_test=np.zeros(N_ITEMS, dtype=bool),
        in_pool=np.ones(N_ITEMS, dtype=bool),
        catalog_movies=N_ITEMS,
    )
    return rec.World(catalog, catalog.genre_matrix()[0], m.log_scaled(votes), 4.0, 10, seed, 64)


def ratings(group_of_item: np.ndarray, groups: int, users: int, per_user: int, seed: int) -> pd.DataFrame:
    """Each user likes `per_user` random movies of one group (user u: group u % groups), in time order."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        pool = np.flatnonzero(group_of_item == u % groups)
        for t, item in enumerate(rng.choice(pool, size=per_user, replace=False)):
            rows.append((u, int(item), 5.0, t))
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def hr(results: dict, name: str) -> float:
    return float(results[name]["hr_at_10"]["mean"])


def test_cf_finds_the_co_watching_signal_content_cannot():
    world = planted_world()
    test = leave_last_liked_out(ratings(np.arange(N_ITEMS) // 10, N_CLUSTERS, 150, 8, seed=1), 4.0)
    tuned, val = rec.tune(world, test)
    serving = rec.choose_serving(world, val, {})
    block, _ = rec.warm(world, test, tuned, serving)
    methods = block["methods"]
    # a target's cluster holds 10 movies, 7 of them seen: CF puts the other 3 on top; genres spread over clusters
    assert hr(methods, "cf_ease") > 0.9 and hr(methods, "cf_als") > 0.9
    for content in ("spectrum", "text_embedding", "genres_onehot"):
        assert hr(methods, content) < 0.5
        assert methods[content]["vs_baseline"]["hr_at_10_difference"]["ci_high"] < 1.0
    for cf in ("cf_ease", "cf_als"):
        assert methods[cf]["vs_baseline"]["hr_at_10_difference"]["ci_low"] > 0
    assert block["baseline"] in rec.BASELINES


def test_content_finds_the_genre_signal_on_cold_movies_cf_cannot():
    world = planted_world()
    test = leave_last_liked_out(ratings(np.arange(N_ITEMS) % N_GENRES, N_GENRES, 240, 8, seed=2), 4.0)
    tuned, _ = rec.tune(world, test)
    out = rec.cold(world, test, tuned, folds=2)
    cold_only = out["cold_candidates"]["methods"]
    assert out["cold_target_users"] > 20
    # over the cold movies only, a genre profile finds the target's genre (a third of the cold movies); TMDB votes
    # and popularity (no training rating of a cold movie: all tied) cannot
    for content in ("spectrum", "genres_onehot", "content_to_cf_spectrum"):
        assert hr(cold_only, content) > 1.5 * hr(cold_only, "tmdb_votes")
        assert cold_only[content]["vs_baseline"]["hr_at_10_difference"]["ci_low"] > 0
    # CF alone never ranks a cold movie: its cold-target users get no hit
    assert out["split_by_target"]["cf_als"]["cold_target_hr_at_10"] == 0.0
    curve = {p["reserve"]: p for p in out["hybrid"]["tradeoff"]}
    assert curve[0]["cold_target"] == 0.0 and curve[3]["cold_target"] > 0.0
    assert sum(p["chosen"] for p in curve.values()) == 1


def test_cold_folds_make_every_movie_cold_once_and_remove_its_interactions():
    folds = cold_folds(50, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(50))
    assert [len(f) for f in folds] == [10] * 5
    test = leave_last_liked_out(ratings(np.arange(50) % 5, 5, 30, 6, seed=3), 4.0)
    split = without_items(test, folds[0], 4.0)
    assert not np.isin(split.train["item"], folds[0]).any()
    assert all(not np.isin(h, folds[0]).any() for h in split.history)
    assert all(np.array_equal(a, b) for a, b in zip(split.seen, test.seen, strict=True))  # the mask stays


def test_head_holds_the_share_of_interactions_and_beyond_accuracy_metrics():
    counts = np.array([50, 30, 10, 5, 5, 0])
    head = head_items(counts, 0.8)
    assert head.tolist() == [True, True, False, False, False, False]  # 80 of 100 ratings
    top = np.array([[0, 3], [3, 4]])
    assert aplt(top, ~head) == pytest.approx(0.75)
    assert catalog_coverage(top, 6) == pytest.approx(3 / 6)
    genres = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], dtype=bool)
    assert intra_list_diversity(top, genres) == pytest.approx(0.5)  # one list of two genres, one of one
    assert novelty(np.array([[5]]), counts, users=9) == pytest.approx(np.log2(10))


def test_served_rerank_is_the_recommender_formula():
    """ServedRerank ranks a pool of pool_factor * k by cosine, blends votes in, and sorts: the served formula."""
    world = planted_world()
    test = leave_last_liked_out(ratings(np.arange(N_ITEMS) % N_GENRES, N_GENRES, 12, 6, seed=4), 4.0)
    params = {"popularity_weight": 0.5, "pool_factor": 2, "mmr_lambda": None}
    content = m.Content(world.catalog.spectrum, test.history)
    got = score_split(test, np.arange(N_ITEMS), {"spectrum": content}, {"s": rec.served_rerank(world, params)})
    cos = content(np.arange(len(test)))
    for u in range(len(test)):
        cos[u, test.seen[u]] = -np.inf
        pool = np.argsort(-cos[u], kind="stable")[:20]
        blended = 0.5 * cos[u, pool] + 0.5 * world.votes_prior[pool]
        assert got["s"].top[u].tolist() == pool[np.argsort(-blended, kind="stable")][:10].tolist()
