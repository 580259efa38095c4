"""Failures a user can cause end in a message that names the file or key, and the exit code of the error table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import catalog_table, write_catalog
from test_store import embeddings_for, make_run

from genre_ray import errors
from genre_ray.catalog.reader import CatalogMissing, read_catalog
from genre_ray.cli import main
from genre_ray.config import REPO_ROOT
from genre_ray.layout import RunLayout
from genre_ray.store import publish, writer_lease


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


def catalog_workdir(root: Path) -> Path:
    write_catalog(catalog_table(12), RunLayout.of(root).movies)
    return root


def test_a_missing_ratings_file_names_the_key_and_the_path(tmp_path: Path):
    work = catalog_workdir(tmp_path / "w")
    missing = tmp_path / "nowhere" / "ratings.csv"
    done = genre_ray("evaluate", "--workdir", str(work), "--set", f"eval.ratings_path={missing}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: eval.ratings_path: {missing} is not a file" in done.stderr and "Traceback" not in done.stderr


def test_an_os_error_names_the_path(tmp_path: Path):
    """A workdir that is a file: the log directory cannot be made under it."""
    not_a_dir = tmp_path / "workdir"
    not_a_dir.write_text("")
    done = genre_ray("ingest", "--workdir", str(not_a_dir))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: {not_a_dir / 'logs'}: Not a directory" in done.stderr and "Traceback" not in done.stderr


def test_describe_names_the_path_of_an_os_error(tmp_path: Path):
    try:
        (tmp_path / "a dir").mkdir()
        (tmp_path / "a dir").open().read()
    except OSError as err:
        assert errors.exit_code(err) == errors.EXIT_FAILED
        assert errors.describe(err) == f"{tmp_path / 'a dir'}: Is a directory"
    else:
        raise AssertionError("opening a directory did not fail")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.LeaseError("held"), 3),
        (errors.StoreError("no publish"), 1),
        (errors.ModelError("torn"), 1),
        (errors.TemplateError("$overveiw"), 1),
        (errors.CatalogError("no such path"), 1),
        (CatalogMissing("no catalog"), 1),
        (errors.PreconditionError("no labels"), 1),
        (errors.StorageError("no bucket"), 1),
        (errors.RayConnectError("no token"), 1),
        (errors.MovieNotFound("no movie"), 1),
        (PermissionError(13, "Permission denied", "/x"), 1),
        (errors.ConfigError("train.epoch"), 2),
        (errors.BadQuery("--language"), 2),
        (KeyError("a bug"), None),
        (ZeroDivisionError(), None),
    ],
)
def test_the_one_table(error: BaseException, code: int | None):
    assert errors.exit_code(error) == code


def job(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", f"jobs.{name}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT)


def test_jobs_end_as_the_cli_does(tmp_path: Path):
    """The same inputs through `python -m jobs.X` and `genre-ray X`: the same status and message."""
    empty = str(tmp_path / "empty")
    work = catalog_workdir(tmp_path / "w")
    missing = tmp_path / "ratings.csv"
    cases = [
        (["evaluate", "--workdir", empty], 1, "no catalog here; run `genre-ray ingest`"),
        (["evaluate", "--workdir", str(work), "--set", f"eval.ratings_path={missing}"], 1, "eval.ratings_path: "),
        (["train", "--workdir", empty, "--set", "train.epoch=3"], 2, "train.epoch"),
    ]
    for (command, *args), code, message in cases:
        for done in (job(command, *args), genre_ray(command, *args)):
            assert done.returncode == code, (command, done.stdout + done.stderr)
            assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    # another writer on the store: 3, a status of its own that a scheduler retries on
    with writer_lease(RunLayout.of(work).store_dir, "holder", 3600):
        done = job("train", "--workdir", str(work), "--set", "ray.num_cpus=1")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "holder" in done.stderr and "Traceback" not in done.stderr


def test_unknown_exclude_ids_are_named_in_a_warning(ray_session, tmp_path, capsys):
    catalog = catalog_table(40)
    cfg, layout = make_run(tmp_path, catalog)
    publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    assert main(["similar", "Movie 3", "--workdir", str(tmp_path), "--exclude", "1005,nope-1,nope-2"]) == 0
    out = capsys.readouterr()
    assert "warning: --exclude: no movie with id 'nope-1', 'nope-2' in the store; ignored" in out.err
    assert "1005" not in out.err
    assert main(["similar", "Movie 3", "--workdir", str(tmp_path), "--exclude", "1005"]) == 0
    assert "warning" not in capsys.readouterr().err
