"""Documents and content hashes: no label leakage on real catalog rows, template errors, hash properties."""

from __future__ import annotations

import re

import pytest

from genre_ray.catalog.adapters import TMDB, Limits
from genre_ray.catalog.sources import SourceFile, read_records
from genre_ray.config import DEFAULT_CATALOG, TextConfig
from genre_ray.text import DocumentBuilder, TemplateError, content_hash, encoder_id

TMDB_GENRES = {
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Family", "Fantasy", "Foreign",
    "History", "Horror", "Music", "Mystery", "Romance", "Science Fiction", "TV Movie", "Thriller", "War", "Western",
}  # fmt: skip


@pytest.fixture(scope="module")
def tmdb_rows() -> list[dict]:
    """The first 300 movies of the embedded TMDB file, normalised by the real adapter."""
    _, records = read_records(SourceFile(index=0, path=str(DEFAULT_CATALOG), format="csv"))
    limits = Limits(max_overview_chars=20_000, max_title_chars=1_000)
    rows = []
    for rec in records:
        rows.append(TMDB.normalise(rec.values, limits))
        if len(rows) == 300:
            break
    return rows


def _genre_mentions(text: str, genres: list[str]) -> set[str]:
    return {g for g in genres if re.search(rf"\b{re.escape(g)}\b", text, flags=re.IGNORECASE)}


def test_documents_do_not_depend_on_the_labels(tmdb_rows):
    build = DocumentBuilder(TextConfig())
    for row in tmdb_rows:
        doc = build(row)
        # The proof: the document is a function of everything but the labels. Swapping the genre list for any
        # other one (or none) leaves it byte-for-byte identical.
        for other in ([], ["Western", "Documentary"], sorted(TMDB_GENRES)):
            assert build({**row, "genres": other}) == doc
        if len(row["genres"]) > 1:
            assert ", ".join(row["genres"]) not in doc


def test_genre_words_in_documents_come_from_the_overview_not_the_labels(tmdb_rows):
    build = DocumentBuilder(TextConfig())
    for row in tmdb_rows:
        # Studio names are the source's words too ("Pixar Animation Studios"): genre words there are signal.
        without_text = {**row, "overview": None, "tagline": None, "title": "Untitled", "studios": None}
        without_text["original_title"] = None
        # Stripped of free text, no document mentions a genre name: nothing in the template renders labels.
        assert _genre_mentions(build(without_text), sorted(TMDB_GENRES)) == set()


def test_the_leakage_check_would_catch_a_leaking_template(tmdb_rows):
    leaky = DocumentBuilder(TextConfig(parts=["$title.", "Genres: $genres."], include_genres=True))
    avatar = next(r for r in tmdb_rows if r["title"] == "Avatar")
    assert "Genres: Action, Adventure, Fantasy, Science Fiction." in leaky(avatar)
    assert leaky({**avatar, "genres": ["Western"]}) != leaky(avatar)


@pytest.mark.parametrize("part", ["Genres: $genres.", "Genres: ${genres}.", "$title is a $genres film"])
def test_templates_that_use_labels_are_refused(part):
    with pytest.raises(TemplateError, match=r"\['genres'\].*include_genres"):
        DocumentBuilder(TextConfig(parts=["$title.", part]))


def test_parts_with_missing_fields_are_left_out():
    build = DocumentBuilder(TextConfig(parts=["$title ($year).", "$overview", "Rated $rating/10 by $votes viewers."]))
    row = {"title": "Heat", "year": 1995, "overview": "  A   heist.\n", "rating": 7.7, "votes": None}
    assert build(row) == "Heat (1995). A heist."
    assert build({**row, "votes": 6000}) == "Heat (1995). A heist. Rated 7.7/10 by 6000 viewers."


def test_template_text_is_data_never_code():
    build = DocumentBuilder(TextConfig(parts=["$title", "$overview"]))
    row = {"title": "{0.__class__}", "overview": "$title ${overview} {row}"}
    # Neither str.format nor a second substitution pass touches catalog text.
    assert build(row) == "{0.__class__} $title ${overview} {row}"


def test_content_hash_changes_with_the_document_and_the_encoder():
    enc = encoder_id("minilm", 256, "mean", True)
    base = content_hash("Avatar (2009).", enc)
    assert base == content_hash("Avatar (2009).", enc) and re.fullmatch(r"[0-9a-f]{32}", base)
    assert content_hash("Avatar (2010).", enc) != base
    for other in (
        encoder_id("other-model", 256, "mean", True),
        encoder_id("minilm", 128, "mean", True),
        encoder_id("minilm", 256, "cls", True),
        encoder_id("minilm", 256, "mean", False),
    ):
        assert other != enc and content_hash("Avatar (2009).", other) != base
    # The separator keeps (encoder, document) pairs apart that plain concatenation would merge.
    assert content_hash("b", "a") != content_hash("", "ab")


def test_templates_with_unknown_fields_are_refused():
    with pytest.raises(TemplateError, match=r"unknown field\(s\) \['overveiw'\]"):
        DocumentBuilder(TextConfig(parts=["$title.", "$overveiw"]))


def test_studios_countries_languages_and_a_different_original_title_render(tmdb_rows):
    build = DocumentBuilder(TextConfig())
    parts = TextConfig(parts=["$title.", "Original title: $original_title_text.", "Studios: $studios."])
    build_few = DocumentBuilder(parts)
    amelie = {"title": "Amélie", "original_title": "Le Fabuleux Destin d'Amélie Poulain", "studios": ["UGC"]}
    assert build_few(amelie) == "Amélie. Original title: Le Fabuleux Destin d'Amélie Poulain. Studios: UGC."
    # the same title in other case or spacing is not a second title
    assert build_few({**amelie, "original_title": " amélie "}) == "Amélie. Studios: UGC."
    with_other = [r for r in tmdb_rows if r["original_title"] != r["title"]]
    assert with_other, "the first 300 TMDB movies include films released under another title"
    for row in tmdb_rows:
        doc = build(row)
        assert ("Original title: " in doc) == (row in with_other)
        for field, label in (("studios", "Studios"), ("countries", "Countries"), ("spoken_languages", "Spoken")):
            if row[field]:
                assert f"{label}" in doc and row[field][0] in doc
            else:
                assert f"{label}" not in doc
