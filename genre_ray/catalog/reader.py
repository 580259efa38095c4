"""Reading the normalised catalog that ingest wrote: what embed, train, the store and evaluate consume.

Light on purpose (pyarrow and the storage layer; Ray only where a Ray Dataset is asked for), so a reader does not
import the ingest stage. The catalog is a Parquet dataset in a generation directory under `layout.movies`, made
current by the pointer object CURRENT (see catalog.stage, which writes both).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from genre_ray import schema, storage
from genre_ray.catalog.sources import CatalogError
from genre_ray.layout import RunLayout
from genre_ray.storage import StoragePath

if TYPE_CHECKING:
    import ray.data

# The pointer to the current catalog generation under layout.movies. Object stores cannot rename a directory, so a
# new catalog is written beside the old one and this one small object switches readers to it.
CURRENT = "_current.json"


class CatalogMissing(CatalogError):
    """No catalog has been ingested into this workdir yet: a stage that reads it ran before `ingest`."""


def catalog_files(layout: RunLayout) -> list[StoragePath]:
    """The Parquet files of the current catalog generation, in order (a catalog written before generations
    existed, or by a test, is files directly in layout.movies)."""
    pointer = layout.movies / CURRENT
    current = layout.movies / json.loads(pointer.read_text())["generation"] if pointer.exists() else layout.movies
    files = sorted(current.glob("*.parquet"))
    if not files:
        raise CatalogMissing(
            f"{layout.movies}: no catalog here; run `genre-ray ingest` (or `genre-ray run`) with this workdir first"
        )
    return files


def catalog_source(layout: RunLayout) -> tuple[Any, list[str]]:
    """(filesystem, paths) of the current catalog files for pyarrow and Ray Data readers (filesystem None: local)."""
    files = catalog_files(layout)
    return storage.arrow_fs(files[0])[0], [storage.arrow_fs(f)[1] for f in files]


def read_catalog(layout: RunLayout, columns: Sequence[str] | None = None) -> pa.Table:
    """The normalised catalog as written, in file and row order (for small consumers; big ones: load_catalog).

    Pass `columns` when the documents are not needed: they are most of the catalog's bytes.
    """
    fs, paths = catalog_source(layout)
    dataset = pads.dataset(paths, format="parquet", schema=schema.CATALOG, filesystem=fs)
    return dataset.to_table(columns=list(columns) if columns is not None else None)


def load_catalog(layout: RunLayout, columns: Sequence[str] | None = None) -> ray.data.Dataset:
    import ray.data

    fs, paths = catalog_source(layout)
    if columns is not None:
        return ray.data.read_parquet(paths, columns=list(columns), filesystem=fs)
    return ray.data.read_parquet(paths, schema=schema.CATALOG, filesystem=fs)


def _read_table(path: StoragePath) -> pa.Table:
    fs, p = storage.arrow_fs(path)
    return pq.read_table(p, filesystem=fs)


def read_rejects(layout: RunLayout) -> pa.Table:
    return _read_table(layout.rejects)


def read_field_warnings(layout: RunLayout) -> pa.Table:
    return _read_table(layout.field_warnings)
