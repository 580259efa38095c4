from pathlib import Path

import pytest

from genre_ray.cli import parse_overrides
from genre_ray.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def test_defaults_need_no_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert Path(cfg.catalog.paths[0]).exists(), "the embedded default catalog ships with the repo"


def test_local_yaml_loads_and_matches_defaults_where_it_is_silent():
    cfg = load_config(REPO / "configs" / "local.yaml")
    assert cfg.train.spectrum_dim == 64
    assert cfg.store.partition_key == "language"


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "train.epochz: unknown key" in str(err.value)


def test_ill_typed_key_names_key_and_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: many\nembed:\n  batch_size: -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "train.epochs" in msg and "'many'" in msg
    assert "embed.batch_size" in msg


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_yaml_is_never_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("workdir: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_overrides_are_dotted_and_typed(tmp_path):
    cfg = load_config(None, parse_overrides(["train.epochs=3", "train.hidden_dims=[32, 16]", "workdir=/tmp/x"]))
    assert cfg.train.epochs == 3
    assert cfg.train.hidden_dims == [32, 16]
    assert cfg.workdir == "/tmp/x"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match=r"train\.nope: unknown key"):
        load_config(None, {"train.nope": 1})
