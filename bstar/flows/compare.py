"""The paper's comparison at small scale (Tables 1-3 of B-STaR): several methods, one shared start.

    bstar compare deployments/configs/compare-arith.yaml        # or compare(config=...) in Python
    bstar compare CONFIG --resume ID --only bstar               # rerun / continue one arm

`warm_start` trains the shared warm-up checkpoint once (and the PRM, when an arm's reward is
answer+prm) and evaluates it. Every arm is then an ordinary `bstar-run` sub-flow (run id
`ID-<arm>`) from that checkpoint with the same sampling and training budgets, so each arm resumes
and reruns on its own. `compare_table` gathers the final metrics with 95% intervals and B-STaR's
per-round temperature / threshold / balance score from the lake, and the HTML report overlays
every arm.
"""

from __future__ import annotations

import json

from prefect import flow

from bstar.config import CompareConfig, ConfigError
from bstar.tasks.common import load_cfg


@flow(name="bstar-warm-start", flow_run_name="{run_id}")
def warm_start(run_id: str, cfg_json: str) -> dict:
    """The shared start: SFT warm-up, the PRM when the config trains one, and its evaluation."""
    from bstar import code_version
    from bstar.flows.evaluate import evaluate_policy
    from bstar.flows.prm import annotate_steps, train_prm
    from bstar.tasks.data import record_run
    from bstar.tasks.prm import evaluate_prm
    from bstar.tasks.training import warm_up

    cfg = load_cfg(cfg_json)
    record_run(run_id, cfg_json, code_version())
    policy = warm_up(run_id, cfg_json)["policy"]
    prm = {}
    if cfg.reward.kind == "answer+prm" and cfg.reward.prm_train is not None:
        # Math-Shepherd labels from the warm-up policy, then a PRM on its backbone (bstar.flows.prm)
        annotate_steps(run_id, 0, policy, cfg_json)
        trained = train_prm(run_id, 0, policy, cfg_json)
        prm = {"prm_quality": evaluate_prm(run_id, 0, trained["prm"], policy, cfg_json)}
    start = evaluate_policy(run_id, 0, policy, cfg_json)
    return {"policy": policy, "prm": cfg.reward.prm, "start": start, **prm}


@flow(name="bstar-compare", log_prints=True, validate_parameters=False)
def compare(config: CompareConfig | str, root: str | None = None, compare_id: str | None = None,
            only: list[str] | None = None, overrides: list[str] | None = None) -> dict:
    """Several methods from one shared warm-up, with equal budgets, and their comparison table.

    Args:
        config: The comparison config (`arms`, `seeds`, `base`): the form, or the path of a
            comparison YAML (relative to the flow run's working directory).
        root: The lake root, a directory or s3://bucket/prefix; overrides `base.storage.root`.
        compare_id: Names the comparison (its runs are `<id>-<arm>`); an existing id resumes it.
        only: Arm labels to run now; the table still shows what the lake has of the others.
        overrides: `key.path=value` edits, e.g. `base.iterations=2` or `seeds=[0,1]`.
    """
    from prefect import get_run_logger

    from bstar.config import arm_run_config
    from bstar.flows.params import (
        config_failure, default_run_id, describe_source, name_flow_run,
        publish_config, resolve_compare_config,
    )
    from bstar.flows.run import bstar_run
    from bstar.tasks.common import result_storage
    from bstar.tasks.comparison import compare_table, start_config

    try:
        cc = resolve_compare_config(config, overrides, root)
    except ConfigError as err:  # one line on the run, not a traceback
        return config_failure(err)
    compare_id = compare_id or default_run_id(cc.name)
    get_run_logger().info("comparison %s: lake %s; arms %s x seeds %s", compare_id, cc.base.storage.root,
                          ", ".join(a.name for a in cc.arms), cc.seeds)
    name_flow_run(compare_id)
    publish_config(compare_id, cc, describe_source(config), overrides)
    start_cfg = start_config(cc, compare_id)
    start_id = f"{compare_id}-start"
    start = warm_start.with_options(result_storage=result_storage(start_cfg, start_id))(start_id, start_cfg.to_json())

    for arm in cc.arms:
        if only and arm.name not in only:
            continue  # not run now; the table uses whatever the lake already has of it
        for seed in cc.seeds:
            run_id = cc.run_id(compare_id, arm, seed)
            cfg = arm_run_config(cc, arm, seed, policy=start["policy"], prm=start["prm"])
            # credentials stay out of flow parameters: the stages read them from the environment
            bstar_run.with_options(flow_run_name=run_id)(config=json.loads(cfg.to_json()), run_id=run_id)
    table = compare_table(compare_id, start_cfg.to_json(), cc.model_dump_json())
    return {"compare_id": compare_id, "root": cc.base.storage.root, "start": start, **table}
