"""What every flow does with its parameters: resolve the run config, name the run, show the config.

A flow's `config` parameter is typed `RunConfig | str` (`CompareConfig | str` for `compare`), so
the Prefect UI renders the config model as a form (every field with its type, default and
description) or takes the path of a YAML file. Relative paths (the YAML file, and the relative
paths inside it such as `storage.root: ./lake`) resolve against the flow run's working directory:
the directory `bstar serve` serves from (`--workdir`, by default the folder that holds
`deployments/`), the worker's directory for a work-pool deployment, the current directory in
Python. The flows turn Prefect's own parameter validation off (`validate_parameters=False`) and
validate here instead, so a bad field reads as one `ConfigError` line naming it:

    cfg = resolve_config("deployments/configs/smoke.yaml", overrides=["iterations=1"], root="/tmp/lake")
    publish_config(run_id, cfg, source="deployments/configs/smoke.yaml")   # inside a flow run
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bstar.config import CompareConfig, ConfigError, RunConfig, apply_overrides, load_compare_config, load_config, parse_config


def _raw(config: Any, what: str) -> dict:
    """A config given as a model, a mapping or JSON text, as a plain mapping."""
    if isinstance(config, (RunConfig, CompareConfig)):
        return config.model_dump()  # keeps SecretStr values, which model_validate takes back
    if isinstance(config, dict):
        return config
    raise ConfigError(f"{what} must be a YAML path, a mapping or a {what} model; got {type(config).__name__}")


def resolve_config(config: RunConfig | dict | str, overrides: list[str] | None = None, root: str | None = None) -> RunConfig:
    """The run config from a YAML path, a mapping or a `RunConfig`, plus `key=value` overrides;
    `root` (the flows' lake-root parameter) wins over `storage.root`."""
    overrides = list(overrides or []) + ([f"storage.root={root}"] if root else [])
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    return parse_config(dict(_raw(config, "RunConfig")), overrides)


def resolve_compare_config(config: CompareConfig | dict | str, overrides: list[str] | None = None,
                           root: str | None = None) -> CompareConfig:
    """A comparison config from a YAML path, a mapping or a `CompareConfig`, plus overrides (`base.x=...`)."""
    overrides = list(overrides or []) + ([f"base.storage.root={root}"] if root else [])
    if isinstance(config, (str, Path)):
        return load_compare_config(config, overrides)
    try:
        return CompareConfig.model_validate(apply_overrides(dict(_raw(config, "CompareConfig")), overrides))
    except ValueError as err:
        raise ConfigError(f"invalid comparison config: {err}") from None


def config_failure(err: ConfigError):
    """The final state of a flow whose config cannot run: Failed, its message the error's lines
    (what the UI shows on the run), and one ERROR log line instead of a traceback of our frames.
    A Python caller still gets the `ConfigError` raised."""
    from prefect import get_run_logger
    from prefect.states import Failed

    get_run_logger().error("ConfigError: %s", err)
    return Failed(message=f"ConfigError: {err}", data=err.with_traceback(None))


def default_run_id(name: str) -> str:
    """`<name>-<first 8 of the flow-run id>`: the flow-run id survives a UI "Retry", so the retried
    run finds its cached stages."""
    from prefect.runtime import flow_run

    return f"{name}-{str(flow_run.get_id() or 'local')[:8]}"


def name_flow_run(run_id: str) -> None:
    """Rename the current flow run after the bstar run it carries, so the UI's run list shows run
    ids instead of Prefect's random names (which a run started from a form gets)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    fid = flow_run.get_id()
    if not fid or flow_run.get_name() == run_id:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(fid, name=run_id)
    except Exception:  # noqa: BLE001 - a name is a convenience, never a failure
        pass


def config_yaml(cfg: RunConfig | CompareConfig) -> str:
    """The config as YAML, secrets left out (as `runs.config` stores it)."""
    exclude = {"storage": {"key", "secret"}} if isinstance(cfg, RunConfig) else {"base": {"storage": {"key", "secret"}}}
    return yaml.safe_dump(json.loads(cfg.model_dump_json(exclude=exclude)), sort_keys=False, width=100)


def config_markdown(run_id: str, cfg: RunConfig | CompareConfig, source: str, overrides: list[str] | None) -> str:
    lines = [f"# Config of {run_id}", "", f"- source: {source}"]
    if overrides:
        lines.append("- overrides: " + ", ".join(f"`{o}`" for o in overrides))
    if isinstance(cfg, RunConfig):
        lines += [f"- method: {cfg.method}, {cfg.iterations} rounds; {cfg.search_summary()}",
                  f"- lake root: {cfg.storage.root}"]
    else:
        lines += [f"- arms: {', '.join(a.name for a in cfg.arms)}; seeds {cfg.seeds}",
                  f"- lake root: {cfg.base.storage.root}"]
    return "\n".join(lines + ["", "```yaml", config_yaml(cfg).rstrip(), "```"])


def describe_source(config: Any) -> str:
    """Where a config came from, for the config artifact: the YAML file's absolute path or the form."""
    if isinstance(config, (str, Path)):
        return f"`{Path(config).resolve()}`"
    return "the run's parameters (the form or the API)"


def publish_config(run_id: str, cfg: RunConfig | CompareConfig, source: str, overrides: list[str] | None = None) -> str:
    """The resolved config as a markdown artifact of the current flow run; returns its key."""
    from prefect.artifacts import create_markdown_artifact

    from bstar.reports.artifacts import artifact_key

    key = artifact_key(run_id, "config")
    create_markdown_artifact(markdown=config_markdown(run_id, cfg, source, overrides), key=key,
                             description=f"the resolved config of {run_id}")
    return key
