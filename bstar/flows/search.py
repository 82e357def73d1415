"""B-STaR's configuration search (DESIGN.md §1.1) as a sub-flow.

Samples the fixed search subset at every grid temperature, scores it, and picks the
(temperature, threshold) cell with the best balance score. Methods that fix a knob search a
grid with that knob pinned (the ablations); with a single cell there is nothing to search.
"""

from __future__ import annotations

from prefect import flow

from bstar.tasks.common import load_cfg
from bstar.tasks.sampling import sample_candidates
from bstar.tasks.scoring import score_candidates
from bstar.tasks.selection import search_config


@flow(name="bstar-search", flow_run_name="{run_id}-search-{iteration}")
def configuration_search(run_id: str, iteration: int, policy: str, scorer: str, cfg_json: str) -> dict:
    cfg = load_cfg(cfg_json)
    plan = cfg.search_plan()
    if len(plan["temperatures"]) * len(plan["thresholds"]) == 1:
        return {"temperature": plan["temperatures"][0], "threshold": plan["thresholds"][0], "balance_score": None}
    sample_candidates(run_id, iteration, "search", "search", policy, plan["temperatures"], cfg.sampling.k, cfg_json)
    score_candidates(run_id, iteration, "search", scorer, cfg_json)
    return search_config(run_id, iteration, scorer, plan["thresholds"], plan["fixed"], cfg_json)
