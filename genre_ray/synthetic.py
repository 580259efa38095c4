"""A synthetic catalog of any size, drawn from the real catalog's distributions: scale tests without scale data.

Each synthetic movie starts from a real "template" movie, which keeps the joint distributions that matter to the
pipeline: genre co-occurrence, language given genres, year, runtime and popularity. The overview is rebuilt from
sentences of *other* real movies that share one of its genres, with the template's sentence count, so text length
and the genre signal in the text both follow the real catalog while no two synthetic overviews are copies.

The output is in the source's own format (TMDB CSV columns), so the nightly job reads it through the same adapter
as the real catalog. `bad_fraction` injects known-bad rows (missing title, malformed genres, duplicate id, bad
year) and reports how many of each, so a bench can check the rejects accounting at scale.

    python -m genre_ray.synthetic --n 200000 --out runs/synthetic/movies_200k.csv --seed 0
"""

from __future__ import annotations

import argparse
import calendar
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genre_ray.config import DEFAULT_CATALOG

# Ids of synthetic movies start here, far above TMDB's, so a synthetic row never collides with a real one.
ID_OFFSET = 10_000_000
# Kinds of injected bad rows, each a distinct reason the ingest stage must reject (or flag) a row for.
BAD_KINDS = ("missing_title", "malformed_genres", "duplicate_id", "bad_year")
# What ingest (default, non-strict) must report for each kind, as keyed in accounting.json: the rows without a title
# or with a repeated id are rejected; the others are kept with the bad optional field left empty and a warning.
REJECTED_AS = {"missing_title": "title: missing title", "duplicate_id": "id: duplicate id"}
WARNED_AS = {"malformed_genres": "genres: not valid JSON", "bad_year": "release_date: not a date"}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


@dataclass
class SyntheticCatalog:
    table: pa.Table
    seed: int
    # injected bad rows by kind (BAD_KINDS); the clean row count is len(table) - sum(bad)
    bad: dict[str, int] = field(default_factory=dict)

    @property
    def clean_rows(self) -> int:
        """Rows without any injected defect."""
        return self.table.num_rows - sum(self.bad.values())

    @property
    def expected_rejects(self) -> dict[str, int]:
        """accounting.json `rejects_by_reason` that ingest must report: exactly the injected unusable rows."""
        return {REJECTED_AS[k]: n for k, n in sorted(self.bad.items()) if k in REJECTED_AS}

    @property
    def expected_field_warnings(self) -> dict[str, int]:
        """accounting.json `field_warnings_by_reason`: exactly the injected bad optional fields."""
        return {WARNED_AS[k]: n for k, n in sorted(self.bad.items()) if k in WARNED_AS}

    @property
    def kept_rows(self) -> int:
        """Rows ingest keeps: the clean ones plus those with only a bad optional field."""
        return self.table.num_rows - sum(self.expected_rejects.values())


def _genre_names(raw: str) -> list[str]:
    return [g["name"] for g in json.loads(raw)]


def _load_source(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"overview": "string", "tagline": "string", "title": "string"})
    df = df[df["overview"].notna() & (df["overview"].str.len() > 0)].reset_index(drop=True)
    df["genre_list"] = [_genre_names(g) for g in df["genres"]]
    return df


def _sentence_pools(df: pd.DataFrame) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """All overview sentences, the sentence ids available per genre, and each movie's sentence count."""
    sentences: list[str] = []
    per_genre: dict[str, list[int]] = {}
    counts = np.empty(len(df), dtype=np.int64)
    for i, (overview, genres) in enumerate(zip(df["overview"], df["genre_list"], strict=True)):
        parts = [s.strip() for s in _SENTENCE.split(str(overview)) if s.strip()]
        counts[i] = len(parts)
        ids = range(len(sentences), len(sentences) + len(parts))
        sentences.extend(parts)
        for g in genres or ["_none"]:
            per_genre.setdefault(g, []).extend(ids)
    return sentences, {g: np.asarray(v) for g, v in per_genre.items()}, counts


