"""bench/gpu_check.sh --dry-run: the GPU check's own logic (plan, steps, report) on the CPU, with tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import main, plan

ROOT = Path(__file__).resolve().parents[1]


def test_plan_is_the_gpu_check_the_issue_asks_for(tmp_path):
    import argparse

    args = argparse.Namespace(n=20_000, epochs=3, dry_run=False)
    steps = {s.name: s for s in plan(args, tmp_path)}
    assert "--n" in steps["embed bench"].argv and "20000" in steps["embed bench"].argv
    pipeline = " ".join(steps["pipeline on the GPU"].argv)
    assert "embed.use_gpu=yes" in pipeline and "train.use_gpu=yes" in pipeline
    # each step is bounded: 6.5 minutes at most, leaving the rest of an 8-minute lease to the installs
    assert sum(s.timeout_s for s in steps.values()) <= 390


def test_refuses_without_a_gpu_unless_dry_run(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_writes_the_json_and_markdown_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["dry_run"] is True
    assert [s["status"] for s in data["steps"]] == ["ok", "ok", "ok"]
    assert {"ingest", "embed", "train", "publish"} <= set(data["pipeline_stages"])
    methods = [r["method"] for r in data["embed"]["rows"]]
    assert "ray pipeline torch, steady state" in methods
    table = (tmp_path / "gpu_check.md").read_text()
    assert "DRY RUN" in table and "| ray pipeline torch, steady state |" in table
    # which side limits: the encoder actor's rate beside the CPU tokenizer's and the model's busy share
    assert data["embed"]["tokenizer_docs_per_s"] > 0 and 0 < data["embed"]["model_busy"]["torch"] <= 1
    assert "Encoder actor" in table and "CPU tokenizer" in table and "model busy" in table
