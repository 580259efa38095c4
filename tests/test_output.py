"""What reaches the terminal: our own lines and errors; Ray's chatter goes to the run's log file."""

from __future__ import annotations

import logging

import pytest

from genre_ray import output
from genre_ray.cli import _closing_lines


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    ray_saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in output.RAY_LOGGERS}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    for name, (handlers, propagate) in ray_saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate
    logging.captureWarnings(False)
    output.OUTPUT.verbose = False


def test_quiet_mode_routes_ray_chatter_to_the_log_file(tmp_path, capfd, restore_logging):
    log_file = tmp_path / "logs" / "genre-ray.log"
    output.configure_output(verbose=False, log_file=log_file)
    output.route_ray_loggers()
    logging.getLogger("ray.data").info("Execution plan of Dataset: noise")
    logging.getLogger("ray.train").warning("PlacementGroupCleaner: Failed to query Ray Train Controller")
    logging.getLogger("genre_ray.embed").warning("our own warning")
    logging.getLogger("ray.data").error("a real failure")
    progress = logging.getLogger("ray.data._internal.progress.logging_progress")
    progress.info("======= Running Dataset: ds =======")
    progress.info("Total Progress: 0/?")  # a sink that counts rows only at the end: says nothing
    progress.info("Total Progress: 1200/4803")
    progress.info("Total Progress: 1300/4803")  # within a minute of the last one shown
    for handler in logging.getLogger().handlers:
        handler.flush()
    err = capfd.readouterr().err
    assert "our own warning" in err and "a real failure" in err and "Total Progress: 1200/4803" in err
    assert "PlacementGroupCleaner" not in err and "Execution plan" not in err and "=======" not in err
    assert "0/?" not in err and "1300/4803" not in err
    written = log_file.read_text()
    assert "PlacementGroupCleaner" in written and "Execution plan" in written and "our own warning" in written


def test_verbose_shows_everything(tmp_path, capfd, restore_logging):
    output.configure_output(verbose=True, log_file=tmp_path / "x.log")
    output.route_ray_loggers()  # a no-op when verbose
    logging.getLogger("genre_ray.x").info("chatter")
    assert "chatter" in capfd.readouterr().err


def _report(**outputs):
    from genre_ray.pipeline import RunReport

    return RunReport(
        run_id="r1",
        workdir="w",
        stages=["ingest", "embed", "train"],
        ledger={"catalog_in": 10, "catalog_ok": 9, "catalog_rejected": 1, "embedded": 9, "reused": 0}
        | {"removed": 0, "published": 9, "consistent": True},
        results={"ingest": {"seconds": 1.0}, "embed": {"seconds": 2.5}, "train": {"status": "skipped"}},
        outputs=outputs,
    )


def test_closing_lines_are_accounting_then_timings():
    rows, stages = _closing_lines(_report())
    assert rows.startswith("rows: 10 in = 9 ok + 1 rejected") and "9 published (every ok row served)" in rows
    assert stages == "stages: ingest 1.0s | embed 2.5s | total 3.5s"


def test_closing_lines_end_with_the_poor_text_warning():
    from genre_ray.catalog.stage import IngestResult

    def ingest(no_description: int) -> IngestResult:
        return IngestResult(10, 9, 1, {"no_overview": no_description}, {}, {}, [], no_description=no_description)

    poor = ingest(6)
    *_, warning = _closing_lines(_report(ingest=poor))
    assert warning.startswith("WARNING catalog: 6 of 9 movies have neither an overview nor a tagline")
    assert len(_closing_lines(_report(ingest=ingest(4)))) == 2
