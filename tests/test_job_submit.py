"""The production path end to end: `ray start --head`, `ray job submit` of the nightly job, SUCCEEDED, store checked.

The head is a real one on loopback, with its own temp dir and ports, started by this test in its own process group
and stopped by killing that group only: other Ray nodes on the machine are never touched (no `ray stop`, which
stops every Ray process of the user).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from genre_ray.layout import RunLayout
from genre_ray.store import Store
from genre_ray.synthetic import synthesize, write

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
JOB_TIMEOUT_S = 900  # the shared 2-core test machine is slow; an idle one runs this job in about a minute

pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# Token auth, as a production cluster runs it (Ray 2.60 turns it on by default): one token for this head, handed
# to the head, the submitter and the client through the environment, never written to ~/.ray.
TOKEN = secrets.token_hex(32)


def _env() -> dict[str, str]:
    # The entrypoint's `python` is the head's: put the venv first, as an activated venv (or the cluster image) does.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    return env


# The job client runs in a subprocess: the token is read from the environment once per process, and this pytest
# process may already hold another (its own local Ray session's).
_CLIENT = """
import json, sys, time
from ray.job_submission import JobSubmissionClient
mode, address, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    try:
        client = JobSubmissionClient(address)
        if mode == "ready":
            client.list_jobs()
            print(json.dumps({"status": "UP"}))
            break
        status = client.get_job_status(sys.argv[4])
        if status.is_terminal() or time.monotonic() > deadline:
            if not status.is_terminal():
                client.stop_job(sys.argv[4])
            print(json.dumps({"status": str(status.value), "logs": client.get_job_logs(sys.argv[4])}))
            break
    except Exception as err:
        if time.monotonic() > deadline:
            print(json.dumps({"status": "UNREACHABLE", "logs": repr(err)}))
            break
    time.sleep(2)
"""


def _client(mode: str, address: str, timeout: float, *args: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", _CLIENT, mode, address, str(timeout), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout + 120,
    )
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with the dashboard (job server); yields its job-server address."""
    gcs, dashboard, node_manager, object_manager, client, agent_listen, agent_grpc, metrics, env_agent = _free_ports(9)
    # A short path: Ray's unix sockets live under the temp dir and sockets allow ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="rayh6-", dir="/tmp")
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_listen}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={env_agent}",
        f"--temp-dir={temp_dir}",
        "--num-cpus=2",
        "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115  (closed in the finally below)
    # Its own session: every process of this head (GCS, raylet, dashboard, workers) is in one group we can kill.
    head = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        up = _client("ready", address, 180)
        assert up["status"] == "UP", f"the head did not come up: {up}"
        yield address
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(head: subprocess.Popen) -> None:
    """SIGTERM our head's process group, then SIGKILL what is left of it. Only the group this test started."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(1)  # the group's other members exit just after its leader


def test_nightly_job_submitted_to_a_local_head_succeeds_and_fills_the_store(ray_head: str, tmp_path: Path) -> None:
    # The real catalog format (TMDB CSV through the tmdb adapter), with one bad row of each kind mixed in.
    catalog = synthesize(40, seed=7, bad_fraction=0.1)
    source = write(catalog, tmp_path / "catalog.csv")
    workdir = tmp_path / "nightly"
    submission_id = f"nightly-test-{os.getpid()}-{int(time.time())}"
    runtime_env = {
        # .venv and runs/ are already left out through .gitignore; the job reads its catalog from tmp_path.
        "excludes": [".git", "data", "tests", "**/__pycache__", ".ruff_cache", ".pytest_cache"],
        # also set by init_ray: a job-level value must not make ray.init refuse the driver's own runtime_env
        "env_vars": {"HF_HUB_OFFLINE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"},
    }
    overrides = {
        "workdir": str(workdir),
        "catalog.paths": f"[{source}]",
        # the cluster config, shrunk to a 2-CPU head without GPUs
        "embed.use_gpu": "no",
        "embed.sort_window": 64,
        "train.use_gpu": "no",
        "train.epochs": 2,
        "train.hidden_dims": "[32]",
        "train.spectrum_dim": 8,
        "train.mixup_factor": 1,
        "train.num_workers": 1,
        "train.cpus_per_worker": 0.5,
        "store.min_partition_rows": 10,
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    submit = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            ray_head,
            "--submission-id",
            submission_id,
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--no-wait",
            "--",
            "python",
            "-m",
            "jobs.nightly",
            "--config",
            "configs/cluster.yaml",
            *sets,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    job = _client("wait", ray_head, JOB_TIMEOUT_S, submission_id)
    assert job["status"] == "SUCCEEDED", f"job {submission_id} {job['status']}:\n{job['logs'][-6000:]}"

    # Every kept movie is served, once; the unusable rows are rejects and the bad optional fields warnings, by reason.
    layout = RunLayout.of(workdir)
    store = Store(layout.store_dir)
    ids = [i for t in store.open_tables().values() for i in t.to_arrow()["movie_id"].to_pylist()]
    assert len(ids) == len(set(ids)) == catalog.kept_rows
    run = json.loads(layout.run_json.read_text())
    assert run["status"] == "succeeded"
    assert [s.rstrip("?") for s in run["stages"]] == ["ingest", "embed", "train", "publish"]
    assert all(run["results"][s]["status"] == "ok" for s in ("ingest", "embed", "train", "publish"))
    ingest = run["results"]["ingest"]["result"]
    assert ingest["rows_in"] == 40 and ingest["rejects_by_reason"] == catalog.expected_rejects
    assert ingest["field_warnings_by_reason"] == catalog.expected_field_warnings
    assert run["results"]["publish"]["result"]["rows_total"] == catalog.kept_rows
    assert str(layout.run_json) in job["logs"]  # the job log points at the record a failed night is diagnosed from
