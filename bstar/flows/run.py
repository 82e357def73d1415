"""The whole run (DESIGN.md §1): record it, warm up, evaluate the start, then `iterations` rounds.

    from bstar.flows.run import bstar_run
    bstar_run(config="deployments/configs/smoke.yaml")            # or a dict, or `bstar run CONFIG`

Resume: every stage is cached under `{root}/_prefect/{run_id}`. Retrying the flow run (same
Prefect flow-run id) or calling it again with the same `run_id` skips completed stages; an
existing run always continues with the config it recorded in `runs`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from bstar import code_version
from bstar.config import RunConfig, config_from_json, load_config, parse_config
from bstar.flows.evaluate import evaluate_policy
from bstar.flows.iteration import iteration
from bstar.preflight import preflight
from bstar.tasks.common import lake_of, result_storage
from bstar.tasks.data import record_run
from bstar.tasks.evaluation import publish_report
from bstar.tasks.training import warm_up


def resolve_config(config: dict | str, overrides: list[str] | None = None) -> RunConfig:
    """A YAML path or an already-parsed mapping, plus `key=value` overrides."""
    return load_config(config, overrides) if isinstance(config, str) else parse_config(config, overrides)


def default_run_id(cfg: RunConfig) -> str:
    # The flow-run id survives a UI "Retry", so the retried run finds its cached stages.
    fid = str(flow_run.get_id() or "local")
    return cfg.run_id or f"{cfg.name}-{fid[:8]}"


def recorded_config(cfg: RunConfig, run_id: str) -> RunConfig:
    """A run that already exists continues with the config it recorded (its cache keys depend on
    it); only where its lake lives, where its stages run and where its metrics are mirrored are taken
    from the caller."""
    lake = lake_of(cfg)
    if not lake.exists("runs", run_id, 0):
        return cfg
    stored = config_from_json(lake.read("runs", run_id, 0)["config"][0])
    stored.storage, stored.execution, stored.tracking = cfg.storage, cfg.execution, cfg.tracking
    if stored.to_json() != cfg.to_json():
        get_run_logger().warning("run %s exists: continuing with its recorded config, not the one given", run_id)
    return stored


@flow(name="bstar-run", log_prints=True)
def bstar_run(config: dict | str, run_id: str | None = None, overrides: list[str] | None = None) -> dict:
    cfg = resolve_config(config, overrides)
    run_id = run_id or default_run_id(cfg)
    cfg = recorded_config(cfg, run_id)
    preflight(cfg)  # started from the UI or a deployment, the same checks as `bstar run`
    cfg_json = cfg.to_json()
    cached = result_storage(cfg, run_id)

    record_run(run_id, cfg_json, code_version())
    initial = warm_up.with_options(result_storage=cached)(run_id, cfg_json)["policy"]
    start = evaluate_policy.with_options(result_storage=cached)(run_id, 0, initial, cfg_json) if cfg.eval.start else None

    policy, rounds = initial, []
    for i in range(1, cfg.iterations + 1):
        summary = iteration.with_options(result_storage=cached)(run_id, i, policy, initial, cfg_json)
        policy = summary["policy"]
        rounds.append(summary)
    publish_report(run_id, cfg_json)
    return {"run_id": run_id, "root": cfg.storage.root, "start": start, "rounds": rounds, "policy": policy}
