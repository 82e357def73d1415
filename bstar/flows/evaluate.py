"""Evaluation: greedy Pass@1 and sampled metrics of a policy on the run's test split(s).

`evaluate_policy` is the per-round sub-flow; `evaluate` is the stand-alone flow (deployment
`evaluate`) that scores any checkpoint on configured test datasets in a run of its own:

    evaluate(checkpoint="lake/_checkpoints/RUN/iter-3", config="deployments/configs/smoke.yaml", root="lake")
"""

from __future__ import annotations

from prefect import flow

from bstar.config import ConfigError, RunConfig
from bstar.tasks.common import load_cfg
from bstar.tasks.evaluation import compute_metrics
from bstar.tasks.sampling import sample_candidates
from bstar.tasks.scoring import score_candidates, verifier_of


@flow(name="bstar-evaluate-policy", flow_run_name="{run_id}-eval-{iteration}")
def evaluate_policy(run_id: str, iteration: int, policy: str, cfg_json: str) -> dict:
    cfg = load_cfg(cfg_json)
    scorer = verifier_of(cfg)
    for ds in cfg.data.test:
        split = f"test-{ds.name}"
        sample_candidates(run_id, iteration, "greedy", split, policy, [0.0], 1, cfg_json)
        if cfg.eval.k:
            sample_candidates(run_id, iteration, "eval", split, policy, [cfg.eval.temperature], cfg.eval.k, cfg_json)
    score_candidates(run_id, iteration, "greedy", scorer, cfg_json)
    if cfg.eval.k:
        score_candidates(run_id, iteration, "eval", scorer, cfg_json)
    return compute_metrics(run_id, iteration, scorer, bool(cfg.eval.k), cfg_json)


@flow(name="bstar-evaluate", log_prints=True, validate_parameters=False)
def evaluate(checkpoint: str, config: RunConfig | str, root: str | None = None, run_id: str | None = None,
             overrides: list[str] | None = None) -> dict:
    """Evaluate any checkpoint on the config's test datasets, as a run of its own (iteration 0).

    Args:
        checkpoint: The policy to evaluate: a checkpoint directory, a hub id, or a lake checkpoint URL.
        config: The run config whose `data.test`, `eval` and `sampling` sections are used: the form,
            or the path of a run YAML (relative to the flow run's working directory).
        root: The lake root, a directory or s3://bucket/prefix; overrides `storage.root`.
        run_id: Names the evaluation run; unset: `eval-<name>-<flow run id>`.
        overrides: `key.path=value` edits applied on top of the config.
    """
    from prefect import get_run_logger

    from bstar import code_version
    from bstar.flows.params import (
        config_failure, default_run_id, describe_source, name_flow_run,
        publish_config, resolve_config,
    )
    from bstar.tasks.common import result_storage
    from bstar.tasks.data import record_run

    try:
        cfg = resolve_config(config, overrides, root)
    except ConfigError as err:  # one line on the run, not a traceback
        return config_failure(err)
    cfg.name = f"eval-{cfg.name}"
    run_id = run_id or cfg.run_id or default_run_id(cfg.name)
    get_run_logger().info("evaluation run %s of %s: lake %s", run_id, checkpoint, cfg.storage.root)
    name_flow_run(run_id)
    publish_config(run_id, cfg, describe_source(config), overrides)
    cfg_json = cfg.to_json()
    record_run(run_id, cfg_json, code_version())
    metrics = evaluate_policy.with_options(result_storage=result_storage(cfg, run_id))(run_id, 0, checkpoint, cfg_json)
    return {"run_id": run_id, "checkpoint": checkpoint, **metrics}
