"""Stage: score stored candidates with a verifier and store one `rewards` row per candidate.

Rewards are keyed by scorer and written to their own parts (`part-<scorer>-cNNNNN`, one per
chunk of `storage.chunk_rows` candidates), so stored candidates can be re-scored with another
verifier or PRM without sampling again, and a scorer failure is stored as a status (`timeout`,
`error`, ...), never as a silent zero.

Bounded and deduplicated: the stage reads, grades and writes one chunk at a time (a query's
candidates stay in one chunk), and grades each distinct answer of a query once
(`bstar.verifiers.distinct`): the result says how many grader calls that took.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import polars as pl

from bstar.tasks.common import chunk_part, chunk_parts_re, lake_of, load_cfg, stage_task
from bstar.tasks.data import as_rows, read_queries
from bstar.tasks.shards import on_device, run_shards, shard_bounds, shard_name
from bstar.tasks.scorers import PRM_SUFFIX, base_verifier, rewards_part, verifier_of
from bstar.verifiers.base import SCORER_FAILURES
from bstar.verifiers.distinct import VerdictCache, verify_distinct

__all__ = ["PRM_SUFFIX", "base_verifier", "rewards_part", "score_candidates", "verifier_of", "verify_frame"]

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ["query_id", "sample_idx", "policy", "response"]


def verify_frame(
    scorer: str, frame: pl.DataFrame, workers: int, timeout_s: float | None, cache: VerdictCache | None = None
) -> pl.DataFrame:
    """Reward rows (answer-only reward) for rows with `response` and `answer`, each distinct
    answer graded once. `timeout_s` None: the verifier's own per-item limit."""
    verdicts = verify_distinct(scorer, frame, cache if cache is not None else VerdictCache(), workers=workers,
                               timeout=timeout_s)
    return verdicts.select(
        "query_id",
        "sample_idx",
        pl.lit(scorer).alias("scorer"),
        "correct",
        "extracted",
        "status",
        pl.lit(None, dtype=pl.List(pl.Float64)).alias("step_scores"),
        pl.lit(None, dtype=pl.Float64).alias("prm"),
        # 1[correct]; a scorer failure has no reward rather than a fake 0
        pl.col("correct").cast(pl.Float64).alias("reward"),
    )


def answer_frame(cfg, run_id: str, verifier: str) -> pl.DataFrame:
    """query_id -> the gold answer in the form `verifier` takes."""
    from bstar.datasets import answer_for_verifier

    queries = read_queries(cfg, run_id).unique("query_id", keep="first")
    return pl.DataFrame(
        {"query_id": queries["query_id"], "answer": [answer_for_verifier(r, verifier) for r in as_rows(queries)]},
        schema={"query_id": pl.String, "answer": pl.String},
    )


@stage_task
def score_candidates(run_id: str, iteration: int, stage: str, scorer: str, cfg_json: str) -> dict:
    """Verify every candidate of (run, iteration, stage) with `scorer`; write `rewards`. With
    `execution.shards` > 1 the stage's candidate parts are cut into that many contiguous groups,
    one scoring shard each (`bstar.tasks.shards`)."""
    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    verifier = scorer.removesuffix(PRM_SUFFIX)
    names = lake.part_names("candidates", run_id, iteration, stage)
    bounds = shard_bounds(len(names), cfg.execution.shards)
    calls = [dict(run_id=run_id, iteration=iteration, stage=stage, scorer=scorer, shard=i, shards=len(bounds),
                  parts=None if len(bounds) == 1 else names[lo:hi], cfg_json=cfg_json)
             for i, (lo, hi) in enumerate(bounds)]
    # a PRM holds the device; answer-only verifiers never wait for it
    done = run_shards(cfg, on_device(score_shard, scorer.endswith(PRM_SUFFIX)), calls, "scoring")
    written = {name: {p for d in done for p in d["parts"].get(name, [])} for name in {verifier, scorer}}
    if not any(d["chunks"] for d in done):  # no candidates: an empty part still records that the stage was scored
        lake.write("rewards", verify_frame(verifier, _empty_frame(), 1, None), run_id, iteration, stage,
                   part=rewards_part(scorer, 0))
        written[scorer].add(rewards_part(scorer, 0))
    # a rerun with another chunk size or sharding (or an older lake's single part) must not leave extra rows
    for name, parts in written.items():
        if parts:
            lake.prune_parts("rewards", run_id, iteration, stage, chunk_parts_re(rewards_part(name)), parts)
    status: dict[str, int] = {}
    for d in done:
        for k, n in d["status"].items():
            status[k] = status.get(k, 0) + n
    total = {k: sum(d[k] for d in done) for k in ("scored", "correct", "verifications", "distinct_responses", "chunks")}
    log.info("%s", verdict_line(stage, iteration, scorer, total, status, len(bounds)))
    return {"stage": stage, "scorer": scorer, "scored": total["scored"], "correct": total["correct"],
            "status": dict(sorted(status.items())), "verifications": total["verifications"],
            "distinct_responses": total["distinct_responses"], "chunks": total["chunks"], "shards": len(bounds)}


