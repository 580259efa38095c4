"""The HTTP service for real: Ray Serve on the session's local node (replicas reserve no CPU), a published store,
a real HTTP client on loopback; each answer equals the Recommender's, every limit gets its 4xx, a publish made
while it runs is picked up. Torn down after, so later tests get the node back as it was."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from factories import catalog_table
from test_store import embeddings_for, make_run, rewrite_catalog

from genre_ray import query, schema
from genre_ray.cli import main
from genre_ray.recommend import Recommender
from genre_ray.store import publish


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    from genre_ray.serve import deployment

    catalog = catalog_table(60)
    cfg, layout = make_run(tmp_path_factory.mktemp("serve"), catalog)
    publish(cfg, layout, run_id="r1", embeddings=embeddings_for(catalog))
    url = deployment.start(cfg, "127.0.0.1", _free_port(), refresh_s=0.2)
    yield cfg, layout, catalog, url
    deployment.stop()


def call(url: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def get(url: str, path: str, **params: object) -> tuple[int, dict]:
    return call(url, f"{path}?{urllib.parse.urlencode(params)}" if params else path)


def _files(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()}


def test_each_endpoint_answers_as_the_recommender_and_writes_nothing(service, capsys):
    cfg, layout, _, url = service
    before = _files(layout.store_dir)
    rec = Recommender(cfg, layout)
    view = rec.view()

    def want(results) -> dict:
        return json.loads(json.dumps(query.response(view, results)))

    assert get(url, "/healthz") == (200, {"status": "ok"})
    status, ready = get(url, "/readyz")
    assert status == 200 and ready["publish"] == {"run_id": "r1", "seq": 0, "model_version": view.publish.model_version}

    assert get(url, "/similar", id="1003", k=5) == (200, want(rec.similar("1003", k=5)))
    assert get(url, "/similar", title="mOvIe 3", k=5) == (200, want(rec.similar("1003", k=5)))
    filtered = rec.similar("1003", k=4, language="fr", year_range=(1980, 2005), exclude_ids=["1004"], mmr_lambda=0.5)
    status, body = get(url, "/similar", id="1003", k=4, language="fr", years="1980-2005", exclude="1004", mmr=0.5)
    assert status == 200 and body == want(filtered) and {r["language"] for r in body["results"]} == {"fr"}

    history = {"history": ["1001", "1002", "1005"], "weights": [5, 1, 3], "negative": ["1010"], "k": 6}
    expected = rec.for_user(["1001", "1002", "1005"], [5.0, 1.0, 3.0], k=6, negative=["1010"])
    assert call(url, "/for-user", history) == (200, want(expected))

    status, movie = get(url, "/movies/1003")
    row = view.get(["1003"]).to_pylist()[0]
    assert status == 200 and movie["publish"]["run_id"] == "r1"
    assert {k: movie["movie"][k] for k in ("title", "year", "language", "genres")} == {
        k: row[k] for k in ("title", "year", "language", "genres")
    }
    assert [s["genre"] for s in movie["movie"]["spectrum"]] == [
        g for g, _ in sorted(zip(view.vocab, row["genre_probs"], strict=True), key=lambda gp: -gp[1])
    ]

    # the CLI's --json prints exactly the service's answer
    assert main(["similar", "1003", "--k", "5", "--json", "--workdir", str(layout.root)]) == 0
    assert json.loads(capsys.readouterr().out) == get(url, "/similar", id="1003", k=5)[1]
    assert (
        main(["for-user", "--history", "1001,1002", "--negative", "1010", "--json", "--workdir", str(layout.root)]) == 0
    )
    assert (
        json.loads(capsys.readouterr().out)
        == call(url, "/for-user", {"history": ["1001", "1002"], "negative": ["1010"]})[1]
    )

    assert _files(layout.store_dir) == before  # read-only: no endpoint wrote anything


LONG = "x" * (query.MAX_TITLE_CHARS + 1)


@pytest.mark.parametrize(
    ("params", "param", "cli"),
    [
        ({"id": "1003", "k": "0"}, "k", ["--k", "0"]),
        ({"id": "1003", "k": str(query.MAX_K + 1)}, "k", ["--k", str(query.MAX_K + 1)]),
        ({"id": "1003", "k": "ten"}, "k", ["--k", "ten"]),
        ({"id": "1003", "years": "abc"}, "years", ["--years", "abc"]),
        ({"id": "1003", "years": "1700-1710"}, "years", ["--years", "1700-1710"]),
        ({"id": "1003", "mmr": "7"}, "mmr", ["--mmr", "7"]),
        ({"id": "1003", "popularity_weight": "nan"}, "popularity_weight", ["--popularity-weight", "nan"]),
        ({"id": "1003", "language": "e n'; DROP"}, "language", ["--language", "e n'; DROP"]),
        ({"id": "1003", "exclude": ",".join(map(str, range(query.MAX_EXCLUDE + 1)))}, "exclude", None),
        ({"title": LONG}, "title", None),
        ({}, "title", None),
    ],
)
def test_each_query_limit_gets_a_422_with_the_cli_message(service, capsys, params, param, cli):
    *_, url = service
    status, body = get(url, "/similar", **params)
    assert status == 422 and body["param"] == param, body
    if cli is not None:
        with pytest.raises(SystemExit):
            main(["similar", "1003", *cli])
        assert f"argument --{param.replace('_', '-')}: {body['error']}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"history": [str(i) for i in range(query.MAX_HISTORY + 1)]}, "history"),
        ({"history": []}, "history"),
        ({"history": ["1001"], "negative": [str(i) for i in range(query.MAX_NEGATIVE + 1)]}, "negative"),
        ({"history": ["1001", "1002"], "weights": [1.0]}, "weights"),
        ({"history": ["1001"], "weights": [-1.0]}, "weights"),
        ({"history": ["1001"], "k": 1000}, "k"),
        ({"history": ["1001"], "sql": "1=1"}, "sql"),
        ({"weights": [1.0]}, "history"),
    ],
)
def test_each_body_limit_gets_a_422(service, body, param):
    *_, url = service
    status, answer = call(url, "/for-user", body)
    assert status == 422 and answer["param"] == param, answer


def test_oversized_or_broken_bodies_and_unknown_movies(service):
    *_, url = service
    huge = json.dumps({"history": ["1001"], "pad": "x" * query.MAX_BODY_BYTES}).encode()
    status, body = call(url, "/for-user", raw=huge)
    assert status == 413 and str(query.MAX_BODY_BYTES) in body["error"]
    status, body = call(url, "/for-user", raw=b"{not json")
    assert status == 422 and "not JSON" in body["error"]
    status, body = get(url, "/similar", title="Movie 3x")
    assert status == 404 and "Movie 3" in body["close_matches"] and "close matches: 'Movie 3'" in body["error"]
    status, body = get(url, "/movies/nope")
    assert status == 404 and "'nope'" in body["error"]
    status, body = get(url, "/similar", id="1003", language="de")
    assert status == 422 and "no movie in the store has it" in body["error"]


def test_a_publish_made_while_serving_is_picked_up(service):
    cfg, layout, catalog, url = service
    rows = catalog_table(10, seed=3).to_pylist()
    for i, r in enumerate(rows):
        r["movie_id"], r["title"] = str(7000 + i), f"Late film {i}"
    bigger = pa.concat_tables([catalog, pa.Table.from_pylist(rows, schema=schema.CATALOG)])
    rewrite_catalog(layout, bigger)
    publish(cfg, layout, run_id="r2", embeddings=embeddings_for(bigger))
    deadline = time.monotonic() + 30
    while get(url, "/readyz")[1]["publish"]["run_id"] != "r2":
        assert time.monotonic() < deadline, "the service never served the new publish"
        time.sleep(0.1)
    status, body = get(url, "/similar", title="Late film 3", k=3)
    assert status == 200 and body["publish"]["run_id"] == "r2" and body["publish"]["seq"] == 1
    status, movie = get(url, "/movies/7003")
    assert status == 200 and movie["movie"]["title"] == "Late film 3"


def test_the_serve_config_and_the_rayservice_deploy_the_same_application(tmp_path):
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from genre_ray.config import REPO_ROOT
    from genre_ray.serve.deployment import build

    plain = yaml.safe_load((REPO_ROOT / "deploy" / "serve.yaml").read_text())
    service = yaml.safe_load((REPO_ROOT / "deploy" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService" and service["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    for config in (plain, embedded):
        ServeDeploySchema.model_validate(config)  # Ray's own schema for `serve run` / serveConfigV2
    (app,) = plain["applications"]
    assert [{k: a[k] for k in ("import_path", "args", "route_prefix")} for a in embedded["applications"]] == [
        {k: app[k] for k in ("import_path", "args", "route_prefix")}
    ]
    assert isinstance(build({**app["args"], "workdir": str(tmp_path)}), serve.Application)
