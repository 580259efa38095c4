"""Where a run keeps its artifacts. Every stage reads and writes through this, never through ad-hoc paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
