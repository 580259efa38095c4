import json

import pytest

from genre_ray.catalog import CatalogError
from genre_ray.cli import main
from genre_ray.config import load_config
from genre_ray.layout import RunLayout
from genre_ray.pipeline import expand, run_stages


def test_stage_shorthands_expand_in_order():
    assert expand(["all"]) == ["ingest", "embed", "train", "publish", "evaluate"]
    assert expand(["nightly"]) == ["ingest", "embed", "train?", "publish"]
    with pytest.raises(ValueError, match="unknown stage 'embedd'"):
        expand(["embedd"])


def test_failed_run_leaves_a_diagnosable_run_json(ray_session, tmp_path):
    missing = tmp_path / "nope.csv"
    cfg = load_config(None, {"workdir": str(tmp_path / "run"), "catalog.paths": [str(missing)]})
    with pytest.raises(CatalogError, match=r"nope\.csv"):
        run_stages(cfg, ["ingest", "embed"], echo=lambda _: None)
    report = json.loads(RunLayout.of(cfg.workdir).run_json.read_text())
    assert report["status"] == "failed"
    assert report["failed_stage"] == "ingest"
    assert "nope.csv" in report["error"]
    assert "Traceback" in report["traceback"]
    assert report["config"]["catalog"]["paths"] == [str(missing)]
    # one file per run id, so a later run does not erase this one
    assert (RunLayout.of(cfg.workdir).root / "runs" / f"{report['run_id']}.json").exists()


def test_cli_reports_bad_config_and_missing_store_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("store:\n  partition_kee: language\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "store.partition_kee: unknown key" in capsys.readouterr().err

    assert main(["similar", "Heat", "--workdir", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
