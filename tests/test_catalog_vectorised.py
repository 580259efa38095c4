"""The vectorised parser (catalog.vectorised) against the per-row reference: the same rows, every column, the same
rejects, field warnings and accounting, on the real catalogs, the defect fixtures and values chosen to sit on each
edge of what the kernels take themselves. Plain Python (parse_file, no Ray): the stage around it is shared."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genre_ray.catalog import stage
from genre_ray.catalog.adapters import Limits
from genre_ray.catalog.sources import SourceFile, format_of, read_records
from genre_ray.catalog.stage import parse_file
from genre_ray.catalog.vectorised import VectorParser
from genre_ray.config import REPO_ROOT, Config
from genre_ray.synthetic import synthesize, write
from genre_ray.text import DocumentBuilder

DATA = Path(__file__).parent / "data"
TMDB = REPO_ROOT / "data" / "tmdb-5000" / "tmdb_5000_movies.csv"
MOVIELENS = REPO_ROOT / "data" / "movielens-latest-small" / "movies.csv"
HEADER = (
    "id,title,genres,release_date,original_language,overview,tagline,vote_average,vote_count,popularity,budget,"
    "revenue,runtime,production_companies,production_countries,spoken_languages,original_title,keywords"
)
GOOD = {
    "id": "7",
    "title": "Plain",
    "genres": '[{"id": 28, "name": "Action"}, {"id": 12, "name": "Adventure"}]',
    "release_date": "12/10/2009",
    "original_language": "en",
    "overview": "A plain overview.",
    "tagline": "A tagline.",
    "vote_average": "7.2",
    "vote_count": "11800",
    "popularity": "150.437577",
    "budget": "237000000",
    "revenue": "2787965087",
    "runtime": "162",
    "production_companies": '[{"name": "Pixar", "id": 3}]',
    "production_countries": '[{"iso_3166_1": "US", "name": "United States of America"}]',
    "spoken_languages": '[{"iso_639_1": "en", "name": "English"}, {"iso_639_1": "es", "name": "Espa\\u00f1ol"}]',
    "original_title": "Plain",
    "keywords": '[{"id": 1, "name": "heist"}]',
}
# (column, value) pairs, each on its own row of GOOD: the shapes around every fast path
EDGES: list[tuple[str, str]] = [
    ("id", "0042"),
    ("id", " 43"),
    ("id", "44.0"),
    ("id", "1e3"),
    ("id", "123456789012345678901"),
    ("id", "-3"),
    ("id", "tt0499549"),
    ("id", ""),
    ("id", "\u0661\u0662"),  # Arabic-Indic digits: int() reads them, the kernels do not
    ("title", ""),
    ("title", "  padded\u2003title\u00a0 "),
    ("title", "x" * 1001),
    ("title", "Caf\udce9"),
    ("title", "\u00dfig"),
    ("original_title", "PLAIN"),
    ("original_title", "  plain  "),
    ("original_title", "STRASSE"),
    ("original_title", "Stra\u00dfe"),
    ("original_title", "Lumi\u00e8re"),
    ("original_title", ""),
    ("overview", "y" * 20_001),
    ("overview", "tab\tand\nnewline  and\u2028separator"),
    ("overview", "   "),
    ("overview", "bad \udcff byte"),
    ("tagline", "\x1c\x1d"),
    ("tagline", "$title and ${overview}"),
    ("original_language", "EN"),
    ("original_language", " fr "),
    ("original_language", "\u0130t"),
    ("original_language", ""),
    ("release_date", "2009-12-10"),
    ("release_date", "2009-12-10T20:00:00Z"),
    ("release_date", "2/30/2001"),
    ("release_date", "2/29/2000"),
    ("release_date", "2/29/1900"),
    ("release_date", "13/12/1998"),
    ("release_date", "1/1/3020"),
    ("release_date", "1/1/1800"),
    ("release_date", "35958"),
    ("release_date", "1998"),
    ("release_date", "Jun 12 1998"),
    ("release_date", "sometime"),
    ("release_date", " 12/10/2009"),
    ("release_date", ""),
    ("vote_average", "0"),
    ("vote_average", ".5"),
    ("vote_average", "5."),
    ("vote_average", "1e1"),
    ("vote_average", "nan"),
    ("vote_average", "inf"),
    ("vote_average", "-1"),
    ("vote_average", "high"),
    ("vote_average", "0.1000000000000000055511151231257827"),
    ("vote_count", "0"),
    ("vote_count", "12.0"),
    ("vote_count", "1.5"),
    ("vote_count", "abc"),
    ("vote_count", ""),
    ("popularity", "1_000"),
    ("budget", "0"),
    ("budget", "999"),
    ("budget", "2250000000"),
    ("budget", "1234.5"),
    ("budget", "1500000.75"),
    ("revenue", "0"),
    ("runtime", "0"),
    ("runtime", "95.5"),
    ("runtime", "1234567"),
    ("genres", "[]"),
    ("genres", ""),
    ("genres", '["Action", "Drama"]'),
    ("genres", '[{"id": 28, "name": " Action "}, {"id": 28, "name": "Action"}]'),
    ("genres", '[{"id": 28, "name": "  "}]'),
    ("genres", '[{"id": 28, "name": "Sci\\u00e9nce"}]'),
    ("genres", '[{"id": 28, "name": "Action"}'),
    ("genres", '{"name": "Action"}'),
    ("genres", '[{"id":28,"name":"Action"}]'),
    ("genres", '[{"id": 28, "name": "Tab\there"}]'),
    ("genres", '[{"id": 28, "name": "\u00c9pop\u00e9e"}]'),
    ("genres", '[{"id": 28, "name": "Caf\udce9"}]'),
    ("production_companies", '[{"name": "A, B and C", "id": 1}, {"name": "D", "id": 2}]'),
    ("production_companies", '[{"name": "Soci\\u00e9t\\u00e9", "id": 1}]'),
    ("production_countries", "[]"),
    ("spoken_languages", '[{"iso_639_1": "xx", "name": "No Language"}]'),
    ("spoken_languages", '[{"iso_639_1": "cn", "name": "\\u5e7f\\u5dde\\u8bdd"}]'),
    ("spoken_languages", '[{"iso_639_1": "qq", "name": "Klingon"}]'),
    ("spoken_languages", '[{"iso_639_1": "el", "name": ""}, {"iso_639_1": "sw", "name": "Kiswahili"}]'),
    ("spoken_languages", '[{"iso_639_1": "en", "name": "English"}, {"iso_639_1": "en", "name": "English"}]'),
    ("spoken_languages", '[{"iso_639_1": "EN", "name": "English"}]'),
    ("spoken_languages", '{"iso_639_1": "en"}'),
    ("keywords", '[{"id": 1, "name": "a \\"quoted\\" word"}]'),
    ("keywords", "[]"),
]


def outputs(src: Path | str, parser: str, text: dict | None = None, fmt: str | None = None, **catalog: object):
    cfg = Config()
    cfg.catalog.parser = parser
    for key, value in catalog.items():
        setattr(cfg.catalog, key, value)
    for key, value in (text or {}).items():
        setattr(cfg.text, key, value)
    ok, rejects, warnings, report = parse_file(
        SourceFile(3, str(src), fmt or format_of(str(src))), cfg.catalog, cfg.text, "enc|len=256"
    )
    return ok.to_pylist(), rejects.to_pylist(), warnings.to_pylist(), asdict(report)


def assert_same(src: Path | str, **kwargs: object) -> tuple[list, list, list, dict]:
    reference = outputs(src, "reference", **kwargs)
    fast = outputs(src, "vectorised", **kwargs)
    for name, ref, vec in zip(("rows", "rejects", "warnings", "report"), reference, fast, strict=True):
        if isinstance(ref, list):
            assert len(vec) == len(ref), name
            for r, v in zip(ref, vec, strict=True):
                assert v == r, (name, {k: (r[k], v.get(k)) for k in r if r[k] != v.get(k)})
        assert vec == ref, name
    return reference


def handed_back(src: Path) -> list[int]:
    """Positions of the records the vectorised parser gives to the reference."""
    cfg = Config()
    _, records = read_records(SourceFile(0, str(src), "csv"))
    limits = Limits(cfg.catalog.max_overview_chars, cfg.catalog.max_title_chars)
    parser = VectorParser(limits, DocumentBuilder(cfg.text), "enc", stage._ORDERED_CATALOG)
    return parser.parse_chunk(list(records), SourceFile(0, str(src), "csv"), 40)[1]


def edge_file(path: Path) -> Path:
    lines = [HEADER]
    columns = HEADER.split(",")
    rows = [GOOD, *({**GOOD, column: value} for column, value in EDGES)]
    for i, row in enumerate(rows):
        row = {**row, "id": row["id"] if row["id"] != GOOD["id"] else str(1000 + i)}
        lines.append(",".join('"' + row[c].replace('"', '""') + '"' for c in columns))
    data = "\n".join([*lines, "9999,Short,[]", "", "1000,Duplicate Id,[],,en,,,,,,,,,,,,,"]) + "\n"
    path.write_bytes(data.encode("utf-8", "surrogateescape"))
    return path


def test_the_real_tmdb_catalog(monkeypatch):
    # small chunks: rows the reference parses are merged back into file order across several chunks
    monkeypatch.setattr(stage, "_CHUNK_ROWS", 1_000)
    _, rejects, warnings, report = assert_same(TMDB)
    assert (report["rows_in"], report["rows_ok"], len(rejects), len(warnings)) == (4803, 4803, 0, 0)
    assert report["adapter"] == "tmdb" and report["no_overview"] == 4
    # TMDB names with JSON escapes (4% of rows) are the only ones handed to the reference
    assert len(handed_back(TMDB)) < 0.05 * 4803


def test_edge_values_and_defects_give_the_reference_results(tmp_path):
    src = edge_file(tmp_path / "edges.csv")
    rows, rejects, warnings, report = assert_same(src)
    # the file holds what it is meant to: kept rows, rejects and warnings of many kinds
    assert (report["rows_in"], len(rows), len(rejects), len(warnings)) == (len(EDGES) + 3, 88, 7, 18)
    assert len({w["reason"].split(":")[0] for w in warnings}) == 6
    assert len(assert_same(src, strict=True)[1]) == 25
    # the kernels took the plain rows themselves, not everything through the reference
    assert 30 < len(EDGES) + 3 - len(handed_back(src)) < len(rows)


@pytest.mark.parametrize(
    "parts",
    [
        ["$title ($year).", "$$5 off: $tagline", "Votes $votes, rated $rating, $popularity popular.", "$ alone"],
        ["${title}${title}", "$title", "Genres: $genres.", "Budget $budget, revenue $revenue_text."],
        ["Row $source_row of $source_file, no overview: $no_overview.", "Tags: $tags.", "fixed text"],
        [],
    ],
)
def test_document_templates(tmp_path, parts):
    src = edge_file(tmp_path / "edges.csv")
    assert_same(src, text={"parts": parts, "include_genres": True})


def test_the_injected_defects_of_a_synthetic_catalog(tmp_path):
    catalog = synthesize(600, seed=3, bad_fraction=0.05)
    for suffix in (".csv", ".parquet"):  # the Parquet copy has typed values: numbers, not text
        _, rejects, warnings, report = assert_same(write(catalog, tmp_path / f"synthetic{suffix}"))
        assert report["rejects_by_reason"] == {"title: missing title": catalog.bad["missing_title"]} != {}
        assert len(rejects) == catalog.bad["missing_title"]
        assert sum(report["field_warnings_by_reason"].values()) == len(warnings) > 0


def test_the_malformed_fixture_lenient_and_strict():
    for strict in (False, True):
        _, rejects, warnings, report = assert_same(DATA / "malformed_tmdb.csv", strict=strict)
        assert (report["rows_in"], len(rejects), len(warnings)) == (
            (15, 9, 0) if strict else (15, 5, 4)
        )  # duplicates: the stage


def test_json_records_with_typed_values(tmp_path):
    records = [
        {**GOOD, "id": 1},
        {**GOOD, "id": 2, "vote_count": 12, "vote_average": 6.5, "genres": [{"id": 1, "name": "Drama"}]},
        {**GOOD, "id": "3", "title": ["not", "text"]},
        {**GOOD, "id": "4", "budget": None, "keywords": None},
        {**GOOD, "id": "5"},
    ]
    src = tmp_path / "tmdb.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records) + "[1]\n", encoding="utf-8")
    rows, rejects, _, _ = assert_same(src)
    assert [r["movie_id"] for r in rows] == ["1", "2", "4", "5"] and len(rejects) == 2
    table = pa.Table.from_pylist([{**GOOD, "id": int(GOOD["id"]), "vote_count": 3}])
    pq.write_table(table, tmp_path / "tmdb.parquet")
    assert_same(tmp_path / "tmdb.parquet")


def test_empty_and_header_only_files(tmp_path):
    header_only = tmp_path / "header.csv"
    header_only.write_text(HEADER + "\n", encoding="utf-8")
    assert_same(DATA / "empty.csv")
    assert_same(header_only)


def test_other_layouts_use_the_reference_unless_vectorised_is_forced():
    auto, reference = outputs(MOVIELENS, "auto"), outputs(MOVIELENS, "reference")
    assert auto == reference
    # a forced vectorised parse of a layout it does not reproduce is a file error naming the path and the key
    _, _, _, report = outputs(MOVIELENS, "vectorised")
    assert report["error"] is not None
    assert str(MOVIELENS) in report["error"] and "catalog.parser" in report["error"]
    _, _, _, report = outputs(TMDB, "vectorised", date_format="%m/%d/%Y")
    assert report["error"] is not None and "date_format" in report["error"]
