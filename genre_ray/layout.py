"""Where a run keeps its artifacts. Every stage reads and writes through this, never through ad-hoc paths."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from genre_ray import storage

# Re-exported: the stages write run artifacts through layout; the one implementation (rename, or one PUT) is storage's.
from genre_ray.storage import StoragePath, atomic_write

__all__ = ["RunLayout", "atomic_write", "atomic_write_text"]


def atomic_write_text(path: StoragePath, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@dataclass(frozen=True)
class RunLayout:
    # a local Path, or an ObjectPath for an s3:// (gs://, az://) workdir: both offer the pathlib slice used here
    root: StoragePath

    @classmethod
    def of(cls, workdir: str | StoragePath, options: Mapping[str, str] | None = None) -> RunLayout:
        """`options`: the config's `storage.options` (object-store settings); local paths ignore them."""
        return cls(storage.location(workdir, options))

    @property
    def catalog_dir(self) -> StoragePath:
        return self.root / "catalog"

    @property
    def movies(self) -> StoragePath:
        """The normalised catalog: a Parquet dataset directory (one or more files), schema.CATALOG."""
        return self.catalog_dir / "movies"

    @property
    def rejects(self) -> StoragePath:
        return self.catalog_dir / "rejects.parquet"

    @property
    def field_warnings(self) -> StoragePath:
        """Kept rows whose optional fields did not parse: one row per (source row, field), schema.WARNINGS."""
        return self.catalog_dir / "warnings.parquet"

    @property
    def accounting(self) -> StoragePath:
        return self.catalog_dir / "accounting.json"

    @property
    def embeddings_dir(self) -> StoragePath:
        return self.root / "embeddings"

    @property
    def checkpoints_dir(self) -> StoragePath:
        return self.root / "checkpoints"

    @property
    def model_dir(self) -> StoragePath:
        """The published classifier: weights (safetensors) + vocabulary + config, see model.py."""
        return self.root / "model"

    @property
    def candidate_dir(self) -> StoragePath:
        """A retrained classifier the gate did not serve (worse than the served one); `publish --promote` serves it."""
        return self.root / "model_candidate"

    @property
    def store_dir(self) -> StoragePath:
        return self.root / "store"

    @property
    def reports_dir(self) -> StoragePath:
        return self.root / "reports"

    @property
    def run_json(self) -> StoragePath:
        return self.root / "run.json"
