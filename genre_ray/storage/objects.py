"""A path inside an object store, with the slice of pathlib.Path the stages use, over pyarrow.fs.

Local workdirs stay `pathlib.Path` (every POSIX guarantee the code had is kept); an `s3://`, `gs://` or `az://`
workdir becomes an `ObjectPath`, so `layout.model_dir / "model.json"`, `.exists()`, `.glob("*.json")`,
`.read_text()` read the same in every stage whatever the workdir is. What an object store cannot do like a
filesystem (rename, exclusive create, directories) is not offered here: `genre_ray.storage` has those operations
(atomic_write, put_if_absent, remove_tree), each implemented once per kind of location.

An ObjectPath pickles as its URI plus the resolved options (Ray ships it to tasks and actors); the pyarrow
filesystem is rebuilt once per process. Errors other than "not found" are re-raised as StorageError naming the
URI, so a missing bucket or a denied permission reads as such.
"""

from __future__ import annotations

import fnmatch
import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow.fs as pafs

from genre_ray.errors import StorageError
from genre_ray.storage.options import pyarrow_s3_kwargs

T = TypeVar("T")
SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az", "abfss": "az"}


@dataclass(frozen=True, order=True)
class Backend:
    """How to reach one kind of object store: its scheme and the resolved options (object_store keys)."""

    scheme: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def option_map(self) -> dict[str, str]:
        return dict(self.options)

    def arrow(self) -> pafs.FileSystem:
        return _arrow_fs(self)


@functools.cache
def _arrow_fs(backend: Backend) -> pafs.FileSystem:
    opts = backend.option_map
    if backend.scheme == "s3":
        return pafs.S3FileSystem(**pyarrow_s3_kwargs(opts))
    if backend.scheme == "gs":
        return pafs.GcsFileSystem()
    return pafs.AzureFileSystem(account_name=opts.get("azure_storage_account_name", ""))


def _reraise(op: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(op)
    def wrapped(self: ObjectPath, *args: Any, **kwargs: Any) -> T:
        try:
            return op(self, *args, **kwargs)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise
        except OSError as err:
            raise StorageError(f"{self}: {err}") from None

    return wrapped


@dataclass(frozen=True)
class _Stat:
    st_size: int


@dataclass(frozen=True, order=True)
class ObjectPath:
    """`<scheme>://<bucket>/<key>`; `key` here is pyarrow's path form, `bucket/key` without a trailing slash."""

    backend: Backend
    key: str

    # -- names ------------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.backend.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __truediv__(self, other: str) -> ObjectPath:
        return ObjectPath(self.backend, f"{self.key}/{str(other).strip('/')}")

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        head = self.key.rsplit("/", 1)[0] if "/" in self.key else self.key
        return ObjectPath(self.backend, head)

    @property
    def bucket(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def object_key(self) -> str:
        """The key inside the bucket (what an S3 request names)."""
        return self.key.split("/", 1)[1] if "/" in self.key else ""

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    @property
    def fs(self) -> pafs.FileSystem:
        return self.backend.arrow()

    # -- queries ----------------------------------------------------------------------------------------------
    @_reraise
    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.key)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def stat(self) -> _Stat:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        return _Stat(int(info.size or 0))

    @_reraise
    def _list(self, recursive: bool) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(self.key, recursive=recursive, allow_not_found=True))

    def iterdir(self) -> Iterator[ObjectPath]:
        for info in sorted(self._list(False), key=lambda i: i.path):
            yield ObjectPath(self.backend, info.path.rstrip("/"))

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Entries directly under this path whose name matches (pathlib's one-level glob: no `**`)."""
        for child in self.iterdir():
            if fnmatch.fnmatchcase(child.name, pattern):
                yield child

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        for info in sorted(self._list(True), key=lambda i: i.path):
            child = ObjectPath(self.backend, info.path.rstrip("/"))
            if fnmatch.fnmatchcase(child.name, pattern):
                yield child

    # -- reading and writing ----------------------------------------------------------------------------------
    @_reraise
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.key) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    @_reraise
    def write_bytes(self, data: bytes) -> int:
        """One PUT (a multipart upload for large data): readers see the old object or the new one, never half."""
        with self.fs.open_output_stream(self.key) as f:
            f.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def open(self, mode: str = "rb") -> io.RawIOBase | Any:
        if mode != "rb":
            raise ValueError(f"{self}: only 'rb' is supported; write through write_bytes or storage.atomic_write")
        return self.fs.open_input_file(self.key)

    @_reraise
    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no directories: a prefix exists once an object is written under it."""

    @_reraise
    def remove_tree(self) -> None:
        if self.exists():
            self.fs.delete_dir(self.key)


def parse(uri: str, backend_options: dict[str, str]) -> ObjectPath:
    scheme, _, rest = uri.partition("://")
    kind = SCHEMES[scheme.lower()]
    options = tuple(sorted(backend_options.items())) if kind == "s3" else ()
    return ObjectPath(Backend(kind, options), rest.strip("/"))
