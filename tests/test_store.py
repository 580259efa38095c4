"""Publish into LanceDB: partition routing, atomic manifest switch, incremental nightly runs, rollback, indexes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from factories import GENRES, catalog_table, write_catalog
from lancedb.index import IvfPq

from genre_ray import schema, store
from genre_ray.config import Config, StoreConfig
from genre_ray.embed import embeddings_uri
from genre_ray.layout import RunLayout
from genre_ray.model import ClassifierSpec, GenreClassifier, save_classifier
from genre_ray.store import Filters, PublishResult, Store, ivf_pq_params, publish

EMB_DIM = 16
SPECTRUM_DIM = 8
_BASES = np.random.default_rng(42).normal(size=(len(GENRES), EMB_DIM)).astype(np.float32)


def embeddings_for(catalog: pa.Table) -> pa.Table:
    """A deterministic embedding per (movie, document): genre bases + noise seeded by the content hash."""
    vectors = []
    for genres, h in zip(catalog["genres"].to_pylist(), catalog["content_hash"].to_pylist(), strict=True):
        rng = np.random.default_rng(int(h[:8], 16))
        base = _BASES[[GENRES.index(g) for g in genres]].mean(axis=0) if genres else np.zeros(EMB_DIM)
        vectors.append(base + 0.1 * rng.normal(size=EMB_DIM))
    flat = pa.array(np.asarray(vectors, dtype=np.float32).ravel())
    return pa.table(
        {
            "movie_id": catalog["movie_id"],
            "content_hash": catalog["content_hash"],
            "embedding": pa.FixedSizeListArray.from_arrays(flat, EMB_DIM),
            "encoder_id": pa.array(["test"] * catalog.num_rows),
        },
        schema=schema.embeddings_schema(EMB_DIM),
    )


def save_model(layout: RunLayout, seed: int = 0, spectrum_dim: int = SPECTRUM_DIM) -> str:
    import torch

    torch.manual_seed(seed)
    spec = ClassifierSpec(input_dim=EMB_DIM, num_genres=len(GENRES), hidden_dims=[32], spectrum_dim=spectrum_dim)
    return save_classifier(GenreClassifier(spec), spec, GENRES, layout.model_dir)


def make_run(root: Path, catalog: pa.Table, **store_overrides: object) -> tuple[Config, RunLayout]:
    """A run directory with a catalog and a (random-init) model; min_partition_rows splits en / catch-all."""
    settings = {"min_partition_rows": 15, "index_min_rows": 100_000, "spectrum_actors": 1, **store_overrides}
    cfg = Config(workdir=str(root), store=StoreConfig(**settings))
    layout = RunLayout.of(root)
    write_catalog(catalog, layout.movies)
    save_model(layout)
    return cfg, layout


def rewrite_catalog(layout: RunLayout, catalog: pa.Table) -> None:
    for f in layout.movies.glob("*.parquet"):
        f.unlink()
    write_catalog(catalog, layout.movies)


def edit_overview(catalog: pa.Table, ids: set[str]) -> pa.Table:
    """Change the document (and hence the content hash) of some movies, as a nightly catalog update would."""
    rows = catalog.to_pylist()
    for r in rows:
        if r["movie_id"] in ids:
            r["document"] += " Director's cut."
            r["content_hash"] = hashlib.sha256(r["document"].encode()).hexdigest()[:32]
    return pa.Table.from_pylist(rows, schema=schema.CATALOG)


def ids_in(store_: Store) -> list[str]:
    return sorted(store_.scan(["movie_id"])["movie_id"].to_pylist())


@pytest.fixture(scope="module")
def first_run(ray_session, tmp_path_factory) -> tuple[Config, RunLayout, pa.Table, PublishResult]:
    """One first publish shared by the read-only checks below (a publish costs an actor start)."""
    catalog = catalog_table(40)
    cfg, layout = make_run(tmp_path_factory.mktemp("first"), catalog, index_min_rows=25)
    return cfg, layout, catalog, publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))


def test_partition_routing_and_counts(first_run):
    _, layout, _, result = first_run
    # factories: every 4th movie is French -> 10 fr (< 15: catch-all), 30 en (own table)
    assert result.full_rebuild and result.upserted == 40 and result.rows_total == 40
    assert {n: t["rows"] for n, t in result.tables.items()} == {"movies_en": 30, "movies_other": 10}
    s = Store(layout.store_dir)
    assert s.count() == 40
    tables = s.open_tables()
    assert set(pc.unique(tables["movies_other"].to_arrow()["language"]).to_pylist()) == {"fr"}
    assert s.route(Filters(language="fr")) == ["movies_other"]
    assert s.route(Filters(language="en")) == ["movies_en"]
    assert s.route(Filters(language="xx")) == ["movies_other"]
    assert sorted(s.route(None)) == ["movies_en", "movies_other"]

    served = tables["movies_en"].to_arrow()
    assert served.schema.field("vector").type == pa.list_(pa.float32(), SPECTRUM_DIM)
    assert served.schema.field("genre_probs").type == pa.list_(pa.float32())
    assert all(len(p) == len(GENRES) for p in served["genre_probs"].to_pylist())
    assert s.manifest()["vocab"] == GENRES


def test_index_rule_and_flat_fallback(first_run):
    assert ivf_pq_params(1_000_000, 64) == (1000, 16)
    assert ivf_pq_params(5_000, 32) == (19, 8)
    assert ivf_pq_params(300, 12) == (1, 3)

    _, layout, _, result = first_run
    # index_min_rows=25: en (30 rows) gets IVF-PQ, the catch-all (10 rows) stays flat
    assert result.tables["movies_en"]["indexed"] and not result.tables["movies_other"]["indexed"]
    tables = Store(layout.store_dir).open_tables()

    def indexes(name: str) -> dict[str, str]:
        return {",".join(ix.columns): ix.index_type for ix in tables[name].list_indices()}

    # every served table: B-tree on movie_id and title_key (lookups); vector index only where large enough
    assert indexes("movies_en") == {"movie_id": "BTree", "title_key": "BTree", "vector": "IvfPq"}
    assert indexes("movies_other") == {"movie_id": "BTree", "title_key": "BTree"}
    assert "ivf-pq" in result.summary() and "flat" in result.summary()


def test_same_night_twice_changes_nothing(first_run):
    cfg, layout, catalog, first = first_run
    again = publish(cfg, layout, run_id="r2", embeddings=embeddings_for(catalog))

    assert not again.published and again.upserted == 0 and again.deleted == 0 and again.unchanged == 40
    s = Store(layout.store_dir)
    assert s.manifest()["run_id"] == "r1" and len(s.history()) == 1
    assert {n: t["version"] for n, t in again.tables.items()} == {n: t["version"] for n, t in first.tables.items()}
    assert ids_in(s) == sorted(catalog["movie_id"].to_pylist())  # no duplicates


def test_incremental_upsert_delete_and_partition_move(ray_session, tmp_path):
    catalog = catalog_table(40)
    cfg, layout = make_run(tmp_path, catalog, index_min_rows=25)  # en (30 rows) carries an IVF-PQ index
    first = publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    assert first.tables["movies_en"]["indexed"]

    # Night 2: 3 edited, 2 removed, 4 new, and one English movie relabelled French (moves en -> other).
    bigger = catalog_table(44)
    night = edit_overview(bigger, {"1001", "1002", "1003"})
    night = night.filter(pc.invert(pc.is_in(night["movie_id"], value_set=pa.array(["1005", "1006"]))))
    rows = night.to_pylist()
    for r in rows:
        if r["movie_id"] == "1009":
            r["language"] = "fr"
    night = pa.Table.from_pylist(rows, schema=schema.CATALOG)
    rewrite_catalog(layout, night)
    result = publish(cfg, layout, run_id="r2", embeddings=embeddings_for(night))

    assert (result.upserted, result.deleted, result.unchanged) == (3 + 4 + 1, 2 + 1, 40 - 3 - 2 - 1)
    s = Store(layout.store_dir)
    assert ids_in(s) == sorted(night["movie_id"].to_pylist())
    moved = s.get(["1009"])
    assert moved.num_rows == 1 and moved["language"][0].as_py() == "fr"
    assert s.open_tables()["movies_other"].count_rows(_filter := "movie_id = '1009'") == 1, _filter
    edited = s.get(["1001"], columns=["movie_id"])
    assert edited.num_rows == 1
    # the edited movie carries its new hash, an untouched one its old
    served = dict(zip(*s.scan(["movie_id", "content_hash"]).to_pydict().values(), strict=True))
    expected = dict(zip(night["movie_id"].to_pylist(), night["content_hash"].to_pylist(), strict=True))
    assert served == expected and served["1001"] != catalog["content_hash"][1].as_py()
    # the nightly delta went into the existing index (optimize_indices), which still answers queries
    assert result.tables["movies_en"]["indexed"]
    probe = s.get(["1001"])["vector"][0].as_py()
    assert s.search(probe, 1, Filters(language="en"))["movie_id"][0].as_py() == "1001"


def test_new_model_version_reinfers_everything(ray_session, tmp_path):
    # the retrained model is also narrower: its tables replace the old ones whole, and a rollback gets those back
    catalog = catalog_table(20)
    cfg, layout = make_run(tmp_path, catalog)
    emb = embeddings_for(catalog)
    publish(cfg, layout, run_id="r1", embeddings=emb)
    new_version = save_model(layout, seed=1, spectrum_dim=SPECTRUM_DIM // 2)
    result = publish(cfg, layout, run_id="r2", embeddings=emb)

    assert result.full_rebuild and result.upserted == 20 and result.model_version == new_version
    s = Store(layout.store_dir)
    assert s.count() == 20 and set(s.scan(["model_version"])["model_version"].to_pylist()) == {new_version}
    for tbl in s.open_tables().values():
        assert tbl.schema.field("vector").type == pa.list_(pa.float32(), SPECTRUM_DIM // 2)
    s.rollback()
    for tbl in Store(layout.store_dir).open_tables().values():
        assert tbl.schema.field("vector").type == pa.list_(pa.float32(), SPECTRUM_DIM)


def test_interrupted_run_leaves_readers_on_previous_version(ray_session, tmp_path, monkeypatch):
    catalog = catalog_table(40)
    cfg, layout = make_run(tmp_path, catalog)
    publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    before = ids_in(Store(layout.store_dir))

    night = catalog_table(50)
    night = night.filter(pc.invert(pc.is_in(night["movie_id"], value_set=pa.array(["1000", "1004"]))))
    rewrite_catalog(layout, night)

    def killed(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("killed before the manifest switch")

    monkeypatch.setattr(store.writer, "_commit", killed)
    with pytest.raises(RuntimeError, match="killed"):
        publish(cfg, layout, run_id="r2", embeddings=embeddings_for(night))

    # The tables did move on (new Lance versions were written) ...
    latest = lancedb.connect(str(layout.store_dir)).open_table("movies_en")
    assert latest.version > Store(layout.store_dir).manifest()["tables"]["movies_en"]["version"]
    # ... but readers still see exactly the previous publish.
    reader = Store(layout.store_dir)
    assert reader.manifest()["run_id"] == "r1" and reader.count() == 40 and ids_in(reader) == before

    monkeypatch.undo()
    result = publish(cfg, layout, run_id="r3", embeddings=embeddings_for(night))
    assert (result.upserted, result.deleted) == (10, 2)
    reader = Store(layout.store_dir)
    assert reader.manifest()["run_id"] == "r3" and ids_in(reader) == sorted(night["movie_id"].to_pylist())


def write_embeddings(layout: RunLayout, catalog: pa.Table) -> None:
    """Where the embed stage keeps its output, so publish reads it through embed.load_embeddings."""
    lance.write_dataset(embeddings_for(catalog), str(embeddings_uri(layout)), mode="overwrite")


def test_rollback_to_previous_publish(ray_session, tmp_path):
    catalog = catalog_table(30)
    cfg, layout = make_run(tmp_path, catalog)
    write_embeddings(layout, catalog)
    publish(cfg, layout, run_id="r1")
    night = catalog_table(36)
    rewrite_catalog(layout, night)
    write_embeddings(layout, night)
    publish(cfg, layout, run_id="r2")

    s = Store(layout.store_dir)
    assert s.count() == 36
    assert s.rollback()["run_id"] == "r1"
    assert Store(layout.store_dir).count() == 30
    with pytest.raises(store.StoreError, match="first publish"):
        s.rollback()
    s.rollback(to="r2")
    assert Store(layout.store_dir).count() == 36
    with pytest.raises(store.StoreError, match="known: r1, r2"):
        s.rollback(to="nope")


def test_missing_embedding_fails_before_any_write(ray_session, tmp_path):
    catalog = catalog_table(20)
    cfg, layout = make_run(tmp_path, catalog)
    emb = embeddings_for(edit_overview(catalog, {"1003"}))  # stale hash for one movie
    with pytest.raises(store.StoreError, match=r"1 catalog movies have no embedding.*1003"):
        publish(cfg, layout, run_id="r1", embeddings=emb)
    assert Store(layout.store_dir).manifest() is None


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_pq_recall_against_exact_search(tmp_path):
    n, dim, k = 5_000, 32, 10
    x = _clustered(n, dim, 50, seed=0)
    queries = _clustered(50, dim, 50, seed=1)
    db = lancedb.connect(str(tmp_path))
    data = pa.table(
        {"movie_id": pa.array([str(i) for i in range(n)]), "vector": pa.FixedSizeListArray.from_arrays(x.ravel(), dim)}
    )
    tbl = db.create_table("t", data)
    partitions, sub_vectors = ivf_pq_params(n, dim)
    tbl.create_index(
        "vector",
        config=IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors),
    )
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :k]
    cfg = StoreConfig()
    hits = 0
    for q, truth in zip(queries, exact, strict=True):
        res = tbl.search(q).distance_type("cosine").nprobes(cfg.nprobes).refine_factor(cfg.refine_factor).limit(k)
        got = {int(i) for i in res.select(["movie_id"]).to_arrow()["movie_id"].to_pylist()}
        hits += len(got & set(truth.tolist()))
    assert hits / (len(queries) * k) >= 0.9


def test_more_than_ten_partition_tables_publish_again(ray_session, tmp_path):
    """LanceDB's deprecated table_names() pages at 10 names: a store with 12 tables must still republish."""
    languages = [f"l{i:02d}" for i in range(12)]
    rows = catalog_table(24).to_pylist()
    for i, r in enumerate(rows):
        r["language"] = languages[i % 12]
    catalog = pa.Table.from_pylist(rows, schema=schema.CATALOG)
    cfg, layout = make_run(tmp_path, catalog, min_partition_rows=2)
    first = publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    assert len(first.tables) == 12

    night = edit_overview(catalog, {"1000", "1011"})
    rewrite_catalog(layout, night)
    second = publish(cfg, layout, run_id="r2", embeddings=embeddings_for(night))
    assert second.published and second.upserted == 2 and len(second.tables) == 12
    assert ids_in(Store(layout.store_dir)) == sorted(catalog["movie_id"].to_pylist())
