"""The data contracts between stages, as Arrow schemas. A stage's output is cast to its schema before writing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# Optional numeric extras of the normalised catalog; any adapter may leave them null.
NUMERIC_FIELDS: dict[str, pa.DataType] = {
    "rating": pa.float64(),
    "votes": pa.int64(),
    "popularity": pa.float64(),
    "revenue": pa.float64(),
    "budget": pa.float64(),
    "runtime": pa.float64(),
}

CATALOG = pa.schema(
    [
        pa.field("movie_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("genres", pa.list_(pa.string()), nullable=False),
        pa.field("language", pa.string()),
        pa.field("year", pa.int32()),
        pa.field("overview", pa.string()),
        pa.field("tagline", pa.string()),
        pa.field("keywords", pa.list_(pa.string())),
        # production companies, production countries (names) and spoken languages (English names, e.g. "French")
        pa.field("studios", pa.list_(pa.string())),
        pa.field("countries", pa.list_(pa.string())),
        pa.field("spoken_languages", pa.list_(pa.string())),
        # the title in the film's own language, as the source has it (often equal to `title`)
        pa.field("original_title", pa.string()),
        # per-movie text from catalog.extra_text (e.g. MovieLens user tags), joined by id at ingest
        pa.field("tags", pa.list_(pa.string())),
        *(pa.field(name, typ) for name, typ in NUMERIC_FIELDS.items()),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("no_overview", pa.bool_(), nullable=False),
        pa.field("no_genres", pa.bool_(), nullable=False),
        # text stage: the document the encoder sees and sha256(encoder id + document)
        pa.field("document", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
    ]
)

REJECTS = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("movie_id", pa.string()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        # the offending record as text (truncated), so a reject can be fixed without the source file at hand
        pa.field("raw", pa.string()),
    ]
)

# Optional fields that did not parse; their rows are in the catalog with the field empty.
WARNINGS = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("movie_id", pa.string(), nullable=False),
        pa.field("field", pa.string(), nullable=False),  # the source column
        pa.field("value", pa.string()),  # the value as found (truncated), JSON for non-text values
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("movie_id", pa.string(), nullable=False),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("encoder_id", pa.string(), nullable=False),
        ]
    )


# Catalog columns carried into the served rows (the rest of the catalog stays behind: documents are large).
METADATA_COLUMNS = ["movie_id", "title", "year", "language", "genres", "popularity", "votes", "content_hash"]


def served_schema(spectrum_dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("movie_id", pa.string(), nullable=False),
            pa.field("title", pa.string()),
            pa.field("year", pa.int32()),
            pa.field("language", pa.string()),
            pa.field("genres", pa.list_(pa.string())),
            pa.field("popularity", pa.float64()),
            pa.field("votes", pa.int64()),
            pa.field("genre_probs", pa.list_(pa.float32())),
            pa.field("vector", pa.list_(pa.float32(), spectrum_dim), nullable=False),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
        ]
    )


def vector_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(n, d) float32 from a fixed_size_list column, or from Ray's tensor extension type if an upstream used it."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(arr.type, pa.ExtensionType):
        return np.asarray(arr.to_numpy(), dtype=np.float32).reshape(len(arr), -1)
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(arr), -1)
