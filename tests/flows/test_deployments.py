"""Every deployment in deployments/prefect.yaml points at a flow that imports, and the config
file it names by default exists and validates (run configs and comparison configs alike)."""

import importlib
from pathlib import Path

import pytest

from bstar.flows.serve import read_deployments

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = read_deployments(REPO / "deployments" / "prefect.yaml")


def test_names_are_unique_and_cover_the_user_facing_flows():
    names = [d["name"] for d in DEPLOYMENTS]
    assert len(names) == len(set(names))
    assert {"bstar-run", "evaluate", "rescore", "prm-run", "compare"} <= set(names)


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_is_a_flow_and_its_default_config_validates(dep):
    from prefect import Flow

    from bstar.config import load_compare_config, load_config

    module, _, name = dep["entrypoint"].partition(":")
    assert isinstance(getattr(importlib.import_module(module), name), Flow)
    config = (dep.get("parameters") or {}).get("config")
    if config:
        path = REPO / config
        (load_compare_config if dep["name"] == "compare" else load_config)(path)


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_form_defaults_pass_the_servers_parameter_validation(dep, monkeypatch):
    """`bstar serve` registers the YAML's contents as the form's default: the server must accept
    them against the flow's own parameter schema (what it checks when a run is created)."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from bstar.flows.serve import form_defaults

    monkeypatch.chdir(REPO)  # serve's working directory
    module, _, name = dep["entrypoint"].partition(":")
    fn = getattr(importlib.import_module(module), name).fn
    params = form_defaults(dep.get("parameters") or {}, dep["entrypoint"])
    if "config" in params:
        assert isinstance(params["config"], dict) and "storage" in str(params["config"])
    schema = parameter_schema(fn).model_dump_for_openapi()
    validate(params, schema, raise_on_error=True, ignore_required=True)
    # and a mistyped nested key is refused there, before any run starts
    if isinstance(params.get("config"), dict):
        bad = {**params, "config": {**params["config"], "iteratons": 2}}
        with pytest.raises(Exception, match="iteratons"):
            validate(bad, schema, raise_on_error=True, ignore_required=True)
