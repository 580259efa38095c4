"""Query arguments are validated before anything runs: a message, exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from factories import catalog_table
from test_store import embeddings_for, make_run

from genre_ray.cli import main
from genre_ray.config import REPO_ROOT
from genre_ray.store import publish


def genre_ray(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "genre_ray.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=REPO_ROOT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["similar", "Alien", "--years", "abc"], "argument --years: 'abc' is not a year range: use 1990-1999"),
        (["similar", "Alien", "--years", "2005-1990"], "argument --years: '2005-1990': the first year is after"),
        (["similar", "Alien", "--k", "-3"], "argument --k: '-3': must be 1 or more"),
        (["similar", "Alien", "--k", "ten"], "argument --k: 'ten' is not a whole number"),
        (["similar", "Alien", "--mmr", "7"], "argument --mmr: '7': must be between 0 and 1"),
        (["similar", "Alien", "--mmr", "nan"], "argument --mmr: 'nan': must be between 0 and 1"),
        (["similar", "Alien", "--popularity-weight", "-0.1"], "argument --popularity-weight: '-0.1': must be between"),
        (["for-user", "--history", "1,2", "--weights", "5,x"], "argument --weights: 'x' is not a number"),
        (["for-user", "--history", "1,2", "--weights", "0,0"], "argument --weights: '0,0': give at least one weight"),
        (["for-user", "--history", "1,2", "--weights", "5,-1"], "argument --weights: '-1': weights must be finite"),
    ],
)
def test_bad_query_arguments_exit_2_with_a_message(args, message):
    done = genre_ray(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_weights_must_match_the_history(tmp_path, capsys):
    assert main(["for-user", "--history", "1,2,3", "--weights", "5,4", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: argument --weights: 2 weights for 3 history ids" in err


def test_good_year_forms_parse():
    from genre_ray.cli import year_range

    assert [year_range(t) for t in ("1990-1999", "2000-", "-1999", "1995", " 1990 - 1999 ")] == [
        (1990, 1999),
        (2000, None),
        (None, 1999),
        (1995, 1995),
        (1990, 1999),
    ]


def test_unknown_language_lists_the_languages_of_the_store(ray_session, tmp_path, capsys):
    catalog = catalog_table(40)
    cfg, layout = make_run(tmp_path, catalog)
    publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    assert main(["similar", "Movie 3", "--workdir", str(tmp_path), "--language", "eng"]) == 2
    err = capsys.readouterr().err
    assert "error: --language 'eng': no movie in the store has it; languages (movies): en (30), fr (10)" in err
    # a known language with nothing in the year range is an empty answer, not an error
    assert main(["similar", "Movie 3", "--workdir", str(tmp_path), "--language", "fr", "--years", "1870-1871"]) == 0
    assert "(no results)" in capsys.readouterr().out


_QUERY = """
import json, sys
from genre_ray.cli import main
code = main(sys.argv[1:])
print(json.dumps([code, sorted(m for m in ("ray", "scipy", "sklearn") if m in sys.modules)]))
"""


def test_a_query_starts_without_ray_or_the_metrics_stack(ray_session, tmp_path):
    """`similar` / `for-user` read the store and the model: importing Ray (~0.7 s) or scipy and scikit-learn (~1.5 s)
    for them was a third of every query's time."""
    catalog = catalog_table(40)
    cfg, layout = make_run(tmp_path, catalog)
    publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for args in (["similar", "Movie 3"], ["for-user", "--history", "1003,1005"]):
        done = subprocess.run(
            [sys.executable, "-c", _QUERY, *args, "--workdir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=REPO_ROOT,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == json.dumps([0, []]), done.stdout
