"""One B-STaR round (DESIGN.md §1): search → sample → score → select → fine-tune → evaluate.

    iteration(run_id, iteration=1, policy=ckpt, initial=ckpt0, cfg_json=cfg.to_json())

Each stage is a cached task that writes its rows to the lake before it returns, so a rerun of
this flow skips every completed stage. Runs as a sub-flow of `bstar_run`.
"""

from __future__ import annotations

from prefect import flow

from bstar.flows.evaluate import evaluate_policy
from bstar.flows.search import configuration_search
from bstar.tasks.common import load_cfg
from bstar.tasks.evaluation import publish_round
from bstar.tasks.sampling import sample_candidates
from bstar.tasks.scoring import score_candidates, verifier_of
from bstar.tasks.selection import select_data, select_gold
from bstar.tasks.training import fine_tune


@flow(name="bstar-iteration", flow_run_name="{run_id}-round-{iteration}", log_prints=True)
def iteration(run_id: str, iteration: int, policy: str, initial: str, cfg_json: str) -> dict:
    cfg = load_cfg(cfg_json)
    scorer = verifier_of(cfg)

    # 1. Search: the (temperature, threshold) with the best balance score for the current policy.
    chosen = configuration_search(run_id, iteration, policy, scorer, cfg_json)

    # 2-3. Sample this round's queries at the chosen temperature, score, keep reward > threshold.
    if cfg.self_generated:
        sample_candidates(run_id, iteration, "train", "round", policy, [chosen["temperature"]], cfg.sampling.k, cfg_json)
        score_candidates(run_id, iteration, "train", scorer, cfg_json)
        selected = select_data(run_id, iteration, scorer, chosen["threshold"], cfg_json)
    else:  # the `sft` control arm: the same training steps on gold solutions, nothing self-generated
        selected = select_gold(run_id, iteration, cfg_json)

    # 4. Improve: SFT on the selected responses (the training mode picks the starting weights).
    trained = fine_tune(run_id, iteration, policy, initial, cfg_json)

    # 5. Evaluate the new policy on the test split(s).
    metrics = evaluate_policy(run_id, iteration, trained["policy"], cfg_json)
    summary = {**chosen, "selected": selected["selected"], "policy": trained["policy"], **metrics}
    publish_round(run_id, iteration, summary, cfg_json)
    return summary
