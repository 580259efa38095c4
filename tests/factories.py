"""Small, seeded inputs shared by tests: catalog tables in the schema.CATALOG contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genre_ray import schema
from genre_ray.catalog import IngestResult
from genre_ray.config import Config
from genre_ray.text import DocumentBuilder, content_hash, encoder_id

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Science Fiction", "Thriller", "Animation"]
WORDS = {
    "Action": "explosion chase fight hero mission",
    "Comedy": "funny hilarious laugh joke awkward",
    "Drama": "family grief struggle life emotional",
    "Horror": "ghost haunted blood scream terror",
    "Romance": "love wedding kiss heart couple",
    "Science Fiction": "space alien planet robot future",
    "Thriller": "spy conspiracy murder suspense chase",
    "Animation": "cartoon talking animal colorful adventure",
}


def ingest_counts(result: IngestResult) -> dict[str, Any]:
    """An ingest's accounting without its timings: what two ingests of the same input must agree on."""
    return {k: v for k, v in result.to_json().items() if k not in ("seconds", "phase_seconds")}


def catalog_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = int(rng.integers(1, 3))
        genres = sorted(rng.choice(GENRES, size=k, replace=False).tolist())
        overview = " ".join(WORDS[g] for g in genres) + f" story number {i}."
        rows.append(
            {
                "movie_id": str(1000 + i),
                "title": f"Movie {i}",
                "genres": genres,
                "language": "en" if i % 4 else "fr",
                "year": int(1980 + i % 40),
                "overview": overview,
                "tagline": None,
                "keywords": None,
                "rating": float(np.round(rng.uniform(3, 9), 1)),
                "votes": int(rng.integers(1, 5000)),
                "popularity": float(rng.uniform(0, 100)),
                "revenue": None,
                "budget": None,
                "runtime": float(rng.integers(80, 160)),
                "source_file": "factory",
                "source_row": i + 2,
                "no_overview": False,
                "no_genres": False,
            }
        )
    return rows


def catalog_table(n: int, seed: int = 0, cfg: Config | None = None) -> pa.Table:
    cfg = cfg or Config()
    build = DocumentBuilder(cfg.text)
    enc = encoder_id(cfg.encoder.model, cfg.encoder.max_length, cfg.encoder.pooling, cfg.encoder.normalize)
    rows = catalog_rows(n, seed)
    for r in rows:
        r["document"] = build(r)
        r["content_hash"] = content_hash(r["document"], enc)
    return pa.Table.from_pylist(rows, schema=schema.CATALOG)


def write_catalog(table: pa.Table, movies_dir: Path) -> Path:
    movies_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, movies_dir / "part-0.parquet")
    return movies_dir


def clustered_embeddings(catalog: pa.Table, dim: int = 16, seed: int = 0) -> pa.Table:
    """One random centre per genre; a movie's vector is the sum of its genres' centres plus noise: learnable."""
    rng = np.random.default_rng(seed)
    centres = {g: rng.normal(size=dim) for g in GENRES}
    rows = [sum(centres[g] for g in gs) + 0.3 * rng.normal(size=dim) for gs in catalog["genres"].to_pylist()]
    matrix = np.asarray(rows, np.float32)
    return pa.table(
        {
            "movie_id": catalog["movie_id"],
            "content_hash": catalog["content_hash"],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim),
            "encoder_id": pa.array(["test"] * len(matrix)),
        },
        schema=schema.embeddings_schema(dim),
    )
