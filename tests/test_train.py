"""Ray Train end to end on a small catalog: 2 workers converge and export; an injected crash resumes from the
latest checkpoint and ends with as many epochs as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from factories import GENRES, catalog_table, clustered_embeddings, write_catalog

from genre_ray.config import Config
from genre_ray.errors import PreconditionError
from genre_ray.layout import RunLayout
from genre_ray.model import load_classifier
from genre_ray.train import (
    TrainResult,
    load_training_table,
    prepare,
    train_classifier,
    train_on_table,
    worker_plan,
)
from genre_ray.train.data import labelled_movies, read_arrays

DIM = 16
EPOCHS = 4
# whatever the session started with (a background CI job ignores SIGINT): training must leave it as it was
SIGINT_BEFORE_TRAINING = signal.getsignal(signal.SIGINT)


def small_config(tmp: Path, **train: object) -> Config:
    base = {
        "hidden_dims": [32],
        "spectrum_dim": 8,
        "epochs": EPOCHS,
        "batch_size": 32,
        "lr": 5e-3,
        "dropout": 0.1,
        "mixup_factor": 2,
        "patience": EPOCHS,
        "num_workers": 2,
        "cpus_per_worker": 0.5,
        "max_failures": 1,
    }
    return Config.model_validate({"workdir": str(tmp), "train": {**base, **train}})


@pytest.fixture(scope="module")
def small_run(ray_session, tmp_path_factory) -> tuple[RunLayout, Config, pa.Table]:
    tmp = tmp_path_factory.mktemp("train")
    layout = RunLayout.of(tmp)
    catalog = catalog_table(240)
    write_catalog(catalog, layout.movies)
    return layout, small_config(tmp), clustered_embeddings(catalog)


@pytest.fixture(scope="module")
def uninterrupted(small_run) -> TrainResult:
    layout, cfg, embeddings = small_run
    return train_classifier(cfg, layout, embeddings)


def test_prepare_excludes_unlabelled_and_learns_vocab_from_train(small_run) -> None:
    layout, cfg, embeddings = small_run
    table = load_training_table(layout, embeddings)
    assert table.num_rows == 240  # the streamed join keeps every labelled movie with an embedding
    genres = table["genres"].to_pylist()
    genres[0] = []  # a movie without genres: excluded from training
    table = table.set_column(table.schema.get_field_index("genres"), "genres", pa.array(genres, pa.list_(pa.string())))
    data = prepare(ray_data(table), cfg)
    assert data.genres == sorted(GENRES)
    assert sum(data.vocab.rows.values()) == 239
    assert all(data.vocab.rows[s] > 0 for s in ("train", "val", "test"))
    x, y, u = read_arrays(data.train)
    assert x.shape == (data.vocab.rows["train"], DIM)
    assert y.shape == (data.vocab.rows["train"], len(GENRES))
    assert (y.sum(axis=1) >= 1).all()
    assert (np.diff(u) > 0).all()  # ordered by the id hash, whatever the block order
    assert y.sum(axis=0).tolist() == data.vocab.train_positives


def test_broadcast_and_hash_joins_give_the_same_rows(ray_session, tmp_path) -> None:
    layout = RunLayout.of(tmp_path)
    catalog = catalog_table(60)
    unlabelled = [i < 3 for i in range(60)]
    genres = [[] if gone else g for gone, g in zip(unlabelled, catalog["genres"].to_pylist(), strict=True)]
    for name, values in (("genres", pa.array(genres, pa.list_(pa.string()))), ("no_genres", pa.array(unlabelled))):
        catalog = catalog.set_column(catalog.schema.get_field_index(name), name, values)
    write_catalog(catalog, layout.movies)
    embeddings = clustered_embeddings(catalog).slice(5)  # movies 0-4 have no embedding yet
    stray = clustered_embeddings(catalog_table(1, seed=7)).set_column(0, "movie_id", pa.array(["gone"]))
    embeddings = pa.concat_tables([embeddings, stray.cast(embeddings.schema)])  # a vector whose movie left

    def joined(broadcast_max_rows: int) -> pa.Table:
        ds = labelled_movies(layout, embeddings, broadcast_max_rows=broadcast_max_rows)
        return pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("movie_id")

    broadcast, hashed = joined(10**9), joined(0)
    assert broadcast.column_names == hashed.column_names == ["movie_id", "genres", "embedding"]
    assert broadcast.num_rows == 55  # 60 - 5 without a vector; the 3 unlabelled are among those 5; no stray
    assert broadcast.to_pylist() == hashed.to_pylist()


def test_val_is_a_bounded_seeded_sample(small_run) -> None:
    layout, cfg, embeddings = small_run
    table = load_training_table(layout, embeddings)
    full = prepare(ray_data(table), cfg)
    capped_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_val_rows": 10})})
    capped = prepare(ray_data(table), capped_cfg)
    n_val = full.vocab.rows["val"]
    assert n_val > 20
    _, _, u_full = read_arrays(full.val)
    _, _, u_capped = read_arrays(capped.val)
    assert 0 < len(u_capped) < n_val
    assert set(u_capped) <= set(u_full)  # a subset of the same val split, not other movies
    _, _, again = read_arrays(prepare(ray_data(table), capped_cfg).val)
    assert again.tolist() == u_capped.tolist()  # seeded: the same sample every time


def test_unusable_labels_fail_with_a_message(small_run) -> None:
    layout, cfg, embeddings = small_run
    table = load_training_table(layout, embeddings)
    one_genre = table.set_column(
        table.schema.get_field_index("genres"), "genres", pa.array([["Drama"]] * table.num_rows, pa.list_(pa.string()))
    )
    with pytest.raises(PreconditionError, match="two or more"):
        prepare(ray_data(one_genre), cfg)
    unlabelled = table.set_column(
        table.schema.get_field_index("genres"), "genres", pa.array([[]] * table.num_rows, pa.list_(pa.string()))
    )
    with pytest.raises(PreconditionError, match="none of the 240 catalog movies has genres"):
        prepare(ray_data(unlabelled), cfg)


def ray_data(table: pa.Table):
    import ray.data

    return ray.data.from_arrow(table)


def test_two_workers_converge_checkpoint_and_export(small_run, uninterrupted: TrainResult) -> None:
    layout, _, _ = small_run
    history = json.loads((layout.model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert uninterrupted.num_workers == 2
    assert len(uninterrupted.worker_nodes) == 2  # one node id per rank, for run.json
    assert uninterrupted.test_metrics["map"] > 0.5  # clustered features: far above chance (~0.2)
    assert list(layout.checkpoints_dir.glob("*/checkpoint_*")), "no checkpoint under the storage path"
    loaded = load_classifier(layout.model_dir)
    assert loaded.model_version == uninterrupted.model_version
    assert loaded.vocab == sorted(GENRES)
    assert loaded.threshold == uninterrupted.threshold
    assert "micro-F1" in uninterrupted.summary()


def _alive_actor_classes() -> list[str]:
    from ray._private.state import state  # the actor table without the dashboard, which tests do not start

    return sorted(a["ActorClassName"] for a in state.actor_table(None).values() if a["State"] == "ALIVE")


def test_a_finished_run_releases_its_controller_and_data_actors(small_run, uninterrupted: TrainResult) -> None:
    # Ray Train's own SIGINT handler held the controller, and through it every train/val block, until the next fit
    assert signal.getsignal(signal.SIGINT) is SIGINT_BEFORE_TRAINING
    deadline = time.monotonic() + 30
    while (held := {"TrainController", "DatasetManager"} & set(_alive_actor_classes())) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not held, f"still alive after fit() returned: {held}"


def test_resume_after_injected_failure_runs_same_epochs(small_run, uninterrupted: TrainResult, tmp_path) -> None:
    _, _, embeddings = small_run
    layout = RunLayout.of(tmp_path)
    write_catalog(catalog_table(240), layout.movies)
    cfg = small_config(tmp_path)
    marker = tmp_path / "failed-once"
    result = train_on_table(
        cfg, layout, load_training_table(layout, embeddings), {"fail_at_epoch": 2, "fail_marker": str(marker)}
    )
    assert sorted(p.name for p in tmp_path.glob("failed-once.rank*")) == ["failed-once.rank0", "failed-once.rank1"]
    assert result.epochs_run == uninterrupted.epochs_run == EPOCHS
    assert [h["epoch"] for h in result.history] == list(range(EPOCHS))


def test_train_seed_retrains_on_the_same_split(small_run, uninterrupted: TrainResult, tmp_path) -> None:
    _, _, embeddings = small_run
    layout = RunLayout.of(tmp_path)
    write_catalog(catalog_table(240), layout.movies)
    result = train_classifier(small_config(tmp_path, seed=7), layout, embeddings)
    assert result.movies == uninterrupted.movies  # the held-out split follows the run's seed, not train.seed
    assert load_classifier(layout.model_dir).split == load_classifier(small_run[0].model_dir).split
    assert result.model_version != uninterrupted.model_version  # other initial weights, shuffles and mixup draws


def test_worker_plan_leaves_cpu_for_the_data_pipeline(ray_session) -> None:
    cfg = Config().train  # the session node: 2 CPUs, no GPU
    workers, resources, use_gpu = worker_plan(cfg, n_train=10_000)
    assert (workers, use_gpu) == (1, False)  # one worker per CPU pair
    assert resources == {"CPU": 0.5}
    assert workers * resources["CPU"] < 2, "workers would reserve every CPU and starve Ray Data"
    # never more workers than full batches
    assert worker_plan(cfg.model_copy(update={"num_workers": 0}), n_train=cfg.batch_size - 1)[0] == 1
    assert worker_plan(cfg.model_copy(update={"num_workers": 3}), n_train=10)[0] == 3


def test_rare_genres_stay_out_of_the_vocabulary(ray_session) -> None:
    ids = [str(i) for i in range(400)]
    # 8 TV movies in 400; every other movie is a comedy too
    genres = [["Drama"] + (["Comedy"] if i % 2 else []) + ([] if i % 50 else ["TV Movie"]) for i in range(400)]
    matrix = np.zeros((400, 4), np.float32)
    table = pa.table(
        {
            "movie_id": ids,
            "genres": pa.array(genres, pa.list_(pa.string())),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), 4),
        }
    )
    keep_all = Config.model_validate({"train": {"min_genre_fraction": 0.0}})
    assert prepare(ray_data(table), keep_all).genres == ["Comedy", "Drama", "TV Movie"]
    # 1% of ~256 training movies is 3 and the ~5 training TV movies pass; 5% (13) drops them
    assert prepare(ray_data(table), Config()).genres == ["Comedy", "Drama", "TV Movie"]
    strict = Config.model_validate({"train": {"min_genre_fraction": 0.05}})
    data = prepare(ray_data(table), strict)
    assert data.genres == ["Comedy", "Drama"]
    _, y, _ = read_arrays(data.train)
    assert y.shape == (data.vocab.rows["train"], 2)  # the TV movies stay, labelled with the genres that remain
    # a one-genre vocabulary cannot make a spectrum: a message saying what to change, not a degenerate model
    only_drama = table.set_column(1, "genres", pa.array([["Drama"]] * 400, pa.list_(pa.string())))
    with pytest.raises(PreconditionError, match=r"1 genre\(s\) with at least 3 of the \d+ training movies"):
        prepare(ray_data(only_drama), Config())
