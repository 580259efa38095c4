"""The catalog stage: read catalog files in any supported layout into the normalised catalog (schema.CATALOG).

`sources` reads files into records, `adapters` turns records into normalised rows (or rejects), `stage` runs it
on Ray and writes the catalog, the rejects and the accounting; `reader` reads what it wrote (embed, train, the
store and evaluate import it from there, not from the stage).
"""

from typing import TYPE_CHECKING

from genre_ray.catalog.adapters import MOVIELENS_ID_PREFIX, movielens_movie_id
from genre_ray.catalog.sources import CatalogError
from genre_ray.lazy import lazy_attributes

__all__ = [
    "MOVIELENS_ID_PREFIX",
    "CatalogError",
    "CatalogMissing",
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

if TYPE_CHECKING:  # type checkers and IDEs see the lazy names below
    from genre_ray.catalog.reader import (
        CatalogMissing,
        catalog_source,
        load_catalog,
        read_catalog,
        read_field_warnings,
        read_rejects,
    )
    from genre_ray.catalog.stage import CatalogUnusable, IngestResult, ingest

# Lazy: the stage runs on Ray. The CLI names CatalogError for every command, and a query (`similar`, `for-user`)
# should not pay for importing Ray to do it.
_STAGE = ("CatalogUnusable", "IngestResult", "ingest")
_READER = ("CatalogMissing", "catalog_source", "load_catalog", "read_catalog", "read_field_warnings", "read_rejects")
_LAZY = {name: "stage" for name in _STAGE} | {name: "reader" for name in _READER}

__getattr__ = lazy_attributes(__name__, _LAZY)
