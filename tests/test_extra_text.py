"""A second metadata source joined by id: MovieLens user tags (tags.csv through links.csv) into TMDB documents, on
the real files, with the cut an evaluated run needs and the accounting of how many movies joined."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pytest

from genre_ray.catalog import CatalogError, extra_text, ingest, read_catalog
from genre_ray.catalog.extra_text import per_movie_text
from genre_ray.config import DATA_DIR, DEFAULT_CATALOG, DEFAULT_LINKS, ExtraTextConfig, load_config
from genre_ray.layout import RunLayout

TAGS = DATA_DIR / "movielens-latest-small" / "tags.csv"
TAGS_CFG = ExtraTextConfig(path=str(TAGS), links=str(DEFAULT_LINKS))
INCEPTION = "27205"


def _by_id(table: pa.Table) -> dict[str, dict]:
    return {r["movie_id"]: r for r in table.to_pylist()}


def test_movielens_tags_become_one_row_per_tmdb_movie_most_frequent_first():
    table, report = per_movie_text(TAGS_CFG)
    assert (report.rows_read, report.rows_before_cut) == (3683, 3683)
    assert report.movies_in_source == 1572  # MovieLens movies with a tag
    tags = dict(zip(table["movie_id"].to_pylist(), table["tags"].to_pylist(), strict=True))
    assert len(tags) == report.movies_with_text
    # Inception's 26 tags by 3 users: "thought-provoking" three times, three tags twice, the rest once (abc order)
    assert tags[INCEPTION][:6] == [
        "thought-provoking",
        "dreamlike",
        "philosophy",
        "visually appealing",
        "action",
        "alternate reality",
    ]
    assert len(tags[INCEPTION]) == 20  # max_per_movie of its 21 distinct tags


def test_a_cut_keeps_only_tags_written_before_it():
    cut = 1424140000  # 2015-02-17: Inception's first user had tagged it, the next two had not
    table, report = per_movie_text(TAGS_CFG.model_copy(update={"before": cut}))
    assert report.rows_before_cut < report.rows_read
    tags = dict(zip(table["movie_id"].to_pylist(), table["tags"].to_pylist(), strict=True))
    assert tags[INCEPTION] == ["dreamlike", "surreal", "visually appealing"]


def test_a_missing_source_file_names_the_key_and_path(tmp_path):
    with pytest.raises(CatalogError, match=r"catalog.extra_text.path: .*nope.csv: no such file"):
        per_movie_text(ExtraTextConfig(path=str(tmp_path / "nope.csv")))


def _tmdb_head(dst: Path, rows: int) -> Path:
    with DEFAULT_CATALOG.open(encoding="utf-8", newline="") as f, dst.open("w", encoding="utf-8", newline="") as out:
        reader, writer = csv.reader(f), csv.writer(out)
        for _, record in zip(range(rows + 1), reader, strict=False):
            writer.writerow(record)
    return dst


def _ingest(tmp_path: Path, name: str, source: Path, extra: dict | None) -> tuple[dict, dict[str, dict]]:
    overrides = {"workdir": str(tmp_path / name), "catalog.paths": [str(source)]}
    if extra is not None:
        overrides["catalog.extra_text"] = extra
    cfg = load_config(None, overrides)
    result = ingest(cfg, RunLayout.of(cfg.workdir))
    return result, _by_id(read_catalog(RunLayout.of(cfg.workdir)))


def test_tags_join_into_tmdb_documents_on_real_rows(ray_session, tmp_path, monkeypatch):
    source = _tmdb_head(tmp_path / "tmdb.csv", 300)
    _, plain = _ingest(tmp_path, "plain", source, None)
    result, tagged = _ingest(tmp_path, "tagged", source, {"path": str(TAGS), "links": str(DEFAULT_LINKS)})

    # 70 of the first 300 TMDB movies have MovieLens tags; the accounting says so and counts what was read
    assert result.extra_text["joined"] == 70 == sum(1 for r in tagged.values() if r["tags"])
    assert result.extra_text["rows_read"] == 3683 and result.extra_text["movies_with_text"] >= 70
    assert "extra text joined into 70 movies" in result.summary()
    assert set(tagged) == set(plain)
    for movie_id, row in tagged.items():
        before = plain[movie_id]
        if row["tags"]:
            assert row["document"] == f"{before['document']} Tags: {', '.join(row['tags'])}."
            assert row["content_hash"] != before["content_hash"]
        else:
            # a movie without an entry keeps its document and hash byte for byte
            assert (row["document"], row["content_hash"]) == (before["document"], before["content_hash"])
    assert "Tags: thought-provoking, dreamlike, philosophy" in tagged[INCEPTION]["document"]

    # a missing source fails the ingest naming the key and the file, before anything is written
    with pytest.raises(CatalogError, match=r"catalog.extra_text.links: .*nope.csv: no such file"):
        _ingest(tmp_path, "broken", source, {"path": str(TAGS), "links": str(tmp_path / "nope.csv")})
    assert not RunLayout.of(tmp_path / "broken").movies.exists()

    # a source with more movies than are broadcast is hash-joined on the cluster: the same catalog
    monkeypatch.setattr(extra_text, "BROADCAST_MAX_ROWS", 0)
    hashed_result, hashed = _ingest(tmp_path, "hashed", source, {"path": str(TAGS), "links": str(DEFAULT_LINKS)})
    assert hashed == tagged and hashed_result.extra_text == result.extra_text
