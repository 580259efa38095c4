"""Where a run keeps its artifacts. Every stage reads and writes through this, never through ad-hoc paths."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a temp file beside `path`, which then replaces it: a reader sees the old file or the new one,
    never half of one, even if the writer is killed mid-way."""
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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, workdir: str | Path) -> RunLayout:
        return cls(Path(workdir).resolve())

    @property
    def catalog_dir(self) -> Path:
        return self.root / "catalog"

    @property
    def movies(self) -> Path:
        """The normalised catalog: a Parquet dataset directory (one or more files), schema.CATALOG."""
        return self.catalog_dir / "movies"

    @property
    def rejects(self) -> Path:
        return self.catalog_dir / "rejects.parquet"

    @property
    def field_warnings(self) -> Path:
        """Kept rows whose optional fields did not parse: one row per (source row, field), schema.WARNINGS."""
        return self.catalog_dir / "warnings.parquet"

    @property
    def accounting(self) -> Path:
        return self.catalog_dir / "accounting.json"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model_dir(self) -> Path:
        """The published classifier: weights (safetensors) + vocabulary + config, see model.py."""
        return self.root / "model"

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"
