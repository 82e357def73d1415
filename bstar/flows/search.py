"""B-STaR's configuration search (DESIGN.md §1.1) as a sub-flow.

Samples the fixed search subset at every grid temperature, scores it, and picks the
(temperature, threshold) cell with the best balance score. Methods that fix a knob search a
grid with that knob pinned (the ablations); with a single cell there is nothing to search.
"""

from __future__ import annotations

import logging

from prefect import flow

from bstar.tasks.common import load_cfg
from bstar.tasks.sampling import sample_candidates
from bstar.tasks.scoring import score_candidates
from bstar.tasks.selection import search_config

log = logging.getLogger(__name__)


@flow(name="bstar-search", flow_run_name="{run_id}-search-{iteration}")
def configuration_search(run_id: str, iteration: int, policy: str, scorer: str, cfg_json: str) -> dict:
    cfg = load_cfg(cfg_json)
    plan = cfg.search_plan()
    n_t, n_thr = len(plan["temperatures"]), len(plan["thresholds"])
    if n_t * n_thr == 1:
        log.info("search (round %d): a single cell, nothing to search: t=%g, τ=%g", iteration,
                 plan["temperatures"][0], plan["thresholds"][0])
        return {"temperature": plan["temperatures"][0], "threshold": plan["thresholds"][0], "balance_score": None}
    log.info("search (round %d): %d temperature(s) x %d threshold(s) = %d cells, %d queries x K=%d at each "
             "temperature", iteration, n_t, n_thr, n_t * n_thr, cfg.search.queries, cfg.sampling.k)
    sample_candidates(run_id, iteration, "search", "search", policy, plan["temperatures"], cfg.sampling.k, cfg_json)
    score_candidates(run_id, iteration, "search", scorer, cfg_json)
    return search_config(run_id, iteration, scorer, plan["thresholds"], plan["fixed"], cfg_json)
