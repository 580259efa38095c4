"""Where a run's bytes live: a local path or an object-store URI, behind one set of operations.

`location(uri, options)` turns a workdir (or any path under it) into a `pathlib.Path` (local, POSIX) or an
`ObjectPath` (`s3://`, `gs://`, `az://`, over pyarrow.fs). Stages use the pathlib slice both offer, and for what
differs between the two they call the operations below, each written once per kind of location:

| operation | local path | object store |
| --- | --- | --- |
| `atomic_write` | temp file + fsync + `os.replace` | temp file, then one PUT (visible whole or not at all) |
| `put_if_absent` | temp file + `os.link` (fails if the name exists) | PUT with `If-None-Match: *` (obstore) |
| `arrow_fs` | `(None, path)`: pyarrow / Ray pick the local filesystem | `(pyarrow S3FileSystem, "bucket/key")` |
| `lance_options` | None | the resolved options (object_store keys) |

Ray Data gets `filesystem=`, Ray Train `storage_filesystem=`, Lance / LanceDB / lance-ray `storage_options=`;
fsspec (catalog inputs) gets `s3://` through the same pyarrow filesystem (`catalog_inputs`). Nothing else in the
code base looks at a URI's scheme.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from genre_ray.storage.objects import SCHEMES, Backend, ObjectPath, StorageError, parse
from genre_ray.storage.options import redacted, resolve

StoragePath = Path | ObjectPath

__all__ = [
    "Backend",
    "ObjectPath",
    "StorageError",
    "StoragePath",
    "arrow_fs",
    "atomic_write",
    "check_access",
    "is_remote",
    "lance_options",
    "location",
    "put_if_absent",
    "redacted",
    "remove_tree",
    "tree_bytes",
]

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_remote(path: str | StoragePath) -> bool:
    if isinstance(path, ObjectPath):
        return True
    if isinstance(path, Path):
        return False
    m = _URI.match(str(path))
    return bool(m) and m.group(1).lower() in SCHEMES


def location(path: str | StoragePath, options: Mapping[str, str] | None = None) -> StoragePath:
    """A workdir or artifact path as a Path (local; `file://` too) or an ObjectPath (object-store URI).

    `options` are the config's `storage.options`; the standard AWS variables of the environment fill the rest."""
    if isinstance(path, (Path, ObjectPath)):
        return path
    text = str(path)
    if is_remote(text):
        return parse(text, resolve(options))
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(text).expanduser().resolve()


# ----------------------------------------------------------------------------------------------- atomic writes


def atomic_write(path: StoragePath, write: Callable[[Path], object]) -> None:
    """`write` fills a local temp file, which then becomes `path` in one step: a reader sees the old content or the
    new, never half of it, even if the writer is killed mid-way (rename locally, a single PUT on object stores)."""
    if isinstance(path, ObjectPath):
        with tempfile.TemporaryDirectory(prefix="genre-ray-") as d:
            tmp = Path(d) / path.name
            write(tmp)
            path.write_bytes(tmp.read_bytes())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def put_if_absent(path: StoragePath, data: bytes) -> bool:
    """Create `path` holding `data` only if nothing is there yet; True if this call created it.

    Of any number of concurrent callers on any number of hosts exactly one gets True, and the object is complete
    whenever it is visible: the primitive behind the publish switch and the writer lease."""
    if isinstance(path, ObjectPath):
        return _put_if_absent_object(path, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # link(2) fails with EEXIST if the name exists: the POSIX create-if-absent of a complete file
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _put_if_absent_object(path: ObjectPath, data: bytes) -> bool:
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    try:
        obstore.put(_obstore(path.backend, path.bucket), path.object_key, data, mode="create")
    except (AlreadyExistsError, PreconditionError):
        return False
    except Exception as err:  # obstore raises its own hierarchy for auth, network and missing buckets
        raise StorageError(f"{path}: {err}") from None
    return True


_STORES: dict[tuple[Backend, str], Any] = {}


def _obstore(backend: Backend, bucket: str) -> Any:
    key = (backend, bucket)
    if key not in _STORES:
        from obstore.store import from_url

        opts = backend.option_map
        allow_http = opts.pop("allow_http", "false").lower() == "true"
        _STORES[key] = from_url(f"{backend.scheme}://{bucket}", config=opts, client_options={"allow_http": allow_http})
    return _STORES[key]


# ----------------------------------------------------------------------------------------------- trees


def remove_tree(path: StoragePath) -> None:
    if isinstance(path, ObjectPath):
        path.remove_tree()
    else:
        shutil.rmtree(path, ignore_errors=True)


def tree_bytes(path: StoragePath) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------------------------- the clients


def arrow_fs(path: StoragePath) -> tuple[Any, str]:
    """(filesystem, path) for pyarrow, Ray Data (`filesystem=`) and Ray Train (`storage_filesystem=`); the
    filesystem is None for a local path, which keeps those libraries on their local defaults."""
    if isinstance(path, ObjectPath):
        return path.fs, path.key
    return None, str(path)


def lance_options(path: StoragePath) -> dict[str, str] | None:
    """`storage_options` for Lance, LanceDB and lance-ray (object_store keys; None: local)."""
    if isinstance(path, ObjectPath):
        return path.backend.option_map or None
    return None


def check_access(root: StoragePath) -> None:
    """Fail early, naming the URI, when a run could not write its workdir: a missing bucket, a denied permission,
    an unreachable endpoint. A probe object is written and removed (object stores); local paths are created."""
    if not isinstance(root, ObjectPath):
        root.mkdir(parents=True, exist_ok=True)
        return
    import pyarrow.fs as pafs

    try:
        info = root.fs.get_file_info(root.bucket)
    except OSError as err:
        raise StorageError(f"{root}: cannot reach bucket {root.bucket!r}: {err}") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{root}: bucket {root.bucket!r} does not exist (or is not visible with these credentials)")
    probe = root / f".access-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except StorageError as err:
        raise StorageError(f"{root}: cannot write here: {err}") from None


def local_log_file(root: StoragePath) -> Path:
    """Where a command's log file goes: inside a local workdir, or a local mirror for an object-store one (a log
    handler appends line by line, which an object cannot do); `upload_log` copies it into the workdir after."""
    if isinstance(root, Path):
        return root / "logs" / "genre-ray.log"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(root))
    return Path(tempfile.gettempdir()) / "genre-ray-logs" / slug / "genre-ray.log"


def upload_log(local: Path, root: StoragePath) -> None:
    """Best effort: a log that cannot be uploaded (the bucket is the problem being reported) stays local."""
    if isinstance(root, ObjectPath) and local.exists():
        with contextlib.suppress(StorageError, OSError):
            atomic_write(root / "logs" / local.name, lambda tmp: shutil.copyfile(local, tmp))
