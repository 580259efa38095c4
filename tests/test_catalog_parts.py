"""A big CSV / JSON Lines file read by several byte-range tasks gives exactly what one task reading it gives."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import ingest_counts

from genre_ray.catalog import ingest, read_catalog, read_field_warnings
from genre_ray.catalog.sources import SourceFile, count_lines, split_text, text_cuts
from genre_ray.catalog.stage import _merge_parts, parse_file
from genre_ray.config import Config
from genre_ray.layout import RunLayout

HEADER = "movie_id,title,genres,overview,year,votes"


def csv_rows(n: int, eol: str) -> list[str]:
    """Good rows with, every few lines, a bad value: missing titles (rejects), bad years and votes (warnings),
    quoted commas, quoted fields over two lines, a blank line, a duplicate id and an unclosed quote."""
    rows = []
    for i in range(1, n + 1):
        title = "" if i % 11 == 0 else f"T{i}"
        overview = f'"over {i}, with a comma"' if i % 4 == 0 else f"over {i}"
        if i % 13 == 0:
            overview = f'"first line{eol}second line {i}"'
        year = "soon" if i % 7 == 0 else str(1950 + i % 60)
        votes = "many" if i % 5 == 0 else str(i)
        rows.append(f"{i},{title},Drama|Comedy,{overview},{year},{votes}")
    rows[20] = ""  # a blank line is not a record
    rows[30] = "5,Again,Drama,dup,1999,3"  # a duplicate id (dedup runs on the driver, across parts)
    rows[40] = '41,Broken,Drama,"never closed,1999,3'  # reject this line, re-read the next ones
    return rows


def write_csv(path: Path, n: int = 60, eol: str = "\r\n") -> Path:
    path.write_bytes(("\ufeff" + eol.join([HEADER, *csv_rows(n, eol)]) + eol).encode("utf-8"))
    return path


def parsed(parts: list[SourceFile]) -> tuple[list, list, list, list] | None:
    """parse_file over parts, merged as the stage merges them; None when a record crossed a cut (stage: re-read)."""
    cfg = Config()
    outs = [parse_file(p, cfg.catalog, cfg.text, "enc") for p in parts]
    if any(o[3].record_crosses_cut for o in outs):
        return None
    tables = [pa.concat_tables([o[i] for o in outs]).to_pylist() for i in range(3)]
    return *tables, [asdict(r) for r in _merge_parts([o[3] for o in outs])]


def test_cuts_fall_after_a_newline_and_after_the_csv_header(tmp_path: Path):
    src = SourceFile(0, str(write_csv(tmp_path / "m.csv")), "csv")
    data = Path(src.path).read_bytes()
    cuts = text_cuts(src, 100)
    assert cuts is not None and cuts[0] == 0 and cuts[-1] == len(data) and len(cuts) > 4
    assert all(data[c - 1 : c] == b"\n" for c in cuts[1:-1])
    assert cuts[1] > data.index(b"\r\n") + 2  # never inside the header
    # line numbers of each part: what StringIO(newline="") counts, \r\n once
    parts = split_text(src, 100)
    for part in parts[1:]:
        before = data[: part.byte_range[0]].decode("utf-8")
        assert part.first_row == len(before.splitlines()) == count_lines(src.path, 0, part.byte_range[0])
    assert text_cuts(src, len(data)) is None  # a small file is one task
    gz = tmp_path / "m.csv.gz"
    gz.write_bytes(b"")
    assert text_cuts(SourceFile(0, str(gz), "csv"), 1) is None  # compressed: one task


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_csv_parts_give_the_single_task_records_rejects_warnings_and_accounting(tmp_path: Path, eol: str):
    src = SourceFile(0, str(write_csv(tmp_path / "m.csv", eol=eol)), "csv")
    whole = parsed([src])
    assert whole is not None
    catalog, rejects, warnings, reports = whole
    # source_row is the physical line (header = 1): each two-line overview before a row moves it down one more
    assert {r["source_row"]: r["reason"].split(":")[0] for r in rejects} == {
        12: "missing title",
        24: "missing title",
        36: "missing title",
        45: "bad CSV quoting",
        48: "missing title",
        60: "missing title",
    }
    assert len(warnings) > 10 and reports[0]["rows_in"] == len(catalog) + len(rejects)
    checked = crossed = 0
    # Many part sizes, so cuts land next to every kind of row, the bad ones included.
    for size in range(40, 400, 7):
        parts = split_text(src, size)
        got = parsed(parts)
        if got is None:  # a quoted two-line field spans a cut: the stage reads this file in one task instead
            crossed += 1
            continue
        assert got == whole, size
        checked += len(parts) >= 3
    assert checked >= 5 and crossed >= 1  # both paths taken


def test_jsonl_parts_give_the_single_task_records(tmp_path: Path):
    lines = []
    for i in range(1, 50):
        if i % 10 == 0:
            lines.append('{"movie_id": "broken')
        elif i % 17 == 0:
            lines.append("[1, 2]")
        elif i % 8 == 0:
            lines.append("")
        else:
            lines.append(
                json.dumps({"movie_id": str(i), "title": "" if i % 11 == 0 else f"T{i}", "year": "x" * (i % 3)})
            )
    path = tmp_path / "m.jsonl"
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    src = SourceFile(0, str(path), "jsonl")
    whole = parsed([src])
    for size in (30, 64, 101, 250):
        parts = split_text(src, size)
        assert len(parts) >= 3
        assert parsed(parts) == whole, size


def ingest_once(root: Path, paths: list[Path], bytes_per_task: int) -> tuple[list, list, list, dict]:
    cfg = Config(workdir=str(root))
    cfg.catalog.paths = [str(p) for p in paths]
    cfg.catalog.bytes_per_task = bytes_per_task
    cfg.catalog.max_reject_fraction = 1.0  # the two CSVs share their ids: the second one's are duplicates
    layout = RunLayout.of(cfg.workdir)
    result = ingest(cfg, layout)
    counts = ingest_counts(result)
    return (
        read_catalog(layout).to_pylist(),
        pq.read_table(layout.rejects).to_pylist(),
        read_field_warnings(layout).to_pylist(),
        counts,
    )


def test_ingest_of_split_text_files_equals_one_task_per_file(ray_session, tmp_path: Path):
    """A CSV whose parts are clean, one whose quoted field crosses a cut (re-read whole), and a JSON Lines file."""
    clean = write_csv(tmp_path / "clean.csv")
    crossing = write_csv(tmp_path / "crossing.csv", eol="\n")

    def fits(size: int) -> bool:
        parts = split_text(SourceFile(0, str(clean), "csv"), size)
        return len(parts) >= 3 and parsed(parts) is not None

    size = next(
        s for s in range(40, 400, 7) if fits(s) and parsed(split_text(SourceFile(1, str(crossing), "csv"), s)) is None
    )
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("".join(json.dumps({"movie_id": f"j{i}", "title": f"J{i}"}) + "\n" for i in range(30)))
    whole = ingest_once(tmp_path / "whole", [clean, crossing, jsonl], bytes_per_task=1 << 30)
    split = ingest_once(tmp_path / "split", [clean, crossing, jsonl], bytes_per_task=size)
    assert split == whole
    catalog, rejects, _, counts = split
    assert counts["rows_in"] == counts["rows_ok"] + counts["rows_rejected"] == len(catalog) + len(rejects)
    assert sum(r["reason"].startswith("duplicate id") for r in rejects) > 50  # across files and parts
