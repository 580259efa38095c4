"""Catalog inputs on object storage: fsspec's `s3://` served by the same pyarrow filesystem as the workdir.

The catalog reader (catalog/sources.py) opens `catalog.paths` with fsspec (local files, globs, http, any fsspec
URI). fsspec has no S3 client of its own, so `s3://` (and `s3a://`) is registered here as a wrapper around
pyarrow's S3FileSystem, built from the same settings as the workdir: the environment's AWS variables and
`storage.options`. `use_options` sets those settings for this process; the ingest driver and each ingest task call
it, because a Ray worker does not share the driver's memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.arrow import ArrowFSWrapper

from genre_ray.storage.options import pyarrow_s3_kwargs, resolve

_CONFIGURED: dict[str, str] = {}


class PyArrowS3(ArrowFSWrapper):
    """fsspec filesystem for s3:// over pyarrow.fs.S3FileSystem (options from `use_options` + environment)."""

    protocol: ClassVar[tuple[str, ...]] = ("s3", "s3a")  # type: ignore[assignment]
    # instances depend on use_options(), so fsspec must not hand back one built with older settings
    cachable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(pafs.S3FileSystem(**pyarrow_s3_kwargs(resolve(_CONFIGURED))), **kwargs)

    def unstrip_protocol(self, name: str) -> str:
        return name if "://" in name else f"s3://{name.lstrip('/')}"


def use_options(options: Mapping[str, str] | None) -> None:
    """The `storage.options` catalog inputs are read with in this process."""
    _CONFIGURED.clear()
    _CONFIGURED.update({k: str(v) for k, v in (options or {}).items()})


def register() -> None:
    for proto in PyArrowS3.protocol:
        fsspec.register_implementation(proto, PyArrowS3, clobber=True)


register()