def verdict_line(stage: str, iteration: int, scorer: str, total: dict, status: dict[str, int], shards: int) -> str:
    """`score search (round 1) with arith: 384 candidates: 97 correct, 287 incorrect, 0 without a
    verdict (scorer failures); statuses no_answer 12, ok 372; 290 distinct responses, 290 grader calls`."""
    failed = sum(n for s, n in status.items() if s in SCORER_FAILURES)
    incorrect = total["scored"] - total["correct"] - failed
    statuses = ", ".join(f"{s} {n}" for s, n in sorted(status.items())) or "none"
    return (f"score {stage} (round {iteration}) with {scorer}: {total['scored']} candidates: {total['correct']} "
            f"correct, {incorrect} incorrect, {failed} without a verdict (scorer failures); statuses {statuses}; "
            f"{total['distinct_responses']} distinct responses, {total['verifications']} grader calls, "
            f"{shards} shard(s)")


@stage_task
def score_shard(run_id: str, iteration: int, stage: str, scorer: str, shard: int, shards: int,
                parts: list[str] | None, cfg_json: str) -> dict:
    """One shard of `score_candidates`: the candidates of `parts` (all of the stage's when None),
    read, graded (each distinct answer once) and written one chunk at a time."""
    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    verifier, with_prm = scorer.removesuffix(PRM_SUFFIX), scorer.endswith(PRM_SUFFIX)
    answers = answer_frame(cfg, run_id, verifier)
    cache = VerdictCache()
    written: dict[str, list[str]] = {verifier: [], scorer: []}
    status: dict[str, int] = {}
    correct = 0

    def part(name: str, c: int) -> str:
        return chunk_part(shard_name(rewards_part(name), shard, shards), c)

    if with_prm:
        from bstar.tasks.prm import prm_rewarder

        rewarder = prm_rewarder(cfg, run_id)
    else:
        rewarder = nullcontext()
    chunks = lake.iter_read("candidates", run_id, iteration, stage, rows=cfg.storage.chunk_rows,
                            columns=CANDIDATE_COLUMNS, whole="query_id", parts=parts)
    with rewarder as add_prm:
        c = -1
        for c, cands in enumerate(chunks):
            frame = cands.join(answers, on="query_id", how="left")
            if frame["answer"].null_count():
                missing = frame.filter(pl.col("answer").is_null())["query_id"][0]
                raise ValueError(f"candidate for query {missing!r} has no stored query/answer in run {run_id}")
            rewards = verify_frame(verifier, frame, cfg.reward.verify_workers, cfg.reward.verify_timeout_s, cache)
            if with_prm:
                # reward = 1[correct] + prm (DESIGN.md §1); the answer-only rows go beside them
                # (part-<verifier>-c...) so metrics can rank by either
                lake.write("rewards", rewards, run_id, iteration, stage, part=part(verifier, c))
                written[verifier].append(part(verifier, c))
                rewards = add_prm(frame, rewards, scorer)
            lake.write("rewards", rewards, run_id, iteration, stage, part=part(scorer, c))
            written[scorer].append(part(scorer, c))
            correct += int(rewards["correct"].sum() or 0)
            for s, n in rewards.group_by("status").len().iter_rows():
                status[s] = status.get(s, 0) + n
    return {"shard": shard, "scored": cache.candidates, "correct": correct, "status": status,
            "verifications": cache.verified, "distinct_responses": cache.distinct_responses, "chunks": c + 1,
            "parts": written}


def _empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema={"query_id": pl.String, "sample_idx": pl.Int32, "response": pl.String,
                                "answer": pl.String})
