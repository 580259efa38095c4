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
from genre_ray.evaluate import (
    METHODS,
    Catalog,
    MethodScorer,
    compute_metrics,
    drop_targets,
    evaluate,
    goal,
    join_ratings,
    leave_last_liked_out,
    method_ranks,
    methods,
)
from genre_ray.layout import RunLayout
from genre_ray.metrics import hit_and_ndcg_at_k, hit_and_ndcg_from_counts
from genre_ray.model import ClassifierSpec, GenreClassifier, save_classifier
from genre_ray.ranking import rank_chunks
from genre_ray.store.recall import ann_recall

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
    assert out[["user", "item", "rating", "timestamp"]].values.tolist() == [[1, 1, 2.0, 8], [2, 1, 1.0, 9]]


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
    split = leave_last_liked_out(ratings, n_items=6, like_threshold=4.0)
    assert split.users.tolist() == [1, 2]
    assert split.target.tolist() == [4, 4]
    assert [h.tolist() for h in split.history] == [[0, 2], [0]]
    assert [sorted(s.tolist()) for s in split.seen] == [[0, 1, 2], [0]]
    # item 4 was rated 2x, both times as a target: popularity must not see it
    assert split.train_counts.tolist() == [2, 1, 2, 1, 0, 0]


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
    split = leave_last_liked_out(ratings, n_items=50, like_threshold=4.0)
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
    everything = np.bincount(ratings["item"], minlength=50)
    assert (split.train_counts == everything - np.bincount(split.target, minlength=50)).all()


def test_validation_slice_holds_out_the_second_to_last_like():
    ratings = ratings_frame([(1, 0, 5.0, 1), (1, 1, 5.0, 2), (1, 2, 5.0, 3), (2, 3, 5.0, 1), (2, 4, 5.0, 2)])
    test = leave_last_liked_out(ratings, n_items=5, like_threshold=4.0)
    val = leave_last_liked_out(drop_targets(ratings, test), n_items=5, like_threshold=4.0)
    assert val.users.tolist() == [1]  # user 2 is left with a single like
    assert val.target.tolist() == [1] and val.history[0].tolist() == [0]
    assert val.train_counts[[2, 1]].tolist() == [0, 0]  # neither the test nor the validation target is counted


def tiny_catalog(n: int, seed: int = 0) -> Catalog:
    rng = np.random.default_rng(seed)
    genres = [sorted(rng.choice(GENRES, size=int(rng.integers(1, 3)), replace=False).tolist()) for _ in range(n)]
    return Catalog(
        movie_ids=np.array([str(i) for i in range(n)]),
        titles=[f"m{i}" for i in range(n)],
        genres=genres,
        text=rng.normal(size=(n, 8)).astype(np.float32),
        spectrum=rng.random(size=(n, 4)).astype(np.float32),
        probs=rng.random(size=(n, len(GENRES))),
        vocab=list(GENRES),
        threshold=0.5,
        is_test=rng.random(n) < 0.3,
    )


def candidates_of(ratings: pd.DataFrame, n: int) -> np.ndarray:
    candidates = np.zeros(n, dtype=bool)
    candidates[ratings["item"].unique()] = True
    return candidates


