"""Process reward model flows: Math-Shepherd annotation, PRM training, and B-STaR with the PRM.

    from bstar.flows.prm import prm_run
    prm_run(config="deployments/configs/prm-demo.yaml")           # or `bstar prm run CONFIG`

`prm_run` reads like the algorithm: record the run, warm up the policy, annotate steps
(`annotate_steps`), train the PRM (`train_prm`), evaluate it against the arith truth
(`evaluate_prm`), then run the B-STaR rounds with reward = 1[correct] + prm, reporting Best-of-K /
Reward@K-S ranked by answer-only, answer+PRM and PRM-only rewards side by side every round.
Every stage is a cached task (resume: call again with the same run_id, or `bstar prm run
--resume RUN_ID`); annotation is cached per chunk of queries.
"""

from __future__ import annotations

from prefect import flow

from bstar.config import ConfigError, RunConfig
from bstar.tasks.common import load_cfg


@flow(name="bstar-annotate-steps", flow_run_name="{run_id}-annotate-{iteration}", log_prints=True)
def annotate_steps(run_id: str, iteration: int, policy: str, cfg_json: str, completer: str | None = None) -> dict:
    """Math-Shepherd step labels for the run's annotation queries, one cached stage per chunk."""
    from bstar.tasks.prm import annotate_chunk, n_chunks
    from bstar.tasks.shards import run_shards

    cfg = load_cfg(cfg_json)
    completer = completer or cfg.reward.prm_train.completer or policy
    # each chunk is a shard: a cached task run here, or on the Ray cluster with engine `ray`
    calls = [dict(run_id=run_id, iteration=iteration, chunk=c, policy=policy, completer=completer, cfg_json=cfg_json)
             for c in range(n_chunks(cfg, run_id))]
    done = run_shards(cfg, annotate_chunk, calls, "sampling")
    total = {k: sum(d[k] for d in done) for k in ("queries", "solutions", "steps", "rollouts", "seconds")}
    sample_s = sum(d["sample_s"] + d["rollout_s"] for d in done)
    total["generations_per_s"] = round((total["solutions"] + total["rollouts"]) / max(sample_s, 1e-9), 1)
    total["steps_per_s"] = round(total["steps"] / max(total["seconds"], 1e-9), 2)
    print(f"annotated {total['steps']} steps of {total['solutions']} solutions ({total['rollouts']} rollouts) "
          f"in {total['seconds']:.0f}s")
    return total


@flow(name="bstar-train-prm", flow_run_name="{run_id}-train-prm-{iteration}", log_prints=True)
def train_prm(run_id: str, iteration: int, init: str, cfg_json: str) -> dict:
    """Train a bstar-scalar PRM (backbone `init` + scalar head) on the annotations; evaluate it."""
    from bstar.tasks.prm import train_prm_stage

    trained = train_prm_stage(run_id, iteration, init, cfg_json)
    print(f"PRM saved to {trained['prm']} (final BCE {trained['final_loss']})")
    return trained


@flow(name="bstar-prm-run", log_prints=True, validate_parameters=False)
def prm_run(config: RunConfig | str, root: str | None = None, run_id: str | None = None,
            overrides: list[str] | None = None) -> dict:
    """B-STaR with a process reward model trained first (when `reward.prm` is unset).

    Args:
        config: The run config (`reward.kind: answer+prm`): the form, or the path of a run YAML
            (relative to the flow run's working directory).
        root: The lake root, a directory or s3://bucket/prefix; overrides `storage.root`.
        run_id: Names the run; unset: `<name>-<flow run id>`. An existing run id resumes that run.
        overrides: `key.path=value` edits applied on top of the config.
    """
    from prefect import get_run_logger

    from bstar import code_version
    from bstar.flows.evaluate import evaluate_policy
    from bstar.flows.iteration import iteration
    from bstar.flows.params import (
        config_failure, default_run_id, describe_source, name_flow_run,
        publish_config, resolve_config,
    )
    from bstar.tasks.common import result_storage
    from bstar.tasks.data import record_run
    from bstar.tasks.prm import evaluate_prm, prm_checkpoint_dir, prm_ranking_metrics
    from bstar.tasks.training import warm_up

    try:
        cfg = resolve_config(config, overrides, root)
    except ConfigError as err:  # one line on the run, not a traceback
        return config_failure(err)
    if cfg.reward.kind != "answer+prm":
        raise ValueError("prm_run needs reward.kind: answer+prm (use `bstar run` for answer-only rewards)")
    run_id = run_id or cfg.run_id or default_run_id(cfg.name)
    train_it = not cfg.reward.prm
    if train_it:
        cfg.reward.prm = prm_checkpoint_dir(cfg, run_id)  # where train_prm saves it: every stage scores with it
    get_run_logger().info("PRM run %s: lake %s; PRM %s %s", run_id, cfg.storage.root,
                          "trained into" if train_it else "from", cfg.reward.prm)
    name_flow_run(run_id)
    publish_config(run_id, cfg, describe_source(config), overrides)
    cfg_json = cfg.to_json()
    cached = result_storage(cfg, run_id)

    record_run(run_id, cfg_json, code_version())
    initial = warm_up.with_options(result_storage=cached)(run_id, cfg_json)["policy"]

    prm_report = {}
    if train_it:
        # 1. Math-Shepherd: sample solutions, roll out from every step prefix, label the steps.
        annotated = annotate_steps.with_options(result_storage=cached)(run_id, 0, initial, cfg_json)
        # 2. Train the PRM from the policy's weights; 3. measure it against the arith truth.
        trained = train_prm.with_options(result_storage=cached)(run_id, 0, initial, cfg_json)
        quality = evaluate_prm.with_options(result_storage=cached)(run_id, 0, trained["prm"], initial, cfg_json)
        prm_report = {"annotation": annotated, "training": trained, "quality": quality}

    start = evaluate_policy.with_options(result_storage=cached)(run_id, 0, initial, cfg_json)
    ranking = prm_ranking_metrics.with_options(result_storage=cached)
    start["ranking"] = ranking(run_id, 0, cfg_json)
    policy, rounds = initial, []
    for i in range(1, cfg.iterations + 1):
        summary = iteration.with_options(result_storage=cached)(run_id, i, policy, initial, cfg_json)
        summary["ranking"] = ranking(run_id, i, cfg_json)
        policy = summary["policy"]
        rounds.append(summary)
    return {"run_id": run_id, "root": cfg.storage.root, "prm": cfg.reward.prm, **prm_report,
            "start": start, "rounds": rounds, "policy": policy}
