"""Stage: score stored candidates with a verifier and store one `rewards` row per candidate.

Rewards are keyed by scorer and written to their own part (`part-<scorer>`), so stored
candidates can be re-scored with another verifier or PRM without sampling again, and a
scorer failure is stored as a status (`timeout`, `error`, ...), never as a silent zero.
"""

from __future__ import annotations

import polars as pl

from bstar.tasks.common import lake_of, load_cfg, stage_task
from bstar.tasks.data import as_rows, read_queries
from bstar.verifiers.base import SCORER_FAILURES


PRM_SUFFIX = "+prm"


def verifier_of(cfg) -> str:
    """The run's scorer: `reward.verifier`, else the training dataset's verifier; with
    `reward.kind: answer+prm` the name gets `+prm` (e.g. `arith+prm`)."""
    return base_verifier(cfg) + (PRM_SUFFIX if cfg.reward.kind == "answer+prm" else "")


def rewards_part(scorer: str) -> str:
    """A scorer's own part of `rewards` (part names allow no `+`: `arith+prm` -> `part-arith_prm`)."""
    return "part-" + scorer.replace("+", "_")


def base_verifier(cfg) -> str:
    """The answer verifier alone (no PRM suffix)."""
    from bstar.datasets import DATASET_VERIFIERS

    ds = cfg.data.train
    if cfg.reward.verifier:
        return cfg.reward.verifier
    if ds.verifier:
        # a dotted-path verifier is registered under the dataset's name when the rows are loaded
        return ds.name if ":" in ds.verifier else ds.verifier
    return DATASET_VERIFIERS.get(ds.name, ds.name)


def verify_frame(scorer: str, frame: pl.DataFrame, workers: int, timeout_s: float | None) -> pl.DataFrame:
    """Verdicts for rows with `response` and `answer`, as reward columns (answer-only reward).
    `timeout_s` None: the verifier's own per-item limit."""
    from bstar.verifiers import verify_many

    verdicts = verify_many(
        scorer, list(zip(frame["response"].to_list(), frame["answer"].to_list())), workers=workers, timeout=timeout_s
    )
    failed = [v.status in SCORER_FAILURES for v in verdicts]
    correct = [None if f else bool(v.correct) for v, f in zip(verdicts, failed)]
    return frame.select("query_id", "sample_idx").with_columns(
        pl.lit(scorer).alias("scorer"),
        pl.Series("correct", correct, dtype=pl.Boolean),
        pl.Series("extracted", [v.extracted for v in verdicts], dtype=pl.String),
        pl.Series("status", [v.status for v in verdicts], dtype=pl.String),
        pl.lit(None, dtype=pl.List(pl.Float64)).alias("step_scores"),
        pl.lit(None, dtype=pl.Float64).alias("prm"),
        # 1[correct]; a scorer failure has no reward rather than a fake 0
        pl.Series("reward", [None if c is None else float(c) for c in correct], dtype=pl.Float64),
    )


@stage_task
def score_candidates(run_id: str, iteration: int, stage: str, scorer: str, cfg_json: str) -> dict:
    """Verify every candidate of (run, iteration, stage) with `scorer`; write `rewards`."""
    from bstar.datasets import answer_for_verifier

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    cands = lake.read("candidates", run_id, iteration, stage)
    queries = read_queries(cfg, run_id).unique("query_id", keep="first")
    verifier = scorer.removesuffix(PRM_SUFFIX)
    answers = pl.DataFrame(
        {"query_id": queries["query_id"], "answer": [answer_for_verifier(r, verifier) for r in as_rows(queries)]}
    )
    frame = cands.join(answers, on="query_id", how="left")
    if frame["answer"].null_count():
        missing = frame.filter(pl.col("answer").is_null())["query_id"][0]
        raise ValueError(f"candidate for query {missing!r} has no stored query/answer in run {run_id}")
    verifier, with_prm = scorer.removesuffix(PRM_SUFFIX), scorer.endswith(PRM_SUFFIX)
    rewards = verify_frame(verifier, frame, cfg.reward.verify_workers, cfg.reward.verify_timeout_s)
    if with_prm:
        # reward = 1[correct] + prm (DESIGN.md §1); the answer-only rows go beside them (part-<verifier>)
        # so metrics can rank by either
        lake.write("rewards", rewards, run_id, iteration, stage, part=rewards_part(verifier))
        from bstar.tasks.prm import add_prm_scores

        rewards = add_prm_scores(cfg, run_id, frame, rewards, scorer)
    lake.write("rewards", rewards, run_id, iteration, stage, part=rewards_part(scorer))
    counts = rewards.group_by("status").len().sort("status")
    return {
        "stage": stage,
        "scorer": scorer,
        "scored": rewards.height,
        "correct": int(rewards["correct"].sum() or 0),
        "status": dict(zip(counts["status"].to_list(), counts["len"].to_list())),
    }
