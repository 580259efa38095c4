"""What every job entry point shares: arguments, config overrides, the Ray connection, one pipeline call."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from genre_ray.cli import add_config_args, config_from_args
from genre_ray.config import ConfigError

log = logging.getLogger("jobs")

# exit status when another writer holds the store (the CLI uses the same)
LEASE_HELD = 3


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
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2

    # Imported late: `--help` and config errors should not pay for importing Ray and the stage modules.
    from genre_ray.errors import PreconditionError, RayConnectError
    from genre_ray.layout import RunLayout
    from genre_ray.pipeline import run_stages
    from genre_ray.runtime import init_ray

    try:
        init_ray(cfg.ray)
    except RayConnectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    layout = RunLayout.of(cfg.workdir, cfg.storage.options)
    log.info("stages %s, workdir %s", list(stages), layout.root)
    from genre_ray.catalog import CatalogError
    from genre_ray.storage import StorageError
    from genre_ray.store import LeaseError

    try:
        report = run_stages(
            cfg, stages, echo=lambda line: log.info("%s", line), break_lock=getattr(args, "break_lock", False)
        )
    except LeaseError as err:
        # Another writer is on the store: not a failed run, and a distinct status for schedulers to retry on.
        log.error("%s", err)
        return LEASE_HELD
    except (CatalogError, PreconditionError, StorageError) as err:
        # Unusable input (a catalog with too many rejects, a missing bucket), not a bug: the message says what to fix.
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        # The artifact a failed nightly is diagnosed from: point at it in the job log either way.
        log.info("run record: %s", layout.run_json)
    log.info("run %s %s", report.run_id, report.status)
    return 0
