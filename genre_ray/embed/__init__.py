"""The embed stage: catalog documents -> encoder vectors, on a Ray Data actor pool, incremental by content hash.

Modules, one job each: `dataset` (where the embeddings live; readers), `diff` (which movies need vectors, in one
Ray task), `actors` (sizing the encoder pool; the map_batches callable), `stats` (the meter actor and token
accounting), `stage` (embed_catalog: diff, encode, write).

Every name below is imported on first use. Ray imports a module's package in every process that runs a function
or actor defined in it: the encoder actors import `actors`, the diff task `diff`, retention `dataset`, and none of
them should pay for the others (lance_ray alone is ~3 s of imports per process, torch ~3 s).
"""

from typing import TYPE_CHECKING

from genre_ray.lazy import lazy_attributes

if TYPE_CHECKING:  # type checkers and IDEs see the lazy names below
    from genre_ray.embed.dataset import embeddings_uri, load_embeddings, open_embeddings, read_embeddings
    from genre_ray.embed.stage import EmbedStats, embed_catalog

__all__ = [
    "EmbedStats",
    "embed_catalog",
    "embeddings_uri",
    "load_embeddings",
    "open_embeddings",
    "read_embeddings",
]
_LAZY = {
    "EmbedStats": "stage",
    "embed_catalog": "stage",
    "embeddings_uri": "dataset",
    "load_embeddings": "dataset",
    "open_embeddings": "dataset",
    "read_embeddings": "dataset",
}

__getattr__ = lazy_attributes(__name__, _LAZY)
