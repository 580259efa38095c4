"""What every job entry point shares: arguments, config overrides, the Ray connection, one pipeline call."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from genre_ray.config import Config, ConfigError, load_config

log = logging.getLogger("jobs")


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`--set train.epochs=3 --set catalog.paths=[a.csv]` -> {"train.epochs": 3, "catalog.paths": ["a.csv"]}.

    Values are YAML scalars/flow collections (safe_load: data only), so numbers, booleans and lists arrive typed
    and pydantic validates them like the same key written in the config file.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=3")
        out[key.strip()] = _scalar(raw.strip())
    return out


def _scalar(raw: str) -> Any:
    if not raw:
        return ""
    value = yaml.safe_load(raw)
    # YAML 1.1 reads yes/no/on/off as booleans, but options such as embed.use_gpu=no are strings: only
    # true/false are booleans on the command line (YAML 1.2 semantics).
    if isinstance(value, bool) and raw.lower() not in ("true", "false"):
        return raw
    return value


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{name}", description=description)
    parser.add_argument("--config", help="YAML config (genre_ray.config.Config); defaults apply when omitted")
    parser.add_argument("--workdir", help="run directory; overrides the config's workdir")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one dotted config key, e.g. --set train.epochs=3 (repeatable)",
    )
    return parser


def load_job_config(args: argparse.Namespace) -> Config:
    overrides = parse_set(args.overrides)
    if args.workdir:
        overrides["workdir"] = args.workdir
    return load_config(args.config, overrides)


def run_job(name: str, description: str, stages: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """Parse, connect, run. Exit status 0 only if every stage succeeded, so Ray marks the job FAILED otherwise."""
    parser = build_parser(name, description)
    args = parser.parse_args(argv)
    return execute(args, stages)


def execute(args: argparse.Namespace, stages: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_job_config(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2

    # Imported late: `--help` and config errors should not pay for importing Ray and the stage modules.
    from genre_ray.layout import RunLayout
    from genre_ray.pipeline import run_stages
    from genre_ray.runtime import init_ray

    init_ray(cfg.ray)
    layout = RunLayout.of(cfg.workdir)
    log.info("stages %s, workdir %s", list(stages), layout.root)
    try:
        report = run_stages(cfg, stages, echo=lambda line: log.info("%s", line))
    finally:
        # The artifact a failed nightly is diagnosed from: point at it in the job log either way.
        log.info("run record: %s", layout.run_json)
    log.info("run %s %s", report.run_id, report.status)
    return 0
