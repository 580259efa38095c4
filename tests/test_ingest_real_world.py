"""Real-world catalog exports (tests/data): JSON arrays, human dates, partial rows kept, unusable input failing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import ray.data
from factories import catalog_table, ingest_counts
from test_store import embeddings_for, ids_in, make_run, write_embeddings

from genre_ray import schema
from genre_ray.catalog import CatalogError, CatalogUnusable, adapters, ingest, read_catalog, read_field_warnings
from genre_ray.catalog.adapters import DERIVED_ID_PREFIX, derived_id
from genre_ray.cli import main
from genre_ray.config import Config
from genre_ray.errors import PreconditionError
from genre_ray.layout import RunLayout
from genre_ray.recommend import Recommender
from genre_ray.store import Store, publish
from genre_ray.synthetic import synthesize, write
from genre_ray.train import prepare

DATA = Path(__file__).parent / "data"
ARRAY_COLUMNS = {
    "title": "Title",
    "year": "Release Date",
    "genres": "Major Genre",
    "votes": "IMDB Votes",
    "rating": "IMDB Rating",
    "revenue": "US Gross",
    "budget": "Production Budget",
}
DATE_COLUMNS = {"title": "Title", "year": "Release Date", "genres": "Major Genre"}


def ingest_into(root: Path, paths: list[Path], **catalog: object) -> tuple[RunLayout, object]:
    cfg = Config(workdir=str(root))
    cfg.catalog.paths = [str(p) for p in paths]
    for key, value in catalog.items():
        setattr(cfg.catalog, key, value)
    layout = RunLayout.of(cfg.workdir)
    return layout, ingest(cfg, layout)


def test_json_array_without_ids_is_read_as_records(ray_session, tmp_path):
    src = DATA / "movies_array.json"
    layout, result = ingest_into(
        tmp_path, [src], adapter="mapped", columns=ARRAY_COLUMNS, genre_separator=["/", "|", ","]
    )
    movies = {(m["title"], m["year"]): m for m in read_catalog(layout).to_pylist()}
    # 11 elements: one is not an object, one repeats a title + year; the rest are movies, rows = element indexes.
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (11, 9, 2)
    assert sorted(m["source_row"] for m in movies.values()) == [0, 1, 2, 3, 4, 6, 7, 9, 10]
    harbour = movies[("Harbour Lights", 1998)]
    assert harbour["movie_id"] == derived_id("Harbour Lights", 1998) and harbour["movie_id"].startswith("ty:")
    assert movies[("Harbour Lights", 2011)]["movie_id"] != harbour["movie_id"]  # a remake is another movie
    assert (harbour["votes"], harbour["rating"], harbour["budget"]) == (1071, 6.1, 8_000_000)
    # compound genre names split on any of the separators
    assert movies[("Iron Orchard", 1998)]["genres"] == ["Action", "Adventure"]
    assert movies[("Small Hours", 1998)]["genres"] == ["Black Comedy", "Crime"]
    assert movies[("Dust Road", 1999)]["no_genres"]
    # a bad optional field costs the field, never the movie
    assert movies[("The Long Valley", None)]["genres"] == ["Comedy", "Drama"]
    assert movies[("Dust Road", 1999)]["votes"] is None

    rejects = {r["source_row"]: r for r in pq_rows(layout.rejects)}
    assert rejects[5]["reason"] == "not a JSON object: int" and rejects[5]["raw"] == "42"
    assert rejects[8]["field"] == "Title"
    assert rejects[8]["reason"] == f"duplicate id {harbour['movie_id']}: kept {src} row 0"
    warnings = {(w["source_row"], w["field"]): w for w in read_field_warnings(layout).to_pylist()}
    assert set(warnings) == {(3, "Release Date"), (4, "IMDB Votes")}
    assert warnings[(3, "Release Date")]["value"] == "sometime in 1998"
    assert warnings[(3, "Release Date")]["reason"] == "year: not a date: 'sometime in 1998'"
    assert warnings[(4, "IMDB Votes")]["movie_id"] == movies[("Dust Road", 1999)]["movie_id"]
    assert result.field_warnings_by_reason == {"IMDB Votes: not an integer": 1, "Release Date: not a date": 1}
    assert result.rejects_by_reason == {"Title: duplicate id": 1, "not a JSON object": 1}


def pq_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_top_level_json_that_is_not_records_is_one_file_error(ray_session, tmp_path):
    with pytest.raises(CatalogError, match=r"not_records\.json: the top level is one JSON object"):
        ingest_into(tmp_path, [DATA / "not_records.json"], adapter="mapped", columns={"title": "Title"})
    broken = tmp_path / "broken.json"
    broken.write_text('[{"Title": "A"},\n {"Title": "B"\n', encoding="utf-8")
    with pytest.raises(CatalogError, match=r"broken\.json: invalid JSON after array element 1"):
        ingest_into(tmp_path, [broken], adapter="mapped", columns={"title": "Title"})


@pytest.mark.parametrize(
    ("value", "year"),
    [
        ("1998-06-12", 1998),
        ("1998-06-12T20:00:00Z", 1998),
        ("6/12/1998", 1998),
        ("12.06.1998", 1998),
        ("25.12.1998", 1998),
        ("Jun 12 1998", 1998),
        ("12 June 1998", 1998),
        ("Friday, June 12, 1998", 1998),
        ("1998", 1998),
        (1998, 1998),
        (35958, 1998),  # Excel serial of 1998-06-12
        ("35958", 1998),
        ("19980612", 1998),
        ("13/12/1998", 1998),  # not M/D: read as D/M
        ("", None),
    ],
)
def test_year_from_the_date_forms_exports_use(value, year):
    assert adapters.year_from_date(value) == year


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("sometime", "not a date: 'sometime'"),
        ("June 12", "not a date: 'June 12' has no year"),
        ("2/30/2001", "not a date: '2/30/2001'"),
        ("13/45/20X1", "not a date: '13/45/20X1'"),
        ("Jun 12 1066", "impossible year: 1066"),
        (float("inf"), "not a year"),
    ],
)
def test_unparseable_dates_are_problems(value, problem):
    with pytest.raises(adapters.Problem, match=problem):
        adapters.year_from_date(value)


def test_date_formats_file_and_a_forced_date_format(ray_session, tmp_path):
    columns = {"title": "title", "year": "released"}
    layout, result = ingest_into(tmp_path / "any", [DATA / "date_formats.csv"], adapter="mapped", columns=columns)
    years = {m["title"]: m["year"] for m in read_catalog(layout).to_pylist()}
    assert result.rows_ok == result.rows_in == 13  # every row kept, whatever its date
    assert {t for t, y in years.items() if y != 1998} == {"Unknown", "No date"}
    assert years["Unknown"] is None and years["No date"] is None
    assert [w["value"] for w in read_field_warnings(layout).to_pylist()] == ["sometime"]

    layout, result = ingest_into(
        tmp_path / "forced", [DATA / "date_formats.csv"], adapter="mapped", columns=columns, date_format="%d %B %Y"
    )
    years = {m["title"]: m["year"] for m in read_catalog(layout).to_pylist()}
    assert {t for t, y in years.items() if y == 1998} == {"Day first"}
    warnings = read_field_warnings(layout).to_pylist()
    assert len(warnings) == 11 and result.field_warnings_by_reason == {"released: not a date": 11}
    assert warnings[0]["reason"] == "year: not a date: '1998-06-12', expected catalog.date_format '%d %B %Y'"


def test_synthetic_catalog_accounting_is_exactly_the_injected_defects(ray_session, tmp_path):
    catalog = synthesize(2000, seed=3, bad_fraction=0.02)
    assert catalog.bad == {"missing_title": 10, "malformed_genres": 10, "duplicate_id": 10, "bad_year": 10}
    src = write(catalog, tmp_path / "synthetic.csv")
    _, result = ingest_into(tmp_path / "run", [src])
    assert result.rejects_by_reason == catalog.expected_rejects == {"id: duplicate id": 10, "title: missing title": 10}
    assert result.field_warnings_by_reason == catalog.expected_field_warnings
    assert (result.rows_ok, result.rows_with_field_warnings) == (catalog.kept_rows, 20)


def test_unusable_catalog_fails_the_run_and_leaves_the_published_store_unchanged(ray_session, tmp_path, capsys):
    catalog = catalog_table(40)
    cfg, layout = make_run(tmp_path, catalog)
    publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    manifest = Store(layout.store_dir).manifest()
    before = ids_in(Store(layout.store_dir))
    src = DATA / "strict_dates.jsonl"
    sets = {
        "catalog.paths": f"[{src}]",
        "catalog.adapter": "mapped",
        "catalog.columns": "{title: Title, year: Release Date, genres: Major Genre}",
        "catalog.strict": "true",
        "catalog.date_format": "'%Y-%m-%d'",
    }
    argv = ["nightly", "--workdir", str(tmp_path), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]

    assert main(argv) == 1
    err = capsys.readouterr().err
    assert (
        f"error: catalog: 0 of 4 rows usable (4 x Release Date: not a date, e.g. {src} row 1 'Jun 12 1998'); "
        "nothing published"
    ) in err
    assert "Traceback" not in err
    run = json.loads(layout.run_json.read_text())
    assert (run["status"], run["failed_stage"]) == ("failed", "ingest")
    assert run["results"]["ingest"]["status"] == "failed"
    assert run["ledger"]["catalog_in"] == 4 and run["ledger"]["catalog_ok"] == 0
    accounting = json.loads(layout.accounting.read_text())
    assert accounting["rows_rejected"] == 4 and accounting["error"].startswith("catalog: 0 of 4 rows usable")

    # Readers see exactly the previous publish; the catalog the store came from is still in place.
    assert Store(layout.store_dir).manifest() == manifest
    assert ids_in(Store(layout.store_dir)) == before
    assert read_catalog(layout).num_rows == 40
    assert Recommender(cfg, layout).similar("Movie 3", k=3)

    # The same file without strict mode: every movie kept, the dates become warnings.
    _, result = ingest_into(tmp_path / "lenient", [src], adapter="mapped", columns=DATE_COLUMNS)
    assert (result.rows_ok, result.field_warnings) == (4, 0)


def test_reject_fraction_over_the_limit_fails_naming_the_top_reasons(ray_session, tmp_path):
    src = DATA / "movies_array.json"
    with pytest.raises(CatalogUnusable) as err:
        ingest_into(tmp_path, [src], adapter="mapped", columns=ARRAY_COLUMNS, max_reject_fraction=0.1)
    message = str(err.value)
    assert message.startswith("catalog: 9 of 11 rows usable, 2 rejected = 18.2%, over catalog.max_reject_fraction=0.1")
    assert "1 x Title: duplicate id, e.g. " in message and f"{src} row 8 id '{DERIVED_ID_PREFIX}" in message
    assert "1 x not a JSON object, e.g. " in message and "row 5 '42'" in message
    assert err.value.result.rows_ok == 9
    assert not RunLayout.of(tmp_path).movies.exists()  # nothing written for the stages after ingest


def test_training_preconditions_say_what_to_fix(ray_session, tmp_path, capsys):
    cfg = Config()
    catalog = catalog_table(40)
    unlabelled = catalog.set_column(
        catalog.schema.get_field_index("genres"), "genres", pa.array([[]] * 40, pa.list_(pa.string()))
    ).set_column(catalog.schema.get_field_index("no_genres"), "no_genres", pa.array([True] * 40))
    unlabelled = unlabelled.cast(schema.CATALOG)
    table = pa.table(
        {
            "movie_id": catalog["movie_id"],
            "genres": catalog["genres"],
            "embedding": embeddings_for(catalog)["embedding"],
        }
    )

    with pytest.raises(PreconditionError, match="no catalog movie has an embedding"):
        prepare(ray.data.from_arrow(table.slice(0, 0)), cfg)
    with pytest.raises(PreconditionError, match="none of the 40 catalog movies has genres"):
        prepare(ray.data.from_arrow(table.set_column(1, "genres", unlabelled["genres"])), cfg)
    one_genre = pa.array([["Drama"]] * 40, pa.list_(pa.string()))
    with pytest.raises(PreconditionError, match=r"1 genre\(s\) with at least 1 of the \d+ training movies"):
        prepare(ray.data.from_arrow(table.set_column(1, "genres", one_genre)), cfg)
    with pytest.raises(PreconditionError, match="training needs at least one in train and in val"):
        prepare(ray.data.from_arrow(table.slice(0, 2)), cfg)

    # Through the command: a message, exit 1, no traceback.
    _, layout = make_run(tmp_path, unlabelled)
    write_embeddings(layout, unlabelled)
    assert main(["train", "--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error: train: none of the 40 catalog movies has genres" in err and "Traceback" not in err


def test_a_big_parquet_file_is_read_by_several_tasks_with_the_same_result(ray_session, tmp_path):
    import pyarrow.parquet as pq

    from genre_ray.catalog.sources import SourceFile, split_parquet

    rows = [{"movie_id": str(i), "title": f"T{i}", "genres": ["Drama"], "votes": str(i)} for i in range(35)]
    rows[3]["title"] = None  # rejected
    rows[17]["votes"] = "many"  # kept, warned
    rows[28]["movie_id"] = "5"  # a duplicate of a row in another part
    src = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=10)
    parts = split_parquet(SourceFile(0, str(src), "parquet"), rows_per_task=10)
    assert [(p.row_groups, p.first_row) for p in parts] == [((0, 1), 0), ((1, 2), 10), ((2, 3), 20), ((3, 4), 30)]

    outputs = []
    for name, per_task in (("whole", 1_000_000), ("split", 10)):
        layout, result = ingest_into(tmp_path / name, [src], parquet_rows_per_task=per_task)
        rejects = pq_rows(layout.rejects)
        warnings = read_field_warnings(layout).to_pylist()
        catalog = read_catalog(layout).drop_columns(["source_file"]).to_pylist()
        counts = ingest_counts(result)
        outputs.append((catalog, [r | {"source_file": None} for r in rejects], warnings, counts))
    assert outputs[0] == outputs[1]
    catalog, rejects, warnings, counts = outputs[1]
    assert (counts["rows_in"], counts["rows_ok"], counts["rows_rejected"]) == (35, 33, 2)
    assert [r["source_row"] for r in catalog] == [i for i in range(35) if i not in (3, 28)]
    assert {(r["source_row"], r["reason"]) for r in rejects} == {
        (3, "missing title"),
        (28, f"duplicate id 5: kept {src} row 5"),
    }
    assert [(w["source_row"], w["field"]) for w in warnings] == [(17, "votes")]


def test_a_catalog_of_empty_files_fails_instead_of_publishing_nothing(ray_session, tmp_path):
    header_only = tmp_path / "header.csv"
    header_only.write_text("movie_id,title,genres\n", encoding="utf-8")
    with pytest.raises(
        CatalogUnusable, match=r"catalog: 0 rows in \(.*empty\.csv, .*header\.csv: every file is empty\)"
    ):
        ingest_into(tmp_path / "run", [DATA / "empty.csv", header_only])


def test_a_catalog_without_plot_text_is_warned_about(ray_session, tmp_path):
    # The JSON export has titles, dates, genres and numbers but no overview or tagline: the run succeeds, and says
    # that its spectrum will be poor, with the counts and the missing fields (the duplicate it rejects is not counted).
    layout, result = ingest_into(
        tmp_path / "bare", [DATA / "movies_array.json"], adapter="mapped", columns=ARRAY_COLUMNS
    )
    assert (result.rows_ok, result.no_description, result.no_tagline) == (9, 9, 9)
    warning = result.poor_text()
    assert warning is not None and "9 of 9 movies have neither an overview nor a tagline" in warning
    assert "overview missing for 9, tagline for 9" in warning
    assert f"WARNING {warning}" in result.summary()
    assert json.loads(layout.accounting.read_text())["no_description"] == 9

    # Half or fewer without either part is an ordinary catalog: no warning.
    rows = [{"Title": f"Movie {i}", "Plot": "A heist goes wrong." if i % 2 else None} for i in range(4)]
    src = tmp_path / "half.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _, half = ingest_into(tmp_path / "half", [src], adapter="mapped", columns={"title": "Title", "overview": "Plot"})
    assert half.no_description == 2 and half.poor_text() is None and "WARNING" not in half.summary()
