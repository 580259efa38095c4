"""The `genre-ray` command: a thin layer over the library (jobs/*.py are the `ray job submit` twins)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from genre_ray import errors
from genre_ray.config import Config, load_config
from genre_ray.errors import ConfigError
from genre_ray.layout import RunLayout

log = logging.getLogger("genre_ray")

SAMPLE_TITLE = "Alien"
# Commands that run pipeline stages: they get a log file in the workdir and the quiet Ray output.
STAGE_COMMANDS = ("run", "nightly", "ingest", "embed", "train", "publish", "evaluate")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`--set train.epochs=3 --set catalog.paths=[a.csv]` -> {"train.epochs": 3, "catalog.paths": ["a.csv"]}.

    Values are YAML scalars / flow collections (safe_load: data only), so they arrive typed and pydantic validates
    them like the same key written in the config file.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
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


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", help="YAML config (default: config.py's defaults; `make run` passes configs/local.yaml)"
    )
    p.add_argument("--workdir", help="override `workdir` (where the run's artifacts live)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.epochs=5 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = parse_overrides(args.overrides)
    if args.workdir:
        overrides["workdir"] = args.workdir
    return load_config(args.config, overrides)


def _stage_cmd(stages: list[str]):
    def run(cfg: Config, args: argparse.Namespace) -> int:
        from genre_ray.pipeline import nightly_plan, run_stages

        plan = nightly_plan(args.retrain) if stages == ["nightly"] else list(stages)
        report = run_stages(
            cfg, plan, promote=getattr(args, "promote", False), break_lock=getattr(args, "break_lock", False)
        )
        # The end of the output is what a person reads: accounting, timings, where the record is, the sample.
        for line in _closing_lines(report):
            print(line)
        print(f"run {report.run_id} {report.status}: {RunLayout.of(cfg.workdir, cfg.storage.options).run_json}")
        if "publish" in report.outputs and getattr(args, "sample", True):
            _print_sample(cfg)
        return 0

    return run


def _closing_lines(report: Any) -> list[str]:
    """The row ledger and per-stage timings of a finished run, one line each."""
    ledger = report.ledger
    lines = []
    if "catalog_in" in ledger:
        rows = f"rows: {ledger['catalog_in']} in = {ledger['catalog_ok']} ok + {ledger['catalog_rejected']} rejected"
        if "embedded" in ledger:
            rows += f" | {ledger['embedded']} embedded, {ledger['reused']} reused, {ledger['removed']} removed"
        if "published" in ledger:
            rows += f" | {ledger['published']} published"
        if "consistent" in ledger:
            rows += " (every ok row served)" if ledger["consistent"] else " (MISMATCH: see run.json)"
        lines.append(rows)
    timed = {k: v["seconds"] for k, v in report.results.items() if "seconds" in v}
    if timed:
        parts = " | ".join(f"{k} {v:.1f}s" for k, v in timed.items())
        lines.append(f"stages: {parts} | total {sum(timed.values()):.1f}s")
    ingest = report.outputs.get("ingest")
    if ingest is not None and (warning := ingest.poor_text()):
        lines.append(f"WARNING {warning}")
    return lines


def _print_sample(cfg: Config) -> None:
    from genre_ray.recommend import Recommender, format_results

    rec = Recommender(cfg, RunLayout.of(cfg.workdir, cfg.storage.options))
    try:
        results = rec.similar(SAMPLE_TITLE, k=5)
    except LookupError:
        return
    print(f'\nsample: genre-ray similar "{SAMPLE_TITLE}" --k 5')
    print(format_results(results))


# ---- query arguments: argparse `type=` validators over genre_ray.query (the service's checks and messages), so a
# bad value exits 2 with "argument --x: ..." and usage ----


def _arg(check):
    def parse(text: str):
        from genre_ray.query import QueryError

        try:
            return check(text)
        except QueryError as err:
            raise argparse.ArgumentTypeError(err.message) from None

    return parse


def year_range(text: str) -> tuple[int | None, int | None]:
    """'1990-1999', '2000-', '-1999' or '1995' -> inclusive (lo, hi); None is an open end."""
    from genre_ray.query import check_years

    return _arg(check_years)(text)


def _add_query_args(p: argparse.ArgumentParser) -> None:
    from genre_ray import query

    p.add_argument(
        "--k", type=_arg(query.check_k), default=None, help=f"how many results, 1..{query.MAX_K} (default: recommend.k)"
    )
    p.add_argument("--language", type=_arg(query.check_language), help="only this original language, e.g. en")
    p.add_argument("--years", type=year_range, help="year range, e.g. 1990-1999, 2000-, -1999 or 1995")
    p.add_argument("--exclude", help=f"comma-separated movie ids to leave out (at most {query.MAX_EXCLUDE})")
    p.add_argument(
        "--popularity-weight",
        type=_arg(lambda t: query.check_unit_interval(t, "popularity_weight")),
        default=None,
        help="blend with a popularity prior, 0..1 (default: the publish's serving parameters)",
    )
    p.add_argument(
        "--mmr",
        type=_arg(lambda t: query.check_unit_interval(t, "mmr")),
        default=None,
        help="MMR diversity lambda, 0..1 (1 = pure relevance)",
    )
    p.add_argument("--json", action="store_true", help="print the HTTP service's JSON answer (publish + results)")


def _ranking(args: argparse.Namespace):
    """The parsed flags through the shared checks (the per-flag ones already ran as argparse types)."""
    from genre_ray import query

    return query.Ranking(
        k=args.k,
        language=args.language,
        year_range=args.years,
        exclude_ids=tuple(query.check_ids(args.exclude, "exclude", query.MAX_EXCLUDE)),
        popularity_weight=args.popularity_weight,
        mmr_lambda=args.mmr,
    )


def _print_answer(view: Any, results: Any, as_json: bool) -> None:
    """--json: exactly the service's answer (the publish, then the results); otherwise the table a person reads."""
    from genre_ray.query import response
    from genre_ray.recommend import format_results

    print(json.dumps(response(view, results), indent=2, ensure_ascii=False) if as_json else format_results(results))