def synthesize(
    n: int, seed: int = 0, source: str | Path = DEFAULT_CATALOG, bad_fraction: float = 0.0
) -> SyntheticCatalog:
    """n movies in the TMDB CSV schema; the same (n, seed, source) always gives the same table."""
    if n <= 0:
        raise ValueError("n must be positive")
    if not 0.0 <= bad_fraction < 1.0:
        raise ValueError("bad_fraction must be in [0, 1)")
    rng = np.random.default_rng(seed)
    src = _load_source(Path(source))
    sentences, pools, sentence_counts = _sentence_pools(src)
    genre_ids = {g["name"]: g["id"] for raw in src["genres"] for g in json.loads(raw)}
    title_words = np.asarray(sorted({w for t in src["title"].dropna() for w in str(t).split() if w.isalpha()}))

    template = rng.integers(0, len(src), size=n)
    t = src.iloc[template].reset_index(drop=True)

    overviews: list[str] = []
    genres_json: list[str] = []
    for i in range(n):
        genres = t.at[i, "genre_list"]
        k = int(sentence_counts[template[i]])
        # each sentence from a movie sharing one of this movie's genres: the genre signal survives the remix
        picks = [rng.choice(pools[genres[rng.integers(len(genres))] if genres else "_none"]) for _ in range(k)]
        overviews.append(" ".join(sentences[p] for p in picks))
        genres_json.append(json.dumps([{"id": genre_ids[g], "name": g} for g in genres]))

    years = pd.to_datetime(t["release_date"], format="%m/%d/%Y", errors="coerce")
    shifted = (years.dt.year + rng.integers(-3, 4, size=n)).clip(upper=2025)
    release = [None if pd.isna(d) else _release_date(d, int(y)) for d, y in zip(years, shifted, strict=True)]
    noise = rng.lognormal(0.0, 0.25, size=n)
    titles = [
        " ".join(rng.choice(title_words, size=int(rng.integers(1, 4)))) + f" {i}" for i in range(n)
    ]  # the suffix keeps titles unique, as ids are

    out = pd.DataFrame(
        {
            "budget": (t["budget"] * noise).round().astype("int64"),
            "genres": genres_json,
            "homepage": None,
            "id": np.arange(ID_OFFSET, ID_OFFSET + n, dtype=np.int64),
            "original_language": t["original_language"],
            "original_title": titles,
            "overview": overviews,
            "popularity": (t["popularity"] * noise).round(6),
            "production_companies": "[]",
            "production_countries": "[]",
            "release_date": release,
            "revenue": (t["revenue"] * noise).round().astype("int64"),
            "runtime": t["runtime"],
            "spoken_languages": "[]",
            "status": "Released",
            "tagline": t["tagline"],
            "title": titles,
            "vote_average": t["vote_average"],
            "vote_count": (t["vote_count"] * noise).round().astype("int64"),
        }
    )
    bad = _inject_bad_rows(out, rng, bad_fraction)
    return SyntheticCatalog(pa.Table.from_pandas(out, preserve_index=False), seed=seed, bad=bad)


def _release_date(template: pd.Timestamp, year: int) -> str:
    """The template's month and day in the shifted year, as M/D/YYYY (TMDB's format)."""
    # Feb 29 shifted to a common year is no date at all: it was ingested as an extra, uninjected defect.
    day = 28 if (template.month, template.day) == (2, 29) and not calendar.isleap(year) else template.day
    return f"{template.month}/{day}/{year}"


def _inject_bad_rows(df: pd.DataFrame, rng: np.random.Generator, fraction: float) -> dict[str, int]:
    """Corrupt a seeded sample of rows in place, an equal share per kind; returns the count of each kind."""
    n_bad = int(len(df) * fraction)
    if n_bad == 0:
        return {}
    # never corrupt row 0: it is the original a duplicate_id row copies its id from
    rows = rng.choice(np.arange(1, len(df)), size=n_bad, replace=False)
    kinds = [BAD_KINDS[i % len(BAD_KINDS)] for i in range(n_bad)]
    for row, kind in zip(rows, kinds, strict=True):
        if kind == "missing_title":
            df.loc[row, ["title", "original_title"]] = None
        elif kind == "malformed_genres":
            df.loc[row, "genres"] = '[{"id": 28, "name": "Action"'
        elif kind == "duplicate_id":
            df.loc[row, "id"] = df.at[0, "id"]
        elif kind == "bad_year":
            df.loc[row, "release_date"] = "13/45/20X1"
    return dict(Counter(kinds))


def write(catalog: SyntheticCatalog, out: str | Path) -> Path:
    """CSV (the source format) or Parquet, by extension."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(catalog.table, path)
    elif path.suffix == ".csv":
        pacsv.write_csv(catalog.table, path)
    else:
        raise ValueError(f"{path}: write .csv or .parquet")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genre_ray.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="movies to generate")
    parser.add_argument("--out", required=True, help="output .csv or .parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=str(DEFAULT_CATALOG), help="real catalog (TMDB CSV) to sample from")
    parser.add_argument("--bad-fraction", type=float, default=0.0, help="share of deliberately bad rows")
    args = parser.parse_args(argv)
    catalog = synthesize(args.n, args.seed, args.source, args.bad_fraction)
    path = write(catalog, args.out)
    print(
        f"{path}: {catalog.table.num_rows} rows ({catalog.clean_rows} clean, bad: {catalog.bad or 'none'}); "
        f"ingest must keep {catalog.kept_rows}, reject {catalog.expected_rejects or 'none'}, "
        f"warn {catalog.expected_field_warnings or 'none'}"
    )


if __name__ == "__main__":
    main()
