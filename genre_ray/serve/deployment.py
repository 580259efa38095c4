"""The Serve deployment: one Recommender per replica, a background refresh, and how the application starts.

A replica reserves no CPU (`num_cpus=0`): a query is milliseconds of Lance work, and on a laptop-sized local node
the cores belong to Ray Data / Train when a nightly runs beside the service. Each replica holds one view of the
store; a thread checks the switch log every `refresh_s` seconds (never per query) and swaps in the next publish in
one step. Requests that took the old view finish on it.

Local mode (`genre-ray serve --workdir runs/local`) starts Serve on the local node; on a cluster `serve run
deploy/serve.yaml` (or the RayService in deploy/) imports `build` below with the same arguments.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.config import HTTPOptions

from genre_ray.config import Config, load_config
from genre_ray.layout import RunLayout
from genre_ray.recommend import Recommender
from genre_ray.serve.app import build_app
from genre_ray.store import Store

log = logging.getLogger(__name__)

APP_NAME = "genre_ray"
# How often a replica checks for a newer publish: the most a replica lags a switch (plus one open of its tables).
REFRESH_S = 1.0
# Requests a replica works on at once; the rest queue in the proxy (Serve's back-pressure).
MAX_ONGOING = 32


@serve.deployment(
    name="Recommend",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=MAX_ONGOING,
    health_check_period_s=5,
)
@serve.ingress()
class Recommend:
    """One replica: the FastAPI routes of app.py over one Recommender, built in the replica after __init__."""

    def __init__(self, config: dict[str, Any], refresh_s: float) -> None:
        cfg = Config.model_validate(config)
        layout = RunLayout.of(cfg.workdir, cfg.storage.options)
        # requests never list the switch log: the refresh thread below does, every refresh_s
        store = Store(layout.store_dir, cfg.store.nprobes, cfg.store.refine_factor, refresh_s=math.inf)
        self.rec = Recommender(cfg, layout, store)
        self._stop = threading.Event()
        threading.Thread(target=self._refresh, args=(refresh_s,), daemon=True, name="store-refresh").start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.rec)

    def _refresh(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.rec.refresh()
            except Exception:  # a store briefly unreachable: keep serving the held view, say so in the log
                log.exception("store refresh failed; still serving run %s", self.rec.view().publish.run_id)

    def check_health(self) -> None:
        self.rec.view()

    def __del__(self) -> None:
        self._stop.set()


def build(args: dict[str, Any]) -> serve.Application:
    """The application for `serve run` / a Serve config file: args `workdir`, optional `config` (a YAML path),
    `overrides` ({key: value}, as --set), `num_replicas`, `refresh_s`."""
    overrides = dict(args.get("overrides") or {})
    if args.get("workdir"):
        overrides["workdir"] = args["workdir"]
    cfg = load_config(args.get("config"), overrides)
    return application(cfg, int(args.get("num_replicas", 1)), float(args.get("refresh_s", REFRESH_S)))


def application(cfg: Config, num_replicas: int = 1, refresh_s: float = REFRESH_S) -> serve.Application:
    # only the config travels: each replica opens the store and builds its routes itself
    return Recommend.options(num_replicas=num_replicas).bind(cfg.model_dump(mode="json"), refresh_s)


def start(cfg: Config, host: str, port: int, num_replicas: int = 1, refresh_s: float = REFRESH_S) -> str:
    """Serve the store on this Ray cluster (a local node in local mode) at host:port; returns the base URL."""
    serve.start(http_options=HTTPOptions(host=host, port=port))
    serve.run(application(cfg, num_replicas, refresh_s), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def stop() -> None:
    serve.shutdown()
