"""The catalog stage on real Ray: adapters on real rows, exact rejects for malformed input, exact accounting."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genre_ray import schema
from genre_ray.catalog import (
    CatalogError,
    IngestResult,
    adapters,
    ingest,
    load_catalog,
    read_catalog,
    read_field_warnings,
    read_rejects,
    stage,
)
from genre_ray.catalog.sources import SourceFile, read_records
from genre_ray.catalog.stage import DRIVER_DEDUP_MAX_ROWS
from genre_ray.config import REPO_ROOT, Config
from genre_ray.layout import RunLayout

DATA = Path(__file__).parent / "data"
TMDB = REPO_ROOT / "data" / "tmdb-5000" / "tmdb_5000_movies.csv"
MOVIELENS = REPO_ROOT / "data" / "movielens-latest-small" / "movies.csv"


def run(tmp_path: Path, paths: list[str | Path], **catalog: object) -> tuple[IngestResult, pa.Table, pa.Table]:
    cfg = Config(workdir=str(tmp_path / "run"))
    cfg.catalog.paths = [str(p) for p in paths]
    # These fixtures are mostly defects on purpose; the reject-fraction gate has its own tests.
    cfg.catalog.max_reject_fraction = 1.0
    for key, value in catalog.items():
        setattr(cfg.catalog, key, value)
    layout = RunLayout.of(cfg.workdir)
    result = ingest(cfg, layout)
    movies, rejects = read_catalog(layout), read_rejects(layout)
    # The invariant every run must keep, checked against what was written, not only what was counted.
    assert result.rows_in == result.rows_ok + result.rows_rejected
    assert (movies.num_rows, rejects.num_rows) == (result.rows_ok, result.rows_rejected)
    assert movies.schema.equals(schema.CATALOG) and rejects.schema.equals(schema.REJECTS)
    assert json.loads(layout.accounting.read_text())["rows_in"] == result.rows_in
    return result, movies, rejects


def head(src: Path, dst: Path, lines: int, extra: list[int] = ()) -> Path:
    """The header and first `lines` records of a one-record-per-line CSV, plus the records at line numbers `extra`."""
    all_lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.write_text("".join(all_lines[: lines + 1] + [all_lines[n - 1] for n in extra]), encoding="utf-8")
    return dst


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["movie_id"]: r for r in table.to_pylist()}


def test_tmdb_adapter_on_real_rows(ray_session, tmp_path):
    result, movies, _ = run(tmp_path, [head(TMDB, tmp_path / "tmdb.csv", 50)])
    assert (result.rows_in, result.rows_ok) == (50, 50)
    assert result.per_file[str(tmp_path / "tmdb.csv")]["adapter"] == "tmdb"
    avatar = by_id(movies)["19995"]
    assert avatar["title"] == "Avatar"
    assert avatar["genres"] == ["Action", "Adventure", "Fantasy", "Science Fiction"]
    assert (avatar["year"], avatar["language"], avatar["votes"], avatar["rating"]) == (2009, "en", 11800, 7.2)
    assert (avatar["budget"], avatar["revenue"], avatar["runtime"]) == (237_000_000, 2_787_965_087, 162)
    assert avatar["tagline"] == "Enter the World of Pandora."
    assert avatar["studios"] == [
        "Ingenious Film Partners",
        "Twentieth Century Fox Film Corporation",
        "Dune Entertainment",
        "Lightstorm Entertainment",
    ]
    assert avatar["countries"] == ["United States of America", "United Kingdom"]
    # TMDB names languages in themselves ("Español"); the catalog holds their English names
    assert (avatar["spoken_languages"], avatar["original_title"]) == (["English", "Spanish"], "Avatar")
    assert "Studios: Ingenious Film Partners, Twentieth Century Fox" in avatar["document"]
    assert "Original title" not in avatar["document"]  # the same as the title: not repeated
    assert avatar["source_row"] == 2 and not avatar["no_overview"] and not avatar["no_genres"]
    assert avatar["overview"] in avatar["document"] and "Science Fiction" not in avatar["document"]
    assert len(avatar["content_hash"]) == 32
    # the written order is the file order
    assert movies["source_row"].to_pylist() == list(range(2, 52))


def test_tmdb_full_file_accounting(ray_session, tmp_path):
    result, movies, _ = run(tmp_path, [TMDB])
    # Every row of the real file is usable: the known defects are all "incomplete", never "invalid".
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (4803, 4803, 0)
    # 4 empty overviews (SOURCE.md's "3" counts the Kaggle NaNs; one more is an empty string) and 28 empty genre
    # lists: kept and flagged, because a movie without labels still gets a vector.
    assert result.flagged == {"no_overview": 4, "no_genres": 28}
    assert sorted(movies.filter(movies["no_overview"])["movie_id"].to_pylist()) == [
        "292539",
        "370980",
        "43630",
        "459488",
    ]
    assert len(set(movies["movie_id"].to_pylist())) == 4803
    # TMDB writes 0 for "unknown": those become nulls, never numbers that would read as "free" or "flop".
    nulls = {c: movies[c].null_count for c in ("budget", "revenue", "runtime", "rating")}
    assert nulls == {"budget": 1037, "revenue": 1427, "runtime": 37, "rating": 62}
    # where ingest's time went is recorded (timing targets are bench.catalog_ingest's job, not a test's)
    assert list(result.phase_seconds) == ["parse", "dedup", "write"]
    assert 0 < sum(result.phase_seconds.values()) <= result.seconds + 0.01


def test_movielens_adapter_on_real_rows(ray_session, tmp_path):
    # line 8519: "La cravate (1957)" with "(no genres listed)"
    result, movies, _ = run(tmp_path, [head(MOVIELENS, tmp_path / "movies.csv", 50, extra=[8519])])
    assert (result.rows_in, result.rows_ok, result.flagged["no_genres"]) == (51, 51, 1)
    rows = by_id(movies)
    toy = rows["ml:1"]
    assert (toy["title"], toy["year"]) == ("Toy Story", 1995)
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert toy["no_overview"] and toy["overview"] is None
    cravate = rows["ml:114335"]
    assert (cravate["title"], cravate["year"], cravate["genres"], cravate["no_genres"]) == (
        "La cravate",
        1957,
        [],
        True,
    )
    assert cravate["source_row"] == 52


def test_movielens_full_file_accounting(ray_session, tmp_path):
    result, movies, _ = run(tmp_path, [MOVIELENS])
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (9742, 9742, 0)
    # 34 "(no genres listed)"; every movie lacks an overview in this layout; 12 titles carry no "(year)".
    assert result.flagged == {"no_overview": 9742, "no_genres": 34}
    assert movies["year"].null_count == 12
    # Title and year are separate template parts, so a movie without a year still has its title as a document.
    assert result.warnings == []
    yearless = movies.filter(movies["year"].is_null()).to_pylist()
    assert all(m["document"] == f"{m['title']}." for m in yearless)
    series = by_id(movies)["ml:171749"]  # "Death Note: Desu nôto (2006–2007)": a year range keeps its start
    assert (series["title"], series["year"]) == ("Death Note: Desu nôto", 2006)


def test_malformed_csv_rejects_only_unusable_rows_and_warns_about_bad_optional_fields(ray_session, tmp_path):
    malformed, empty = DATA / "malformed_tmdb.csv", DATA / "empty.csv"
    result, movies, rejects = run(tmp_path, [malformed, empty])
    got = {(r["source_row"], r["field"], r["movie_id"]): r["reason"] for r in rejects.to_pylist()}
    expected = {
        (3, None, None): "bad CSV quoting: ',' expected after '\"'",
        (6, "title", "105"): "title: not valid UTF-8: byte 0xe9 at character 3",
        (7, "id", None): "missing id",
        (8, "id", "101"): f"duplicate id 101: kept {malformed} row 2",
        (11, "title", "109"): "missing title",
        (17, None, None): "wrong number of CSV fields: expected 13, got 14",
    }
    assert got.keys() == expected.keys()
    for key, reason in expected.items():
        assert reason in got[key], (key, got[key])
    assert set(rejects["source_file"].to_pylist()) == {str(malformed)}
    assert "Caf\\xe9 Latin" in rejects.filter(pa.compute.equal(rejects["source_row"], 6))["raw"][0].as_py()

    # A bad optional field costs the field, not the movie: kept, the field empty, one warning naming row and value.
    warnings = read_field_warnings(RunLayout.of(tmp_path / "run"))
    assert warnings.schema.equals(schema.WARNINGS)
    got_w = {(r["source_row"], r["field"], r["movie_id"]): (r["value"], r["reason"]) for r in warnings.to_pylist()}
    assert set(got_w) == {
        (5, "genres", "104"),
        (9, "vote_count", "107"),
        (10, "overview", "108"),
        (12, "release_date", "110"),
    }
    assert got_w[(9, "vote_count", "107")] == ("abc", "votes: not an integer: 'abc'")
    value, reason = got_w[(12, "release_date", "110")]
    assert value == "1/1/3020" and reason.startswith("year: impossible year: 3020 (allowed 1870..")
    assert got_w[(10, "overview", "108")][1] == (
        "overview: overview has 25,000 characters, over catalog.max_overview_chars=20,000"
    )
    ok = by_id(movies)
    assert (ok["104"]["genres"], ok["104"]["no_genres"]) == ([], True)
    assert ok["107"]["votes"] is None and ok["110"]["year"] is None
    assert (ok["108"]["overview"], ok["108"]["no_overview"]) == (None, True)

    # The unclosed quote on line 3 did not swallow line 4; the multi-line record keeps its start line.
    assert movies["source_row"].to_pylist() == [2, 4, 5, 9, 10, 12, 13, 14, 16]
    assert ok["112"]["overview"] == "Line one\nline two, still the overview."
    incomplete = ok["111"]
    assert incomplete["no_overview"] and incomplete["no_genres"]
    assert (incomplete["year"], incomplete["rating"], incomplete["runtime"]) == (None, None, None)

    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (15, 9, 6)
    assert result.flagged == {"no_overview": 2, "no_genres": 5}
    assert (result.field_warnings, result.rows_with_field_warnings) == (4, 4)
    assert result.field_warnings_by_reason == {
        "genres: not valid JSON": 1,
        "overview: overview too long": 1,
        "release_date: impossible year": 1,
        "vote_count: not an integer": 1,
    }
    accounting = json.loads(RunLayout.of(tmp_path / "run").accounting.read_text())
    assert accounting["field_warnings"] == 4 and accounting["field_warnings_by_reason"]["genres: not valid JSON"] == 1
    assert result.per_file[str(empty)]["rows_in"] == 0
    assert result.warnings == [f"{empty}: empty file, 0 rows"]
    assert result.rejects_by_reason["id: duplicate id"] == 1 and sum(result.rejects_by_reason.values()) == 6


def test_strict_mode_rejects_rows_with_any_bad_field(ray_session, tmp_path):
    malformed = DATA / "malformed_tmdb.csv"
    result, movies, rejects = run(tmp_path, [malformed], strict=True)
    got = {(r["source_row"], r["field"], r["movie_id"]): r["reason"] for r in rejects.to_pylist()}
    expected = {
        (3, None, None): "bad CSV quoting: ',' expected after '\"'",
        (5, "genres", "104"): "genres: not valid JSON: Expecting ',' delimiter",
        (6, "title", "105"): "title: not valid UTF-8: byte 0xe9 at character 3",
        (7, "id", None): "missing id",
        (8, "id", "101"): f"duplicate id 101: kept {malformed} row 2",
        (9, "vote_count", "107"): "votes: not an integer: 'abc'",
        (10, "overview", "108"): "overview has 25,000 characters, over catalog.max_overview_chars=20,000",
        (11, "title", "109"): "missing title",
        (12, "release_date", "110"): "year: impossible year: 3020",
        (17, None, None): "wrong number of CSV fields: expected 13, got 14",
    }
    assert got.keys() == expected.keys()
    for key, reason in expected.items():
        assert reason in got[key], (key, got[key])
    assert movies["source_row"].to_pylist() == [2, 4, 13, 14, 16]
    assert (result.rows_in, result.rows_ok, result.rows_rejected, result.field_warnings) == (15, 5, 10, 0)
    assert read_field_warnings(RunLayout.of(tmp_path / "run")).num_rows == 0


def test_jsonl_and_parquet_inputs(ray_session, tmp_path):
    rows = [
        {"movie_id": "p1", "title": "Parquet One", "genres": ["Drama"], "year": 1990, "votes": "7"},
        {"movie_id": "p2", "title": "Parquet Two", "genres": [], "year": 1991, "votes": "many"},
    ]
    parquet = tmp_path / "part.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    result, movies, rejects = run(tmp_path, [DATA / "normalised.jsonl", parquet])

    got = {(Path(r["source_file"]).name, r["source_row"], r["field"]): r["reason"] for r in rejects.to_pylist()}
    assert got == {
        ("normalised.jsonl", 2, None): got[("normalised.jsonl", 2, None)],
        ("normalised.jsonl", 5, None): "not a JSON object: list",
    }
    assert got[("normalised.jsonl", 2, None)].startswith("invalid JSON")
    warnings = read_field_warnings(RunLayout.of(tmp_path / "run"))
    got_w = {(Path(r["source_file"]).name, r["source_row"], r["field"]): r["reason"] for r in warnings.to_pylist()}
    assert got_w.keys() == {
        ("normalised.jsonl", 6, "rating"),
        ("normalised.jsonl", 7, "overview"),
        ("part.parquet", 1, "votes"),  # Parquet rows are 0-based indexes
    }
    assert got_w[("normalised.jsonl", 6, "rating")] == "rating: not a number: 'high'"
    assert got_w[("normalised.jsonl", 7, "overview")].startswith("overview: not valid UTF-8: byte 0xe9")
    assert got_w[("part.parquet", 1, "votes")] == "votes: not an integer: 'many'"

    ok = by_id(movies)
    assert (ok["n1"]["language"], ok["n1"]["genres"], ok["n1"]["votes"]) == ("en", ["Comedy", "Drama"], 12)
    assert (ok["n3"]["genres"], ok["n3"]["year"], ok["n3"]["no_overview"]) == (["Horror", "Thriller"], 1999, True)
    assert (ok["p1"]["votes"], ok["p1"]["source_row"]) == (7, 0)
    assert (ok["n4"]["rating"], ok["n5"]["overview"], ok["p2"]["votes"]) == (None, None, None)
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (8, 6, 2)


def test_mapped_adapter(ray_session, tmp_path):
    src = tmp_path / "studio.csv"
    src.write_text(
        "ident,name,kinds,yr,lang,plot,score\n"
        "s1,Alpha,Drama;Romance,2011,de,A plot.,8.5\n"
        "s2,Beta,,1985-07-01,it,,\n"
        "s3,Gamma,Horror,1066,en,Too old.,1\n",
        encoding="utf-8",
    )
    columns = {"movie_id": "ident", "title": "name", "genres": "kinds", "year": "yr", "language": "lang"}
    columns |= {"overview": "plot", "rating": "score"}
    result, movies, rejects = run(tmp_path, [src], adapter="mapped", columns=columns, genre_separator=";")
    ok = by_id(movies)
    assert ok["s1"]["genres"] == ["Drama", "Romance"] and ok["s1"]["rating"] == 8.5 and ok["s1"]["year"] == 2011
    assert ok["s2"]["year"] == 1985 and ok["s2"]["no_genres"] and ok["s2"]["no_overview"]
    assert rejects.num_rows == 0
    # an impossible year is a bad optional field: the movie stays, without a year
    assert ok["s3"]["year"] is None and ok["s3"]["title"] == "Gamma"
    [warning] = read_field_warnings(RunLayout.of(tmp_path / "run")).to_pylist()
    assert (warning["source_file"], warning["source_row"], warning["movie_id"], warning["field"]) == (
        str(src),
        4,
        "s3",
        "yr",
    )
    assert warning["value"] == "1066"
    assert warning["reason"].startswith("year: impossible year: 1066 (allowed 1870..")
    assert result.per_file[str(src)]["adapter"] == "mapped"


@pytest.mark.parametrize("driver_max_rows", [DRIVER_DEDUP_MAX_ROWS, 0], ids=["driver-dedup", "ray-groupby-dedup"])
def test_duplicates_across_files_keep_the_first_file(ray_session, tmp_path, monkeypatch, driver_max_rows):
    monkeypatch.setattr(stage, "DRIVER_DEDUP_MAX_ROWS", driver_max_rows)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"movie_id": "1", "title": "From A"}\n{"movie_id": "2", "title": "Only A"}\n', encoding="utf-8")
    b.write_text('{"movie_id": "1", "title": "From B"}\n{"movie_id": "1", "title": "B again"}\n', encoding="utf-8")
    for first, second in ((a, b), (b, a)):
        result, movies, rejects = run(tmp_path, [first, second])
        assert by_id(movies)["1"]["source_file"] == str(first)
        assert (result.rows_in, result.rows_ok, result.rows_rejected) == (4, 2, 2)
        assert {r["reason"] for r in rejects.to_pylist()} == {f"duplicate id 1: kept {first} row 1"}
        assert result.per_file[str(second)]["rows_rejected"] >= 1


def test_rerun_replaces_the_catalog_and_load_catalog_reads_it(ray_session, tmp_path):
    run(tmp_path, [head(TMDB, tmp_path / "big.csv", 30)])
    _, movies, _ = run(tmp_path, [head(TMDB, tmp_path / "small.csv", 10)])
    layout = RunLayout.of(tmp_path / "run")
    assert movies.num_rows == 10 and [p.name for p in layout.catalog_dir.iterdir() if p.name.startswith(".")] == []
    ds = load_catalog(layout)
    assert ds.count() == 10 and set(ds.schema().names) == set(schema.CATALOG.names)


def test_directory_and_glob_inputs(ray_session, tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(3):
        line = json.dumps({"movie_id": str(i), "title": f"T{i}", "year": 2000})
        (tmp_path / "in" / f"part-{i}.jsonl").write_text(line + "\n", "utf-8")
    (tmp_path / "in" / "README.md").write_text("not a catalog", "utf-8")
    result, movies, _ = run(tmp_path, [tmp_path / "in"])
    assert movies["movie_id"].to_pylist() == ["0", "1", "2"]
    assert result.warnings == [f"{tmp_path / 'in' / 'README.md'}: skipped, not a catalog file extension"]
    _, movies, _ = run(tmp_path, [str(tmp_path / "in" / "part-[02].jsonl")])
    assert movies["movie_id"].to_pylist() == ["0", "2"]


@pytest.mark.parametrize(
    ("name", "content", "catalog", "message"),
    [
        ("missing.csv", None, {}, "missing.csv: no such file or directory"),
        ("movies.xlsx", "x", {}, "movies.xlsx: unknown catalog format"),
        ("odd.csv", "a,b\n1,2\n", {}, "odd.csv: cannot tell the catalog layout from its columns ['a', 'b']"),
        ("odd2.csv", "a,b\n1,2\n", {"adapter": "mapped", "columns": {"movie_id": "a"}}, "needs ['title'] mapped"),
        ("odd3.csv", "a,b\n1,2\n", {"adapter": "mapped", "columns": {"movie_id": "a", "title": "c"}}, "['c']"),
        ("odd4.csv", "a,b\n1,2\n", {"adapter": "tmdb"}, "the tmdb adapter needs column(s) ['id', 'title']"),
    ],
)
def test_config_problems_name_the_path(ray_session, tmp_path, name, content, catalog, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(CatalogError, match=None) as err:
        run(tmp_path, [path], **catalog)
    assert message in str(err.value)


def test_compressed_file_uri_and_header_only_inputs(ray_session, tmp_path):
    packed = tmp_path / "movies.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"movie_id": "z1", "title": "Zipped", "year": 2000}\n'))
    header_only = tmp_path / "header.csv"
    header_only.write_text("movie_id,title,genres\n", encoding="utf-8")
    result, movies, _ = run(tmp_path, [f"file://{packed}", header_only])
    assert movies["movie_id"].to_pylist() == ["z1"]
    assert result.per_file[str(packed)]["format"] == "jsonl"
    assert result.warnings == [f"{header_only}: header only, 0 rows"]


def test_unclosed_quote_swallowing_to_end_of_file_recovers_every_later_line(tmp_path):
    src = tmp_path / "quote.csv"
    lines = ["movie_id,title,overview\n", '1,One,"never closed\n'] + [f"{i},T{i},plain\n" for i in range(2, 6)]
    src.write_text("".join(lines), encoding="utf-8")
    header, records = read_records(SourceFile(index=0, path=str(src), format="csv"))
    got = [(r.row, r.values["movie_id"] if r.values else r.error) for r in records]
    assert header == ["movie_id", "title", "overview"]
    # Without strict parsing this was one record with 3 fields whose overview held the rest of the file.
    assert got == [(2, "bad CSV quoting: unexpected end of data"), (3, "2"), (4, "3"), (5, "4"), (6, "5")]


@pytest.mark.parametrize(
    ("parse", "value", "expected"),
    [
        (adapters.year_from_date, "12/10/2009", 2009),
        (adapters.year_from_date, "2009-12-10", 2009),
        (adapters.year_from_date, "", None),
        (adapters.year, 1995.0, 1995),
        (adapters.year, "1995", 1995),
        (adapters.count, "11800.0", 11800),
        (adapters.integer_id, "19995", "19995"),
        (adapters.unknown_if_zero, "0", None),
        (adapters.json_names, '[{"id": 28, "name": " Action "}, {"id": 28, "name": "Action"}]', ["Action"]),
        (adapters.split_on("|"), "(no genres listed)", []),
        (adapters.movielens_title, "Heat (1995)", "Heat"),
        (adapters.movielens_title, "Babylon 5", "Babylon 5"),
        (
            adapters.json_languages,
            '[{"iso_639_1": "fr", "name": "Fran\\u00e7ais"}, {"iso_639_1": "el", "name": ""}]',
            ["French", "Modern Greek"],
        ),
        # TMDB's own codes (cn: Cantonese, xx: no language); an unknown code keeps TMDB's name, or is dropped
        (
            adapters.json_languages,
            '[{"iso_639_1": "cn", "name": "x"}, {"iso_639_1": "xx", "name": "No Language"}]',
            ["Cantonese"],
        ),
        (
            adapters.json_languages,
            '[{"iso_639_1": "qq", "name": "Klingon"}, {"iso_639_1": "qq", "name": ""}]',
            ["Klingon"],
        ),
        (adapters.language_labels(adapters.labels), "fr|English|de", ["French", "English", "German"]),
    ],
)
def test_value_parsers(parse, value, expected):
    assert parse(value) == expected


@pytest.mark.parametrize(
    ("parse", "value", "problem"),
    [
        (adapters.year_from_date, "2/30/2001", "not a date: '2/30/2001'"),
        (adapters.year_from_date, "1/1/1800", "impossible year: 1800"),
        (adapters.count, "1.5", "not an integer: '1.5'"),
        (adapters.count, "-3", "negative number: '-3'"),
        (adapters.real, "nan", "not a finite number"),
        (adapters.real, True, "not a number"),
        (adapters.integer_id, "tt0499549", "not an integer id"),
        (adapters.json_names, '{"name": "Action"}', "not a JSON list: dict"),
        (adapters.text, "Caf\udce9", "not valid UTF-8: byte 0xe9 at character 3"),
    ],
)
def test_value_parser_problems(parse, value, problem):
    with pytest.raises(adapters.Problem, match=re.escape(problem)):
        parse(value)


def test_a_bad_studios_or_languages_value_is_a_warning_not_a_reject():
    _, records = read_records(SourceFile(index=0, path=str(TMDB), format="csv"))
    avatar = next(records).values
    limits = adapters.Limits(max_overview_chars=20_000, max_title_chars=1_000)
    broken = {**avatar, "production_companies": '[{"name": "Pixar"', "spoken_languages": '{"iso_639_1": "en"}'}
    warnings: list[adapters.FieldWarning] = []
    row = adapters.TMDB.normalise(broken, limits, warnings=warnings)
    assert (row["title"], row["studios"], row["spoken_languages"]) == ("Avatar", None, None)
    assert row["countries"] == ["United States of America", "United Kingdom"]
    assert [(w.column, w.kind) for w in warnings] == [
        ("production_companies", "not valid JSON"),
        ("spoken_languages", "not a JSON list"),
    ]
    with pytest.raises(adapters.RowError, match="production_companies: studios: not valid JSON"):
        adapters.TMDB.normalise(broken, limits, strict=True)
