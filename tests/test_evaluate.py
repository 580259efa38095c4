"""The evaluation protocol (ratings join, leave-last-liked-out split, shared exclusions) and evaluate() end to end."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from factories import GENRES, catalog_table, write_catalog
from lancedb.index import IvfPq

from genre_ray import schema
from genre_ray.config import Config, EvalConfig, StoreConfig
from genre_ray.embed import embeddings_uri
from genre_ray.errors import PreconditionError
from genre_ray.evaluate import evaluate
from genre_ray.evaluate.protocols import join_ratings, leave_last_liked_out, train_counts, validation_split
from genre_ray.layout import RunLayout
from genre_ray.model import ClassifierSpec, GenreClassifier, save_classifier
from genre_ray.store.recall import ann_recall

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "metrics.schema.json"
EMB_DIM = 16


def ratings_frame(rows: list[tuple[int, int, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


# ---------------------------------------------------------------- ratings join


def test_join_ratings_maps_through_tmdb_ids_and_drops_the_rest():
    ratings = pd.DataFrame(
        {
            "userId": [1, 1, 1, 1, 2],
            "movieId": [10, 20, 30, 40, 10],
            "rating": [4.0, 3.0, 5.0, 2.0, 1.0],
            "timestamp": [5, 6, 7, 8, 9],
        }
    )
    # 20 has no TMDB id, 30 is not in the catalog, 40 shares TMDB id 111 with 10 (a MovieLens duplicate).
    links = pd.DataFrame({"movieId": [10, 20, 30, 40], "tmdbId": [111.0, np.nan, 999.0, 111.0]})
    out = join_ratings(ratings, links, np.array(["050", "111"]))
    assert out.frame[["user", "item", "rating", "timestamp"]].values.tolist() == [[1, 1, 2.0, 8], [2, 1, 1.0, 9]]
    assert (out.ratings_in, out.ratings_joined, out.movies_rated) == (5, 3, 1)
    assert out.join_rate == pytest.approx(3 / 5)


def test_movielens_layout_ids_join_their_own_ratings_without_links():
    ratings = pd.DataFrame(
        {"userId": [1, 1, 2], "movieId": [1, 2, 3], "rating": [5.0, 4.0, 3.0], "timestamp": [1, 2, 3]}
    )
    out = join_ratings(ratings, None, np.array(["ml:1", "ml:3", "tt9"]))
    assert out.frame[["user", "item"]].values.tolist() == [[1, 0], [2, 1]]
    assert out.join_rate == pytest.approx(2 / 3)


def test_no_user_with_two_likes_is_a_message_naming_the_ratings():
    ratings = ratings_frame([(1, 0, 5.0, 1), (2, 1, 2.0, 1)])
    with pytest.raises(PreconditionError, match=r"ratings\.csv: no user has two ratings >= 4\.0"):
        leave_last_liked_out(ratings, 4.0, "ratings.csv")
    single = ratings_frame([(1, 0, 5.0, 1), (1, 1, 5.0, 2)])
    with pytest.raises(PreconditionError, match="the validation slice"):
        validation_split(leave_last_liked_out(single, 4.0), 4.0)


# ---------------------------------------------------------------- leave-last-liked-out


def test_leave_last_liked_out_hand_computed():
    ratings = ratings_frame(
        [
            # user 1: likes 0 (t=1), 2 (t=3), 4 (t=5); dislikes 1 (t=2) and 3 (t=6, after the target)
            (1, 0, 5.0, 1),
            (1, 1, 2.0, 2),
            (1, 2, 4.0, 3),
            (1, 4, 4.5, 5),
            (1, 3, 1.0, 6),
            # user 2: likes 4 and 0 at the same second: the item index breaks the tie, so 4 is the target
            (2, 4, 5.0, 7),
            (2, 0, 5.0, 7),
            # user 3: a single like, no history: left out
            (3, 2, 5.0, 1),
        ]
    )
    split = leave_last_liked_out(ratings, like_threshold=4.0)
    assert split.users.tolist() == [1, 2]
    assert split.target.tolist() == [4, 4]
    assert [h.tolist() for h in split.history] == [[0, 2], [0]]
    # every other rating of the user is masked, the later dislike included
    assert [sorted(s.tolist()) for s in split.seen] == [[0, 1, 2, 3], [0]]
    # item 4 was rated 2x, both times as a target: popularity must not see it
    assert train_counts(split, 6).tolist() == [2, 1, 2, 1, 0, 0]


def random_ratings(seed: int, users: int = 40, items: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        chosen = rng.choice(items, size=int(rng.integers(1, 20)), replace=False)
        for item in chosen:
            # coarse timestamps: many same-second ratings, as in MovieLens bulk imports
            rows.append((u, int(item), float(rng.integers(1, 6)), int(rng.integers(0, 8))))
    return ratings_frame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_has_no_leakage(seed: int):
    ratings = random_ratings(seed)
    split = leave_last_liked_out(ratings, like_threshold=4.0)
    assert len(split.users) > 10
    for u, target, t, history, seen in zip(
        split.users, split.target, split.target_time, split.history, split.seen, strict=True
    ):
        assert target not in history and target not in seen
        assert set(history) <= set(seen)
        mine = ratings[ratings["user"] == u]
        # the target is the last like: no like of this user comes after it
        likes = mine[mine["rating"] >= 4.0]
        assert (likes["timestamp"] <= t).all()
        assert len(history) == len(likes) - 1
        assert len(seen) == len(mine) - 1
    everything = np.bincount(ratings["item"], minlength=50)
    assert (train_counts(split, 50) == everything - np.bincount(split.target, minlength=50)).all()


def test_validation_slice_holds_out_the_second_to_last_like():
    ratings = ratings_frame([(1, 0, 5.0, 1), (1, 1, 5.0, 2), (1, 2, 5.0, 3), (2, 3, 5.0, 1), (2, 4, 5.0, 2)])
    test = leave_last_liked_out(ratings, like_threshold=4.0)
    val = validation_split(test, like_threshold=4.0)
    assert val.users.tolist() == [1]  # user 2 is left with a single like
    assert val.target.tolist() == [1] and val.history[0].tolist() == [0]
    assert train_counts(val, 5)[[2, 1]].tolist() == [0, 0]  # neither the test nor the validation target is counted


def test_ann_recall_indexed_and_flat_tables(tmp_path: Path):
    rng = np.random.default_rng(0)
    n, dim = 600, 16
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    data = pa.table(
        {
            "movie_id": pa.array([str(i) for i in range(n)]),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        }
    )
    db = lancedb.connect(str(tmp_path))
    flat = db.create_table("flat", data.slice(0, 50))
    assert ann_recall(flat, k=5, nprobes=2, refine_factor=5, queries=10, seed=0)["indexed"] is False

    table = db.create_table("indexed", data)
    table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=4, num_sub_vectors=4))
    out = ann_recall(table, k=5, nprobes=4, refine_factor=20, queries=30, seed=0)
    assert out["indexed"] is True and out["queries"] == 30
    # all partitions probed and a generous refine: the re-ranked answer is (nearly) the exact one, PQ alone is not
    assert out["recall@5"] >= 0.9
    assert out["recall@5_no_refine"] <= out["recall@5"]


# ---------------------------------------------------------------- evaluate() end to end


def write_embeddings(catalog: pa.Table, layout: RunLayout) -> np.ndarray:
    """Genre-structured embeddings (genre bases + noise), so content methods have a signal to find."""
    rng = np.random.default_rng(7)
    bases = rng.normal(size=(len(GENRES), EMB_DIM))
    vectors = np.stack([bases[[GENRES.index(g) for g in gs]].mean(axis=0) for gs in catalog["genres"].to_pylist()])
    vectors = (vectors + 0.3 * rng.normal(size=vectors.shape)).astype(np.float32)
    table = pa.table(
        {
            "movie_id": catalog["movie_id"],
            "content_hash": catalog["content_hash"],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), EMB_DIM),
            "encoder_id": pa.array(["test"] * catalog.num_rows),
        },
        schema=schema.embeddings_schema(EMB_DIM),
    )
    uri = embeddings_uri(layout)
    uri.parent.mkdir(parents=True, exist_ok=True)
    lance.write_dataset(table, str(uri))
    return vectors


def write_ratings(catalog: pa.Table, root: Path) -> tuple[Path, Path]:
    """Users who like one genre: they rate its movies high and a few random others low, in time order."""
    rng = np.random.default_rng(11)
    ids = [int(m) for m in catalog["movie_id"].to_pylist()]
    genres = catalog["genres"].to_pylist()
    rows = []
    for user in range(1, 41):
        favourite = GENRES[user % len(GENRES)]
        liked = [i for i, gs in enumerate(genres) if favourite in gs]
        picks = list(rng.choice(liked, size=min(8, len(liked)), replace=False)) + list(rng.choice(len(ids), size=4))
        for t, i in enumerate(rng.permutation(picks)):
            rating = 5.0 if favourite in genres[i] else float(rng.integers(1, 4))
            rows.append((user, i + 1, rating, 1_000 + 10 * t))
    ratings = pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])
    links = pd.DataFrame({"movieId": range(1, len(ids) + 2), "tmdbId": [*ids, np.nan]})
    ratings_path, links_path = root / "ratings.csv", root / "links.csv"
    ratings.to_csv(ratings_path, index=False)
    links.to_csv(links_path, index=False)
    return ratings_path, links_path


def make_run(root: Path) -> tuple[Config, RunLayout]:
    """A finished run without a store: catalog, embeddings, a (random-init) model + history, and ratings."""
    layout = RunLayout.of(root / "run")
    catalog = catalog_table(160, seed=3)
    write_catalog(catalog, layout.movies)
    write_embeddings(catalog, layout)
    torch.manual_seed(0)
    spec = ClassifierSpec(input_dim=EMB_DIM, num_genres=len(GENRES), hidden_dims=[16], spectrum_dim=8)
    save_classifier(GenreClassifier(spec), spec, list(GENRES), layout.model_dir)
    history = [
        {"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "micro_f1": 0.1 * e} for e in range(4)
    ]
    (layout.model_dir / "history.json").write_text(json.dumps(history))
    ratings_path, links_path = write_ratings(catalog, root)
    cfg = Config(
        workdir=str(layout.root),
        eval=EvalConfig(ratings_path=str(ratings_path), links_path=str(links_path), cold_folds=2),
        store=StoreConfig(min_partition_rows=50, index_min_rows=100_000),
    )
    return cfg, layout


def test_evaluate_writes_report_and_is_deterministic(tmp_path: Path):
    import jsonschema

    cfg, layout = make_run(tmp_path)
    first = evaluate(cfg, layout)
    written = (layout.reports_dir / "metrics.json").read_bytes()
    second = evaluate(cfg, layout)
    assert (layout.reports_dir / "metrics.json").read_bytes() == written
    assert first == second
    metrics = json.loads(written)
    jsonschema.validate(metrics, json.loads(SCHEMA.read_text()))

    recs = metrics["recommendation"]
    assert recs["ratings"]["join_rate"] == 1.0
    assert recs["warm"]["users"] == 40
    # genre-structured ratings and embeddings: content beats popularity here, and one-hot genres are near-perfect
    hr = {m: v["hr_at_10"]["mean"] for m, v in recs["warm"]["methods"].items()}
    assert hr["genres_onehot"] > hr["popularity"]
    assert hr["text_embedding"] > hr["popularity"]
    assert metrics["genres"]["coherence@10"]["text_embedding"] > 0.5
    assert metrics["ann"] == {}  # nothing published in this run: said in the report, not a crash
    assert "Goals" not in (report := (layout.reports_dir / "report.md").read_text())
    assert "## Verdict" in report and "## Cold items" in report and "## Long tail" in report
    for png in ("training_curves.png", "spectrum_map.png", "hr_at_k.png", "cold_hybrid_tradeoff.png"):
        data = (layout.reports_dir / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000
        assert f"]({png})" in report
    # the served parameters are written beside the model they were chosen for
    from genre_ray import serving_params

    params = serving_params.read(layout.model_dir, metrics["model_version"])
    assert params is not None and params.chosen_by == "evaluate:spectrum_votes"
    assert params.popularity_weight == recs["serving"]["params"]["popularity_weight"]


def test_ratings_that_join_no_catalog_movie_name_the_file(tmp_path: Path):
    cfg, layout = make_run(tmp_path)
    links = tmp_path / "other_links.csv"
    pd.DataFrame({"movieId": [1, 2], "tmdbId": [10**9, 10**9 + 1]}).to_csv(links, index=False)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"links_path": str(links)})})
    with pytest.raises(PreconditionError, match=r"ratings\.csv: none of its \d+ ratings joins a catalog movie"):
        evaluate(cfg, layout)


@pytest.mark.slow
def test_evaluate_scores_the_served_ranking_as_served_and_the_next_publish_carries_it(tmp_path: Path, ray_session):
    from genre_ray import serving_params
    from genre_ray.evaluate import methods, recommendation
    from genre_ray.evaluate.data import load_catalog
    from genre_ray.evaluate.protocols import rated_catalog_ids
    from genre_ray.evaluate.rank import score_split
    from genre_ray.evaluate.run import read_ratings
    from genre_ray.evaluate.serving import served_top
    from genre_ray.model import load_classifier
    from genre_ray.store import Store, publish

    cfg, layout = make_run(tmp_path)
    publish(cfg, layout, run_id="r1")
    evaluate(cfg, layout)
    metrics = json.loads((layout.reports_dir / "metrics.json").read_text())
    ann = metrics["ann"]
    assert sorted(ann) == ["movies_en", "movies_other"]
    assert all(a["indexed"] is False for a in ann.values())  # below store.index_min_rows: exact search
    assert metrics["recommendation"]["warm"]["methods"]["served"]["users"] == 40

    # The evaluator's served ranking over every published movie equals Recommender.for_user's top 10.
    params = {"popularity_weight": 0.4, "pool_factor": 4, "mmr_lambda": None}
    ratings, links = read_ratings(cfg)
    catalog = load_catalog(layout, load_classifier(layout.model_dir), rated_catalog_ids(ratings, links), cfg)
    joined = join_ratings(ratings, links, catalog.movie_ids)
    manifest = Store(layout.store_dir).manifest()
    prior = methods.log_scaled(catalog.votes, manifest["stats"]["max_log_votes"])
    world = recommendation.World(catalog, catalog.genre_matrix()[0], prior, 4.0, 10, 0, 64)
    split = leave_last_liked_out(joined.frame, 4.0)
    users = np.arange(5)
    few = split.subset(users)
    exact = score_split(
        few,
        np.arange(len(catalog.movie_ids)),
        {"spectrum": methods.Content(catalog.spectrum, few.history)},
        {"served": recommendation.served_rerank(world, params)},
    )["served"].top
    served = served_top(cfg, layout, catalog.movie_ids, split, users, params)
    assert [[str(x) for x in row] for row in catalog.movie_ids[exact]] == served

    # the next publish carries the parameters evaluate chose for this model into the manifest
    publish(cfg, layout, run_id="r2")
    carried = serving_params.from_manifest(Store(layout.store_dir).manifest())
    assert carried == serving_params.read(layout.model_dir, metrics["model_version"])
    assert carried.chosen_by == "evaluate:spectrum_votes"
    # and a reader's defaults (no ranking argument) are then the evaluated ranking
    from genre_ray.recommend import Recommender

    chosen = carried.model_dump()
    exact = score_split(
        few,
        np.arange(len(catalog.movie_ids)),
        {"spectrum": methods.Content(catalog.spectrum, few.history)},
        {"served": recommendation.served_rerank(world, chosen)},
    )["served"].top
    rec = Recommender(cfg, layout)
    for u in users:
        history = [str(x) for x in catalog.movie_ids[split.history[u]]]
        seen = [str(x) for x in catalog.movie_ids[split.seen[u]]]
        got = [r.movie_id for r in rec.for_user(history, exclude_ids=seen)]
        assert got == [str(x) for x in catalog.movie_ids[exact[u]]]


def test_evaluate_scores_the_split_the_model_was_trained_on(tmp_path: Path):
    """--set seed=1 at evaluate time must not move the held-out movies: the model artifact records its split."""
    from genre_ray.split import split_of

    cfg, layout = make_run(tmp_path)
    torch.manual_seed(0)
    spec = ClassifierSpec(input_dim=EMB_DIM, num_genres=len(GENRES), hidden_dims=[16], spectrum_dim=8)
    trained_on = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    save_classifier(GenreClassifier(spec), spec, list(GENRES), layout.model_dir, split=trained_on)
    other_seed = cfg.model_copy(update={"seed": 1})

    evaluate(other_seed, layout)
    metrics = json.loads((layout.reports_dir / "metrics.json").read_text())
    assert metrics["split"] == trained_on
    ids = catalog_table(160, seed=3)["movie_id"].to_pylist()
    held_out = sum(split_of(m, 0, 0.2) == "test" for m in ids)
    assert held_out != sum(split_of(m, 1, 0.2) == "test" for m in ids)  # the seeds do disagree on this catalog
    assert metrics["catalog"]["held_out"] == held_out
