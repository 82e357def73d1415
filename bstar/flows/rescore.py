"""Re-score a run's stored candidates with another verifier, without sampling again.

    rescore(run_id="smoke-1a2b3c4d", scorer="gsm8k", root="./lake")

The new rewards sit beside the old ones (rewards are keyed by scorer, one part per scorer), so
`SELECT scorer, avg(correct::int) FROM rewards GROUP BY scorer` compares the two directly.
"""

from __future__ import annotations

from prefect import flow

from bstar.config import config_from_json
from bstar.storage.lake import Lake
from bstar.tasks.common import result_storage
from bstar.tasks.scoring import score_candidates


@flow(name="bstar-rescore", flow_run_name="rescore-{run_id}-{scorer}")
def rescore(run_id: str, scorer: str, root: str = "./lake") -> dict:
    lake = Lake(root)
    runs = lake.read("runs", run_id, 0)
    if runs.is_empty():
        raise ValueError(f"no run {run_id!r} under {root}")
    cfg = config_from_json(runs["config"][0])
    cfg.storage.root = root  # the lake may have moved since the run
    cfg_json = cfg.to_json()
    cands = lake.read("candidates", run_id).select("iteration", "stage").unique().sort("iteration", "stage")
    score = score_candidates.with_options(result_storage=result_storage(cfg, run_id))
    done = [score(run_id, it, stage, scorer, cfg_json) for it, stage in cands.iter_rows()]
    return {"run_id": run_id, "scorer": scorer, "partitions": len(done), "scored": sum(d["scored"] for d in done)}
