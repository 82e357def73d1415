"""The whole run (DESIGN.md §1): record it, warm up, evaluate the start, then `iterations` rounds.

    from bstar.flows.run import bstar_run
    bstar_run(config="deployments/configs/smoke.yaml", root="/tmp/lake")   # or `bstar run CONFIG`

`config` is a YAML path, a mapping or a `RunConfig` (the Prefect UI renders it as a form; see
bstar.flows.params for how paths resolve). The top-level flow run shows the resolved config, a
round × metric table updated after every round, and a link to the HTML report the run writes
into its lake (`{root}/_reports/{run_id}.html`).

Resume: every stage is cached under `{root}/_prefect/{run_id}`. Retrying the flow run (same
Prefect flow-run id) or calling it again with the same `run_id` skips completed stages; an
existing run always continues with the config it recorded in `runs`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from bstar import code_version
from bstar.config import ConfigError, RunConfig, config_from_json
from bstar.flows.evaluate import evaluate_policy
from bstar.flows.iteration import iteration
from bstar.flows.params import (
    config_failure, default_run_id, describe_source, name_flow_run,
    publish_config, resolve_config,
)
from bstar.preflight import preflight
from bstar.tasks.common import lake_of, result_storage
from bstar.tasks.data import record_run
from bstar.tasks.evaluation import publish_report, publish_rounds
from bstar.tasks.tracking import track_round_task
from bstar.tasks.training import warm_up


def recorded_config(cfg: RunConfig, run_id: str) -> RunConfig:
    """A run that already exists continues with the config it recorded (its cache keys depend on
    it); only where its lake lives, where its stages run and where its metrics are mirrored are
    taken from the caller."""
    lake = lake_of(cfg)
    if not lake.exists("runs", run_id, 0):
        return cfg
    stored = config_from_json(lake.read("runs", run_id, 0)["config"][0])
    stored.storage, stored.execution, stored.tracking = cfg.storage, cfg.execution, cfg.tracking
    if stored.to_json() != cfg.to_json():
        get_run_logger().warning("run %s exists: continuing with its recorded config, not the one given", run_id)
    return stored


def round_line(i: int, summary: dict) -> str:
    """One log line per round: what it chose, what it kept, what it scored."""
    bs = summary.get("balance_score")
    pass1 = ", ".join(f"{split} {v:.4f}" for split, v in (summary.get("pass@1") or {}).items())
    return (f"round {i}: t={summary.get('temperature')}, τ={summary.get('threshold')}"
            + ("" if bs is None else f" (balance score {bs:.4f})")
            + f"; {summary.get('selected')} responses selected; greedy Pass@1 {pass1}")


@flow(name="bstar-run", log_prints=True, validate_parameters=False)
def bstar_run(config: RunConfig | str, root: str | None = None, run_id: str | None = None,
              overrides: list[str] | None = None) -> dict:
    """One B-STaR run end to end: warm-up, start evaluation, then the rounds.

    Args:
        config: The run config: fill in the form, or give the path of a run YAML (relative paths
            resolve against the working directory of the flow run).
        root: The lake root, a directory or s3://bucket/prefix; overrides `storage.root`.
        run_id: Names the run; unset: `<name>-<flow run id>`. An existing run id resumes that run.
        overrides: `key.path=value` edits applied on top of the config, e.g. `iterations=1`.
    """
    log = get_run_logger()
    try:
        cfg = resolve_config(config, overrides, root)
    except ConfigError as err:  # one line on the run, not a traceback
        return config_failure(err)
    run_id = run_id or cfg.run_id or default_run_id(cfg.name)
    cfg = recorded_config(cfg, run_id)
    log.info("run %s: lake %s; %s, %d rounds; %s", run_id, cfg.storage.root, cfg.method, cfg.iterations,
             cfg.search_summary())
    name_flow_run(run_id)
    publish_config(run_id, cfg, describe_source(config), overrides)
    preflight(cfg)  # started from the UI or a deployment, the same checks as `bstar run`
    cfg_json = cfg.to_json()
    cached = result_storage(cfg, run_id)

    record_run(run_id, cfg_json, code_version())
    initial = warm_up.with_options(result_storage=cached)(run_id, cfg_json)["policy"]
    start = evaluate_policy.with_options(result_storage=cached)(run_id, 0, initial, cfg_json) if cfg.eval.start else None
    if start:
        publish_rounds(run_id, 0, cfg_json)
        track_round_task(run_id, 0, start, cfg_json)

    policy, rounds = initial, []
    for i in range(1, cfg.iterations + 1):
        summary = iteration.with_options(result_storage=cached)(run_id, i, policy, initial, cfg_json)
        policy = summary["policy"]
        rounds.append(summary)
        log.info(round_line(i, summary))
        publish_rounds(run_id, i, cfg_json)
        track_round_task(run_id, i, summary, cfg_json)
    report = publish_report(run_id, cfg_json)
    publish_rounds(run_id, cfg.iterations, cfg_json, report=report["link"])
    log.info("report: %s", report["html"])
    return {"run_id": run_id, "root": cfg.storage.root, "start": start, "rounds": rounds, "policy": policy,
            "report": report["html"]}
