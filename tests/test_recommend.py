"""Recommendations over a real published store: lookups, exactness across tables, filters, blend, MMR, output."""

from __future__ import annotations

import numpy as np
import pytest
from factories import GENRES, catalog_table
from test_store import embeddings_for, make_run

from genre_ray.recommend import MovieNotFound, Recommender, format_results, mmr
from genre_ray.store import Filters, Store, publish

N = 80


@pytest.fixture(scope="module")
def rec(ray_session, tmp_path_factory) -> Recommender:
    catalog = catalog_table(N)
    cfg, layout = make_run(tmp_path_factory.mktemp("rec"), catalog, min_partition_rows=25)
    publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    return Recommender(cfg, layout)


def _all_rows(store: Store) -> tuple[list[str], np.ndarray, list[dict]]:
    table = store.scan(["movie_id", "vector", "language", "year", "votes"])
    x = np.asarray(table["vector"].to_pylist(), dtype=np.float32)
    return table["movie_id"].to_pylist(), x / np.linalg.norm(x, axis=1, keepdims=True), table.to_pylist()


def _exact(store: Store, query: np.ndarray, k: int, keep=lambda row: True) -> list[str]:
    ids, x, rows = _all_rows(store)
    sims = x @ (query / np.linalg.norm(query))
    order = [i for i in np.argsort(-sims, kind="stable") if keep(rows[i])]
    return [ids[i] for i in order[:k]]


def test_similar_matches_exact_search_across_partition_tables(rec):
    assert len(rec.store.open_tables()) == 2  # en + catch-all: the query merges both
    query = rec.resolve("1003")
    got = rec.similar("1003", k=10)
    want = _exact(rec.store, np.asarray(query["vector"]), 10, keep=lambda r: r["movie_id"] != "1003")
    assert [r.movie_id for r in got] == want
    assert {r.language for r in got} == {"en", "fr"}
    scores = [r.score for r in got]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)


def test_title_lookup_is_case_insensitive_and_errors_list_close_matches(rec):
    assert [r.movie_id for r in rec.similar("mOvIe 3", k=5)] == [r.movie_id for r in rec.similar("1003", k=5)]
    with pytest.raises(MovieNotFound, match=r"'Movie 3x'.*close matches: 'Movie 3'"):
        rec.similar("Movie 3x")


def test_filters_route_and_restrict(rec):
    assert rec.store.route(Filters(language="fr")) == ["movies_other"]
    fr = rec.similar("1003", k=5, language="fr")
    assert len(fr) == 5 and {r.language for r in fr} == {"fr"}
    years = rec.similar("1003", k=5, year_range=(1990, 1995))
    assert years and all(1990 <= r.year <= 1995 for r in years)
    plain = [r.movie_id for r in rec.similar("1003", k=5)]
    excluded = rec.similar("1003", k=5, exclude_ids=plain[:2])
    assert not {r.movie_id for r in excluded} & set(plain[:2])
    assert [r.movie_id for r in excluded][:3] == plain[2:5]


def test_for_user_excludes_history_and_follows_weights(rec):
    history = ["1001", "1002", "1003"]
    got = rec.for_user(history, k=8)
    assert len(got) == 8 and not {r.movie_id for r in got} & set(history)
    # all the weight on one movie: its neighbours, minus the rest of the history
    one = rec.for_user(history, weights=[0.0, 0.0, 1.0], k=5)
    like_3 = [r.movie_id for r in rec.similar("1003", k=7) if r.movie_id not in history][:5]
    assert [r.movie_id for r in one] == like_3
    with pytest.raises(ValueError, match="2 weights for 3"):
        rec.for_user(history, weights=[1.0, 2.0])


def test_popularity_blend_reorders_by_votes(rec):
    blended = rec.similar("1003", k=10, popularity_weight=1.0)
    votes = {row["movie_id"]: row["votes"] for row in _all_rows(rec.store)[2]}
    got = [votes[r.movie_id] for r in blended]
    assert got == sorted(got, reverse=True)
    assert [r.movie_id for r in rec.similar("1003", k=10, popularity_weight=0.0)] != [r.movie_id for r in blended]


def test_mmr_diversifies(rec):
    _, x, _ = _all_rows(rec.store)
    ids = _all_rows(rec.store)[0]
    vec = {m: x[i] for i, m in enumerate(ids)}

    def redundancy(results) -> float:
        v = np.stack([vec[r.movie_id] for r in results])
        sims = v @ v.T
        return float(sims[np.triu_indices(len(v), 1)].mean())

    plain = rec.similar("1003", k=6)
    assert [r.movie_id for r in rec.similar("1003", k=6, mmr_lambda=1.0)] == [r.movie_id for r in plain]
    diverse = rec.similar("1003", k=6, mmr_lambda=0.3)
    assert redundancy(diverse) < redundancy(plain)


def test_mmr_unit():
    rel = np.array([1.0, 0.99, 0.5])
    v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert mmr(rel, v, 2, lam=1.0) == [0, 1]
    assert mmr(rel, v, 2, lam=0.5) == [0, 2]


def test_results_show_score_and_readable_spectrum(rec):
    results = rec.similar("1003", k=3)
    for r in results:
        assert len(r.spectrum) == 3 and all(g in GENRES for g, _ in r.spectrum)
        assert [p for _, p in r.spectrum] == sorted((p for _, p in r.spectrum), reverse=True)
    text = format_results(results)
    genre, prob = results[0].spectrum[0]
    assert "score" in text.splitlines()[0] and f"{genre} {prob:.2f}" in text
    assert results[0].title in text and f"{results[0].score:.3f}" in text
    assert format_results([]) == "(no results)"
