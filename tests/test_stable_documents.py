"""Stable documents: a nightly refresh of every movie's votes and rating, on real TMDB rows through real ingest,
the embed stage's own diff and a real LanceDB publish, re-embeds nothing and serves the new votes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from genre_ray import schema
from genre_ray.catalog import ingest, read_catalog
from genre_ray.config import DEFAULT_CATALOG, Config, StoreConfig, TextConfig
from genre_ray.embed import embed_catalog, embeddings_uri
from genre_ray.embed.rebuild import rebuild_notice
from genre_ray.encoder import encoder_dim, encoder_id_for
from genre_ray.layout import RunLayout
from genre_ray.model import ClassifierSpec, GenreClassifier, save_classifier
from genre_ray.store import Store, publish
from genre_ray.text import DocumentBuilder

ROWS = 300


def _tmdb_head(dst: Path) -> list[dict[str, str]]:
    with DEFAULT_CATALOG.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = [row for _, row in zip(range(ROWS), reader, strict=False)]
    _write(dst, rows)
    return rows


def _write(dst: Path, rows: list[dict[str, str]]) -> None:
    with dst.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _refresh_votes(rows: list[dict[str, str]], seed: int = 0) -> list[dict[str, str]]:
    """Every movie's vote count and average moved by up to +-5%, as a daily refresh from the source would."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        factor = 1 + rng.uniform(-0.05, 0.05, size=2)
        votes = round(int(row["vote_count"]) * factor[0])
        rating = min(10.0, round(float(row["vote_average"]) * factor[1], 1))
        out.append({**row, "vote_count": str(votes), "vote_average": str(rating)})
    return out


def _night_one_embeddings(cfg: Config, layout: RunLayout) -> None:
    """What night 1's embed stage leaves: one vector per (movie, content hash) under the real encoder id. The
    vectors are seeded, not encoded: this test is about what night 2 decides to re-embed, not about MiniLM."""
    catalog = read_catalog(layout, ["movie_id", "content_hash"])
    dim = encoder_dim(cfg.encoder)
    vectors = np.random.default_rng(0).normal(size=(catalog.num_rows, dim)).astype(np.float32)
    table = pa.table(
        {
            "movie_id": catalog["movie_id"],
            "content_hash": catalog["content_hash"],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "encoder_id": pa.array([encoder_id_for(cfg.encoder, "cpu")] * catalog.num_rows),
        },
        schema=schema.embeddings_schema(dim),
    )
    lance.write_dataset(table, str(embeddings_uri(layout)), mode="create")


def _save_model(cfg: Config, layout: RunLayout) -> None:
    import torch

    torch.manual_seed(0)
    spec = ClassifierSpec(input_dim=encoder_dim(cfg.encoder), num_genres=4, hidden_dims=[32], spectrum_dim=8)
    save_classifier(GenreClassifier(spec), spec, ["Action", "Comedy", "Drama", "Horror"], layout.model_dir)


def _served(layout: RunLayout) -> dict[str, dict]:
    rows = Store(layout.store_dir).scan(["movie_id", "votes", "popularity", "content_hash", "vector"]).to_pylist()
    return {r["movie_id"]: r for r in rows}


