"""Recommendations over a real published store: lookups, exactness across tables, filters, blend, MMR, output."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from factories import GENRES, catalog_table
from test_store import EMB_DIM, SPECTRUM_DIM, embeddings_for, make_run, rewrite_catalog

from genre_ray import schema, serving_params
from genre_ray.model import ClassifierSpec, GenreClassifier, save_classifier
from genre_ray.recommend import MovieNotFound, Recommender, format_results, mmr
from genre_ray.serving_params import ServingParams
from genre_ray.store import Filters, Store, StoreError, View, publish

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


# ---------------------------------------------------------------- one publish per query (store views)

NEW_GENRES = ["Noir", "Western", "Musical", "Documentary", "War"]


def _relabel(catalog, language: str, first: int):
    rows = catalog.to_pylist()
    for i, r in enumerate(rows):
        r["movie_id"] = str(first + i)
        r["title"] = f"{language} film {i}"
        r["language"] = language
    return pa.Table.from_pylist(rows, schema=schema.CATALOG)


@pytest.fixture(scope="module")
def two_publishes(ray_session, tmp_path_factory):
    """r1: 40 movies in en + catch-all; r2 adds 20 German ones, which get a table of their own. Served: r1 again,
    by a rollback, so a switch to r2 during a query adds a table the query's view does not have."""
    catalog = catalog_table(40)
    cfg, layout = make_run(tmp_path_factory.mktemp("views"), catalog)
    publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    bigger = pa.concat_tables([catalog, _relabel(catalog_table(20, seed=1), "de", 5000)])
    rewrite_catalog(layout, bigger)
    publish(cfg, layout, run_id="r2", embeddings=embeddings_for(bigger))
    Store(layout.store_dir).rollback(to="r1")
    return cfg, layout


def test_a_switch_between_routing_and_search_cannot_mix_publishes(two_publishes, monkeypatch):
    cfg, layout = two_publishes
    rec = Recommender(cfg, layout)
    everything = 100  # more than either publish holds: a query returns its whole publish
    on_r1 = {r.movie_id for r in rec.similar("1003", k=everything)}
    assert len(on_r1) == 39 and rec.view().publish.run_id == "r1"

    route = View.route
    switched = []

    def route_then_switch(view: View, filters: Filters | None) -> list[str]:
        names = route(view, filters)
        if not switched:  # the writer's switch lands after this query routed, before it searched
            switched.append(Store(layout.store_dir).rollback(to="r2")["run_id"])
        return names

    monkeypatch.setattr(View, "route", route_then_switch)
    held = rec.view()
    during = rec.similar("1003", k=everything, view=held)
    assert switched == ["r2"] and Store(layout.store_dir).manifest()["run_id"] == "r2"
    assert {r.movie_id for r in during} == on_r1 and held.publish.run_id == "r1"
    assert rec.refresh().publish.run_id == "r2" and "movies_de" in rec.view().tables
    after = {r.movie_id for r in rec.similar("1003", k=everything)}
    assert len(after) == 59 and after - on_r1 == {str(5000 + i) for i in range(20)}
    assert held.publish.run_id == "r1"  # a view is immutable: the one a request took still names r1
    Store(layout.store_dir).rollback(to="r1")


def test_view_is_checked_on_an_interval_not_per_query(two_publishes):
    _, layout = two_publishes
    store = Store(layout.store_dir, refresh_s=3600)
    first = store.view()
    Store(layout.store_dir).rollback(to="r2" if first.publish.run_id == "r1" else "r1")
    assert store.view() is first  # within the interval: no listing, the same view
    assert store.refresh() is not first and store.view().publish.run_id != first.publish.run_id
    assert store.refresh() is store.view()  # nothing newer: the held view is kept
    Store(layout.store_dir).rollback(to="r1")


def test_a_reader_open_across_a_retrain_shows_the_new_vocabulary(ray_session, tmp_path):
    catalog = catalog_table(30)
    cfg, layout = make_run(tmp_path, catalog)
    publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    rec = Recommender(cfg, layout)
    old = rec.view()
    assert {g for r in rec.similar("1003", k=5) for g, _ in r.spectrum} <= set(GENRES)

    torch.manual_seed(1)
    spec = ClassifierSpec(input_dim=EMB_DIM, num_genres=len(NEW_GENRES), hidden_dims=[32], spectrum_dim=SPECTRUM_DIM)
    save_classifier(GenreClassifier(spec), spec, NEW_GENRES, layout.model_dir)
    publish(cfg, layout, run_id="r2", embeddings=embeddings_for(catalog))

    rec.refresh()
    results = rec.similar("1003", k=5)
    assert rec.view().vocab == tuple(NEW_GENRES) and rec.view().publish.run_id == "r2"
    assert results and all(len(r.spectrum) == 3 and {g for g, _ in r.spectrum} <= set(NEW_GENRES) for r in results)
    # the view taken before the retrain still answers, with the vocabulary of its own publish
    assert {g for r in rec.similar("1003", k=5, view=old) for g, _ in r.spectrum} <= set(GENRES)


def test_a_vocabulary_that_does_not_fit_the_rows_is_an_error_not_a_silent_zip(rec):
    view = rec.view()
    short = View.open(rec.store.db, view.dir, dict(view.manifest) | {"vocab": GENRES[:3]})
    with pytest.raises(StoreError, match="8 genre probabilities for a vocabulary of 3"):
        rec.similar("1003", k=3, view=short)


def test_ranking_defaults_come_from_the_publish_and_arguments_override(rec):
    view = rec.view()
    # nothing was evaluated for this model: the publish serves the config's recommend defaults, and says so
    assert view.params == ServingParams(chosen_by="config")
    chosen = ServingParams(popularity_weight=1.0, pool_factor=2, model_version=view.publish.model_version)
    manifest = dict(view.manifest) | {serving_params.MANIFEST_KEY: serving_params.to_manifest(chosen)}
    tuned = View.open(rec.store.db, view.dir, manifest)
    assert tuned.params == chosen
    by_votes = [r.movie_id for r in rec.similar("1003", k=5, view=tuned)]
    assert by_votes == [r.movie_id for r in rec.similar("1003", k=5, popularity_weight=1.0, pool_factor=2)]
    assert by_votes != [r.movie_id for r in rec.similar("1003", k=5)]
    # an explicit argument beats the publish's choice
    plain = rec.similar("1003", k=5, popularity_weight=0.0, view=tuned)
    assert [r.movie_id for r in plain] == [r.movie_id for r in rec.similar("1003", k=5)]
    # a larger pool lets the blend reach further down the similarity order
    wide = [r.movie_id for r in rec.similar("1003", k=5, popularity_weight=1.0, pool_factor=16)]
    assert wide != by_votes


def test_negative_ids_push_the_profile_away_and_are_never_recommended(rec):
    history = ["1001", "1002"]
    plain = rec.for_user(history, k=10)
    disliked = [plain[0].movie_id, plain[1].movie_id]
    pushed = rec.for_user(history, k=10, negative=disliked)
    assert not {r.movie_id for r in pushed} & {*history, *disliked}
    _, x, _ = _all_rows(rec.store)
    ids = _all_rows(rec.store)[0]
    vec = {m: x[i] for i, m in enumerate(ids)}
    against = np.mean([vec[m] for m in disliked], axis=0)

    def closeness(results) -> float:
        return float(np.mean([vec[r.movie_id] @ against for r in results]))

    assert closeness(pushed) < closeness([r for r in plain if r.movie_id not in disliked])