def _query_error(err: Exception) -> int:
    print(f"error: argument --{err.param.replace('_', '-')}: {err.message}", file=sys.stderr)
    return 2


def _similar(cfg: Config, args: argparse.Namespace) -> int:
    from genre_ray import query
    from genre_ray.recommend import Recommender

    try:
        q = query.similar(args.title, _ranking(args))
    except query.QueryError as err:
        return _query_error(err)
    rec = Recommender(cfg, RunLayout.of(cfg.workdir, cfg.storage.options))
    _warn_unknown_excludes(rec, q.ranking.exclude_ids)
    _print_answer(*query.run_similar(rec, q), args.json)
    return 0


def _for_user(cfg: Config, args: argparse.Namespace) -> int:
    from genre_ray import query
    from genre_ray.recommend import Recommender

    try:
        q = query.for_user(args.history, args.weights, args.negative, _ranking(args))
    except query.QueryError as err:
        return _query_error(err)
    rec = Recommender(cfg, RunLayout.of(cfg.workdir, cfg.storage.options))
    _warn_unknown_excludes(rec, q.ranking.exclude_ids)
    _print_answer(*query.run_for_user(rec, q), args.json)
    return 0


def _serve(cfg: Config, args: argparse.Namespace) -> int:
    import time

    from genre_ray.runtime import init_ray
    from genre_ray.serve import deployment
    from genre_ray.store import Store

    Store(RunLayout.of(cfg.workdir, cfg.storage.options).store_dir).require_manifest()  # a clear error, not a replica's
    init_ray(cfg.ray)
    url = deployment.start(cfg, args.host, args.port, args.replicas)
    print(f"serving {cfg.workdir} at {url} (docs: {url}/docs); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        deployment.stop()
    return 0


def _warn_unknown_excludes(rec: Any, ids: Sequence[str]) -> None:
    """An --exclude id the store does not serve excludes nothing: most likely a typo, so say which."""
    if not ids:
        return
    served = set(rec.store.get(ids, ["movie_id"])["movie_id"].to_pylist())
    unknown = [i for i in dict.fromkeys(ids) if i not in served]
    if unknown:
        print(
            f"warning: --exclude: no movie with id {', '.join(map(repr, unknown))} in the store; ignored",
            file=sys.stderr,
        )


def _rollback(cfg: Config, args: argparse.Namespace) -> int:
    from genre_ray.store import Store, StoreError, writer_lease
    from genre_ray.store.models import restore_model

    layout = RunLayout.of(cfg.workdir, cfg.storage.options)
    store = Store(layout.store_dir)
    with writer_lease(store.dir, f"rollback-{args.to or 'previous'}", cfg.store.lease_timeout_s, args.break_lock):
        target = store.rollback(args.to)
        # model/ must hold the model readers are served, or the next nightly would republish the newer one
        try:
            restore_model(store.dir, target["model_version"], layout.model_dir)
        except StoreError as err:
            print(f"warning: model/ not re-exported: {err}", file=sys.stderr)
    tables = ", ".join(f"{name}@v{info['version']}" for name, info in target["tables"].items())
    print(f"readers now on run {target['run_id']} (model {target.get('model_version')}, pinned): {tables}")
    print("the nightly keeps serving this model until `nightly --retrain` or `publish --promote`")
    return 0


def _store(cfg: Config, args: argparse.Namespace) -> int:
    from genre_ray.store import Store
    from genre_ray.store.maintenance import format_status, status

    print(format_status(status(Store(RunLayout.of(cfg.workdir, cfg.storage.options).store_dir))))
    return 0


def _add_writer_args(p: argparse.ArgumentParser, promote: bool = False) -> None:
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="remove another writer's lease on the store first (only when that writer is known to be dead)",
    )
    if promote:
        p.add_argument(
            "--promote",
            action="store_true",
            help="publish the model in model/ even if a rollback pinned the store to an earlier model",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genre-ray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        add_config_args(p)
        p.set_defaults(handler=handler)
        return p

    p = command(
        "run",
        "the main job: ingest, embed, train, publish (then a sample query)",
        _stage_cmd(["ingest", "embed", "train", "publish"]),
    )
    p.add_argument("--no-sample", dest="sample", action="store_false")
    _add_writer_args(p)
    p = command(
        "nightly",
        "incremental catalog-wide re-embedding and publish (trains only if no model)",
        _stage_cmd(["nightly"]),
    )
    p.add_argument("--retrain", action="store_true", help="retrain the classifier (re-infers every movie)")
    _add_writer_args(p, promote=True)
    for stage in ("ingest", "embed", "train", "publish", "evaluate"):
        p = command(stage, f"run only the {stage} stage", _stage_cmd([stage]))
        p.set_defaults(sample=False, retrain=False)
        if stage != "evaluate":
            _add_writer_args(p, promote=stage == "publish")

    p = command("similar", "movies like a title or id", _similar)
    p.add_argument("title", help="a title (case-insensitive) or a movie id")
    _add_query_args(p)

    p = command("for-user", "recommendations for a viewer's history", _for_user)
    p.add_argument("--history", required=True, help="comma-separated movie ids the viewer watched / liked")
    p.add_argument("--weights", help="comma-separated weights, one per history id (e.g. ratings)")
    p.add_argument("--negative", help="comma-separated movie ids the viewer wants less like (never recommended)")
    _add_query_args(p)

    p = command("serve", "the HTTP recommendation service (Ray Serve) over the published store", _serve)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="Serve replicas (each holds one view of the store)")

    p = command("rollback", "point readers back at a previous publish (and pin its model)", _rollback)
    p.add_argument("--to", help="run id to roll back to (default: the publish before the current one)")
    _add_writer_args(p)

    p = command("store", "inspect the served store", _store)
    p.add_argument("action", choices=["status"], help="status: tables, versions, sizes, fragments, indexes, history")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from genre_ray.output import configure_output

    configure_output(args.verbose)
    log_file = root = None
    try:
        cfg = config_from_args(args)
        if args.command in STAGE_COMMANDS:
            from genre_ray import storage

            root = RunLayout.of(cfg.workdir, cfg.storage.options).root
            # Ray's, Lance's and the libraries' chatter goes here; the terminal keeps progress and summaries.
            log_file = storage.local_log_file(root)
            configure_output(args.verbose, log_file)
            verbose_hint = "" if args.verbose else " (Ray and library messages; --verbose shows them here)"
            print(f"log: {log_file}{verbose_hint}")
        return args.handler(cfg, args)
    except Exception as err:
        # Input or state a user can fix: `error: <what to fix>` and the status of the one table; a bug re-raises.
        code = errors.report(err)
        if code is None:
            raise
        return code
    finally:
        if log_file is not None:
            from genre_ray import storage

            storage.upload_log(log_file, root)  # an object-store workdir keeps its log beside run.json


if __name__ == "__main__":
    sys.exit(main())
