"""The catalog stage: read catalog files in any supported layout into the normalised catalog (schema.CATALOG).

`sources` reads files into records, `adapters` turns records into normalised rows (or rejects), `stage` runs it
on Ray and writes the catalog, the rejects and the accounting.
"""

from genre_ray.catalog.adapters import MOVIELENS_ID_PREFIX, movielens_movie_id
from genre_ray.catalog.sources import CatalogError
from genre_ray.catalog.stage import (
    CatalogUnusable,
    IngestResult,
    catalog_source,
    ingest,
    load_catalog,
    read_catalog,
    read_field_warnings,
    read_rejects,
)

__all__ = [
    "MOVIELENS_ID_PREFIX",
    "CatalogError",
    "CatalogUnusable",
    "IngestResult",
    "catalog_source",
    "ingest",
    "load_catalog",
    "movielens_movie_id",
    "read_catalog",
    "read_field_warnings",
    "read_rejects",
]
