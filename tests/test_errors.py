"""Failures a user can cause end in a message that names the file or key, and the exit code of the error table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from genre_ray.catalog.reader import CatalogMissing, read_catalog
from genre_ray.config import REPO_ROOT
from genre_ray.layout import RunLayout


def genre_ray(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "genre_ray.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT)


def test_reading_a_catalog_before_ingest_names_the_path(tmp_path: Path):
    layout = RunLayout.of(tmp_path)
    with pytest.raises(CatalogMissing, match="run `genre-ray ingest`") as caught:
        read_catalog(layout)
    assert str(layout.movies) in str(caught.value)


@pytest.mark.parametrize("command", ["embed", "evaluate"])
def test_a_stage_before_ingest_exits_1_naming_the_catalog_path(tmp_path: Path, command: str):
    done = genre_ray(command, "--workdir", str(tmp_path / "w"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: {tmp_path / 'w' / 'catalog' / 'movies'}: no catalog here" in done.stderr
    assert "genre-ray ingest" in done.stderr and "Traceback" not in done.stderr
