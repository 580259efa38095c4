"""The served store: LanceDB tables per partition, manifest-based publish / rollback, one writer at a time.

Modules, one job each: `partitions` (which table serves a movie; index parameters), `manifest` (what readers see;
the publish history), `lease` (the single-writer lease), `reader` (Store: search and lookups), `plan` (what a
publish changes, decided in one Ray task), `writer` (publish), `tables` (one table's nightly change, compaction and
indexes, in a Ray task), `maintenance` (compaction, retention, status), `models` (the store's copies of served
models), `recall` (ANN recall of the served indexes).
"""

from typing import TYPE_CHECKING

from genre_ray.errors import LeaseError, StoreError
from genre_ray.lazy import lazy_attributes
from genre_ray.sql import sql_in, sql_str
from genre_ray.store.lease import writer_lease
from genre_ray.store.partitions import ivf_pq_params, partition_tables, route, table_name, table_names
from genre_ray.store.reader import RESULT_COLUMNS, TITLE_KEY, VECTOR, Filters, Publish, Store, View, title_key

__all__ = [
    "RESULT_COLUMNS",
    "TITLE_KEY",
    "VECTOR",
    "Filters",
    "LeaseError",
    "Publish",
    "PublishResult",
    "Store",
    "StoreError",
    "View",
    "ivf_pq_params",
    "partition_tables",
    "publish",
    "route",
    "sql_in",
    "sql_str",
    "table_name",
    "table_names",
    "title_key",
    "writer_lease",
]

if TYPE_CHECKING:  # type checkers and IDEs see the lazy names below
    from genre_ray.store.writer import PublishResult, publish


# Lazy: publish imports torch (the model, the spectrum actors). Readers, and Ray workers that run the table and plan
# tasks, import this package without paying for it.
_LAZY = {"publish": "writer", "PublishResult": "writer"}

__getattr__ = lazy_attributes(__name__, _LAZY)