def test_a_votes_and_rating_refresh_re_embeds_nothing_and_serves_the_new_votes(ray_session, tmp_path):
    source = tmp_path / "tmdb.csv"
    rows = _tmdb_head(source)
    cfg = Config(workdir=str(tmp_path / "run"))
    cfg.catalog.paths = [str(source)]
    cfg.store = StoreConfig(min_partition_rows=50, index_min_rows=100_000, spectrum_actors=1)
    layout = RunLayout.of(cfg.workdir)

    ingest(cfg, layout)
    night_one = read_catalog(layout)
    _night_one_embeddings(cfg, layout)
    _save_model(cfg, layout)
    first = publish(cfg, layout, run_id="night-1")
    assert first.full_rebuild and first.upserted == ROWS
    served_before = _served(layout)

    refreshed = _refresh_votes(rows)
    _write(source, refreshed)
    ingest(cfg, layout)
    night_two = read_catalog(layout)
    new_votes = dict(zip(night_two["movie_id"].to_pylist(), night_two["votes"].to_pylist(), strict=True))
    moved = {m for m, v in new_votes.items() if v != served_before[m]["votes"]}
    assert len(moved) > 0.8 * ROWS  # the refresh really moved (nearly) every movie's votes

    # The documents are the same, so the embed stage's own diff finds nothing to embed (and loads no encoder).
    assert night_two["content_hash"] == night_one["content_hash"]
    embedded = embed_catalog(cfg, layout)
    assert (embedded.docs_embedded, embedded.docs_reused, embedded.mode) == (0, ROWS, "unchanged")

    second = publish(cfg, layout, run_id="night-2")
    assert second.published and not second.full_rebuild
    assert (second.upserted, second.deleted, second.embeddings_read) == (0, 0, 0)
    assert (second.refreshed, second.unchanged) == (len(moved), ROWS - len(moved))

    served_after = _served(layout)
    assert {m: r["votes"] for m, r in served_after.items()} == new_votes
    for movie_id, before in served_before.items():
        after = served_after[movie_id]
        # the spectrum, content hash and popularity are the ones night 1 published: nothing was re-inferred
        assert (after["vector"], after["content_hash"], after["popularity"]) == (
            before["vector"],
            before["content_hash"],
            before["popularity"],
        )
    s = Store(layout.store_dir)
    assert s.manifest()["run_id"] == "night-2"
    # search still answers from the refreshed rows, with their new votes
    hit = s.search(served_after["19995"]["vector"], k=1)
    assert hit["movie_id"].to_pylist() == ["19995"]
    assert s.get(["19995"], ["votes"])["votes"].to_pylist() == [new_votes["19995"]]


@pytest.mark.parametrize("part", ["Rated $rating/10 by $votes viewers.", "Box office: $revenue_text."])
def test_a_document_quoting_a_volatile_number_would_re_embed_on_every_refresh(part):
    # the control for the test above: had the default parts kept these, the same refresh changes the documents
    base = {"title": "Avatar", "rating": 7.2, "votes": 11800, "revenue": 2_787_965_087.0}
    refreshed = {**base, "rating": 7.3, "votes": 12390, "revenue": 2_923_000_000.0}
    with_part = DocumentBuilder(TextConfig(parts=["$title.", part]))
    assert with_part(base) != with_part(refreshed)
    default = DocumentBuilder(TextConfig())
    assert default(base) == default(refreshed)
    assert part not in TextConfig().parts


def _stored(tmp_path: Path, dim: int, encoder: str) -> lance.LanceDataset:
    table = pa.table(
        {
            "movie_id": ["1", "2"],
            "content_hash": ["a", "b"],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * dim, np.float32)), dim),
            "encoder_id": [encoder, encoder],
        },
        schema=schema.embeddings_schema(dim),
    )
    return lance.write_dataset(table, str(tmp_path / f"e-{dim}-{encoder}.lance"), mode="overwrite")


def test_a_full_re_embed_says_how_many_why_and_how_long(tmp_path):
    layout = RunLayout.of(tmp_path)
    out = schema.embeddings_schema(4)
    notice = rebuild_notice(_stored(tmp_path, 4, "enc"), "enc", out, True, 4803, layout)
    assert "4803 movies (2 stored vectors are not reused)" in notice and "every document changed (text.parts" in notice
    assert "no earlier full embed" in notice
    # the rate of the newest full embed this workdir recorded (run.json first, then the history)
    full = {"run_id": "r7", "results": {"embed": {"result": {"mode": "full", "docs_embedded": 600, "seconds": 60}}}}
    nightly = {"run_id": "r8", "results": {"embed": {"result": {"mode": "incremental", "docs_embedded": 3}}}}
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r7.json").write_text(json.dumps(full))
    layout.run_json.write_text(json.dumps(nightly))
    notice = rebuild_notice(_stored(tmp_path, 4, "old"), "enc", out, True, 4803, layout)
    assert "the encoder changed (old -> enc)" in notice and "~8 min at the 10.0 docs/s of full embed run r7" in notice
    notice = rebuild_notice(_stored(tmp_path, 8, "enc"), "enc", out, True, 30, layout)
    assert "the encoder's output changed (fixed_size_list<item: float>[8] -> fixed_size_list" in notice
    assert "~3 s at the 10.0 docs/s" in notice
    assert "embed.incremental is off" in rebuild_notice(_stored(tmp_path, 4, "enc"), "enc", out, False, 2, layout)