def dense_reference(catalog: Catalog, split, candidates: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The unchunked definition: every user x every item scored at once, exclusions as -inf, HR/NDCG from it."""
    users, items = np.arange(len(split.users)), np.arange(len(catalog.movie_ids))
    out = {}
    for name, scores in MethodScorer(catalog, split, methods(0.3))(users, items).items():
        scores = np.where(candidates[None, :], scores, -np.inf)
        for row, seen in enumerate(split.seen):
            scores[row, seen] = -np.inf
        m = hit_and_ndcg_at_k(scores, split.target, k=10)
        out[name] = (m.hit, m.ndcg)
    return out


def test_every_method_ranks_the_same_candidates():
    catalog = tiny_catalog(50)
    ratings = random_ratings(3)
    split = leave_last_liked_out(ratings, 50, 4.0)
    candidates = candidates_of(ratings, 50)
    counts = method_ranks(catalog, split, candidates, methods(0.3), EvalConfig(chunk_rows=4, chunk_cols=8))
    assert set(counts) == set(METHODS)
    allowed = [candidates.sum() - candidates[seen].sum() for seen in split.seen]
    for m in METHODS:
        assert counts[m].ranked.tolist() == allowed, m
        assert (counts[m].tied >= 1).all() and (counts[m].above + counts[m].tied <= counts[m].ranked).all()


def test_chunked_rankings_equal_the_unchunked_definition():
    """Chunks of 3 users x 7 candidates give exactly the metrics of one dense users x catalog matrix."""
    catalog = tiny_catalog(50, seed=4)
    ratings = random_ratings(5)
    split = leave_last_liked_out(ratings, 50, 4.0)
    candidates = candidates_of(ratings, 50)
    assert len(split.users) > 3 * 4  # several user chunks, the last one partial
    dense = dense_reference(catalog, split, candidates)
    for rows, cols in ((3, 7), (1, 1), (1000, 1000)):
        counts = method_ranks(catalog, split, candidates, methods(0.3), EvalConfig(chunk_rows=rows, chunk_cols=cols))
        for name, c in counts.items():
            got = hit_and_ndcg_from_counts(c.above, c.tied, 10)
            assert got.hit.tolist() == dense[name][0].tolist(), (name, rows, cols)
            assert got.ndcg.tolist() == dense[name][1].tolist(), (name, rows, cols)
    # ties are real here (one-hot genres, popularity counts): the comparison is not vacuous
    assert (method_ranks(catalog, split, candidates, methods(0.3), EvalConfig())["genres_onehot"].tied > 1).any()


def test_a_chunk_never_scores_more_than_chunk_rows_users_or_chunk_cols_candidates():
    catalog = tiny_catalog(50, seed=4)
    ratings = random_ratings(5)
    split = leave_last_liked_out(ratings, 50, 4.0)
    candidates = np.flatnonzero(candidates_of(ratings, 50))
    score = MethodScorer(catalog, split, methods(0.3))
    chunks = list(rank_chunks(score, split.target, split.seen, candidates, rows=4, cols=6))
    assert len(chunks) == -(-len(split.users) // 4)
    assert np.concatenate([c.users for c in chunks]).tolist() == list(range(len(split.users)))
    for c in chunks:
        assert len(c.users) <= 4
        assert c.block_shape[0] <= 4 and c.block_shape[1] <= 6
        assert all(len(v.above) == len(c.users) for v in c.counts.values())


def test_sampled_users_and_coherence_queries_are_seeded_subsets():
    catalog = tiny_catalog(120, seed=6)
    ratings = random_ratings(7, users=60, items=120)
    full = compute_metrics(catalog, ratings, Config())
    sampled_cfg = Config(eval=EvalConfig(max_users=10, coherence_queries=5))
    sampled = compute_metrics(catalog, ratings, sampled_cfg)
    assert sampled == compute_metrics(catalog, ratings, sampled_cfg)  # seeded
    protocol = sampled["recommendation"]["protocol"]
    assert protocol["users"] == 10 and protocol["users_eligible"] == full["recommendation"]["protocol"]["users"] > 10
    coherence = sampled["genres"]["coherence@10"]
    assert coherence["queries"] == 5 and coherence["queries_held_out"] == full["genres"]["coherence@10"]["queries"]
    # the defaults score everyone: no sampling keys in the report
    assert "users_eligible" not in full["recommendation"]["protocol"]


def test_goal_verdicts_carry_the_paired_difference():
    better = goal("a > b", np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0, 0.0]), ">", seed=0)
    assert better["met"] and better["difference"]["mean"] == pytest.approx(0.5)
    assert better["measured"].startswith("0.7500 > 0.2500 (difference +0.5000")
    worse = goal("a >= b", np.zeros(4), np.array([0.0, 1.0, 0.0, 0.0]), ">=", seed=0)
    assert not worse["met"] and worse["measured"].startswith("0.0000 vs 0.2500")
    tie = goal("a >= b", np.zeros(4), np.zeros(4), ">=", seed=0)
    assert tie["met"] and "trivially" in tie["note"]


# ---------------------------------------------------------------- ANN recall


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
        eval=EvalConfig(ratings_path=str(ratings_path), links_path=str(links_path), long_tail_max_ratings=3),
        store=StoreConfig(min_partition_rows=50, index_min_rows=100_000),
    )
    return cfg, layout


def test_evaluate_writes_report_and_is_deterministic(tmp_path: Path):
    cfg, layout = make_run(tmp_path)
    first = evaluate(cfg, layout)
    written = (layout.reports_dir / "metrics.json").read_bytes()
    second = evaluate(cfg, layout)
    assert (layout.reports_dir / "metrics.json").read_bytes() == written
    assert first == second
    metrics = json.loads(written)
    assert [v.split(" ")[0] for v in first["goals"].values()] == [
        "MET" if g["met"] else "NOT" for g in metrics["goals"]
    ]

    recs = metrics["recommendation"]
    assert set(recs["methods"]) == set(METHODS)
    assert recs["protocol"]["users"] == 40
    # genre-structured ratings and embeddings: content beats popularity here, and one-hot genres are near-perfect
    hr = {m: v["all"]["hr@10"]["mean"] for m, v in recs["methods"].items()}
    assert hr["genres_onehot"] > hr["popularity"]
    assert hr["text_embedding"] > hr["popularity"]
    assert metrics["genres"]["coherence@10"]["text_embedding"] > 0.5
    assert metrics["ann"] == {}  # nothing published in this run: said in the report, not a crash
    assert [g["goal"].split(" ")[0] for g in metrics["goals"]] == ["spectrum", "spectrum+popularity", "spectrum"]

    report = (layout.reports_dir / "report.md").read_text()
    for g in metrics["goals"]:
        assert f"| {g['goal']} | {g['measured']} | **{'MET' if g['met'] else 'NOT MET'}**" in report
    for png in ("training_curves.png", "spectrum_map.png", "hr_at_k.png"):
        data = (layout.reports_dir / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000
        assert f"]({png})" in report


@pytest.mark.slow
def test_evaluate_reads_the_published_tables(tmp_path: Path, ray_session):
    from genre_ray.store import publish

    cfg, layout = make_run(tmp_path)
    publish(cfg, layout, run_id="r1")
    evaluate(cfg, layout)
    ann = json.loads((layout.reports_dir / "metrics.json").read_text())["ann"]
    assert sorted(ann) == ["movies_en", "movies_other"]
    assert sum(a["rows"] for a in ann.values()) == 160
    assert all(a["indexed"] is False for a in ann.values())  # below store.index_min_rows: exact search
    assert "movies_en | 120 | no |" in (layout.reports_dir / "report.md").read_text()


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
