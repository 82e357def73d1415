"""bstar.flows.params: one resolution of a flow's config parameter, whatever form it comes in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bstar.config import ConfigError, RunConfig, load_compare_config, load_config
from bstar.flows.params import config_markdown, describe_source, resolve_compare_config, resolve_config

REPO = Path(__file__).resolve().parents[2]
SMOKE = "deployments/configs/smoke.yaml"


def test_path_mapping_and_model_resolve_to_the_same_config(monkeypatch):
    monkeypatch.chdir(REPO)  # a relative YAML path resolves against the working directory
    from_path = resolve_config(SMOKE, ["iterations=1"], root="/tmp/lake-a")
    mapping = json.loads(load_config(SMOKE).to_json())
    from_mapping = resolve_config(mapping, ["iterations=1"], root="/tmp/lake-a")
    from_model = resolve_config(load_config(SMOKE), ["iterations=1"], root="/tmp/lake-a")
    assert from_path.to_json() == from_mapping.to_json() == from_model.to_json()
    assert from_path.iterations == 1 and from_path.storage.root == "/tmp/lake-a"


def test_root_parameter_wins_over_the_config_and_its_overrides(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = resolve_config(SMOKE, ["storage.root=/tmp/from-override"], root="/tmp/from-root")
    assert cfg.storage.root == "/tmp/from-root"
    assert resolve_config(SMOKE).storage.root == "./lake"


def test_relative_path_from_another_directory_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"config file not found: {SMOKE}"):
        resolve_config(SMOKE)


def test_a_bad_form_field_is_one_line_naming_it():
    with pytest.raises(ConfigError) as err:
        resolve_config({"search": {"temperaturs": [0.7]}})
    assert str(err.value) == "invalid run config:\n  search.temperaturs: unknown key"
    with pytest.raises(ConfigError, match="RunConfig model; got int"):
        resolve_config(3)


def test_model_keeps_its_secrets_through_resolution():
    cfg = RunConfig.model_validate({"storage": {"root": "s3://b/p", "key": "AKIA", "secret": "s3cr3t"}})
    again = resolve_config(cfg)
    assert again.storage.secret.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in config_markdown("r", again, "the form", None)


def test_compare_config_resolves_with_the_base_root(monkeypatch):
    monkeypatch.chdir(REPO)
    cc = resolve_compare_config("deployments/configs/demo.yaml", root="/tmp/lake-c")
    assert cc.base.storage.root == "/tmp/lake-c"
    assert resolve_compare_config(json.loads(load_compare_config("deployments/configs/demo.yaml").model_dump_json()),
                                  root="/tmp/lake-c").model_dump_json() == cc.model_dump_json()


def test_config_artifact_text(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = resolve_config(SMOKE, ["iterations=1"])
    text = config_markdown("smoke-1", cfg, describe_source(SMOKE), ["iterations=1"])
    assert f"- source: `{os.path.join(str(REPO), SMOKE)}`" in text
    assert "- overrides: `iterations=1`" in text
    assert "iterations: 1\n" in text and "  temperatures:\n  - 0.6\n  - 1.0\n" in text
    assert describe_source({"a": 1}) == "the run's parameters (the form or the API)"
