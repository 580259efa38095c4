"""What every job entry point shares: arguments, config overrides, the Ray connection, one pipeline call."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from genre_ray import errors
from genre_ray.cli import add_config_args, config_from_args

log = logging.getLogger("jobs")


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{name}", description=description)
    add_config_args(parser)
    parser.add_argument(
        "--break-lock", action="store_true", help="remove another writer's lease on the store first (a dead writer)"
    )
    return parser


def run_job(name: str, description: str, stages: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """Parse, connect, run. Exit status 0 only if every stage succeeded, so Ray marks the job FAILED otherwise."""
    parser = build_parser(name, description)
    args = parser.parse_args(argv)
    return execute(args, stages)


def execute(args: argparse.Namespace, stages: Sequence[str]) -> int:
    from genre_ray.output import configure_output

    # A job log is read after the fact: our own INFO lines, short and line-based; Ray's chatter stays in its
    # session logs (and Ray Data logs one total-progress line, not one per operator).
    configure_output(verbose=False, console_level=logging.INFO)
    layout = None
    try:
        cfg = config_from_args(args)
        # Imported late: `--help` and config errors should not pay for importing Ray and the stage modules.
        from genre_ray.layout import RunLayout
        from genre_ray.pipeline import run_stages

        layout = RunLayout.of(cfg.workdir, cfg.storage.options)
        log.info("stages %s, workdir %s", list(stages), layout.root)
        report = run_stages(
            cfg, stages, echo=lambda line: log.info("%s", line), break_lock=getattr(args, "break_lock", False)
        )
    except Exception as err:
        # The CLI's table (genre_ray.errors): a message and its status (3, a held lease, is one a scheduler retries
        # on); a bug re-raises, and the job fails with its traceback.
        code = errors.report(err)
        if code is None:
            raise
        return code
    finally:
        if layout is not None:
            # The artifact a failed nightly is diagnosed from: point at it in the job log either way.
            log.info("run record: %s", layout.run_json)
    log.info("run %s %s", report.run_id, report.status)
    return 0
