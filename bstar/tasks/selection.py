"""Stages: B-STaR's configuration search over (temperature, threshold), and data selection.

Both read scored candidates back from the lake (one scorer), run the pure algorithms of
`bstar.algorithms`, and write the `search` grid / the `selections` rows.
"""

from __future__ import annotations

import logging

import polars as pl

from bstar.tasks.common import lake_of, load_cfg, stage_task

log = logging.getLogger(__name__)

SCORED_SCHEMA = {"query_id": pl.String, "sample_idx": pl.Int32, "temperature": pl.Float64, "response": pl.String,
                 "correct": pl.Boolean, "reward": pl.Float64, "status": pl.String}
SELECTION_SCHEMA = {"query_id": pl.String, "sample_idx": pl.Int32, "reward": pl.Float64, "temperature": pl.Float64,
                    "response": pl.String}


def scored_chunks(lake, run_id: str, iteration: int, stage: str, scorer: str, *, rows: int,
                  columns: tuple[str, ...] = ("query_id", "sample_idx", "temperature", "response")):
    """Candidates of one stage joined with one scorer's rewards (the `scored` view), `rows`
    candidates at a time (a query's candidates of one part stay together): what a stage holds at
    once is one chunk's responses, however large the stage."""
    rewards = lake.read("rewards", run_id, iteration, stage,
                        columns=["query_id", "sample_idx", "scorer", "correct", "reward", "status"])
    rewards = rewards.filter(pl.col("scorer") == scorer).drop("scorer")
    if rewards.is_empty():
        raise ValueError(f"no rewards from scorer {scorer!r} for run {run_id} iteration {iteration} stage {stage}")
    for cands in lake.iter_read("candidates", run_id, iteration, stage, rows=rows, columns=list(columns),
                                whole="query_id"):
        yield cands.join(rewards, on=["query_id", "sample_idx"], how="inner").with_columns(
            pl.col("correct").fill_null(False))


def scored_frame(lake, run_id: str, iteration: int, stage: str, scorer: str) -> pl.DataFrame:
    """Candidates of one stage joined with one scorer's rewards, all at once (small stages: eval)."""
    cands = lake.read("candidates", run_id, iteration, stage)
    rewards = lake.read("rewards", run_id, iteration, stage).filter(pl.col("scorer") == scorer)
    if rewards.is_empty():
        raise ValueError(f"no rewards from scorer {scorer!r} for run {run_id} iteration {iteration} stage {stage}")
    return cands.join(
        rewards.select("query_id", "sample_idx", "correct", "reward", "status"),
        on=["query_id", "sample_idx"],
        how="inner",
    ).with_columns(pl.col("correct").fill_null(False))


def stage_balance_grid(lake, cfg, run_id: str, iteration: int, stage: str, scorer: str, thresholds) -> pl.DataFrame:
    """`balance_grid` of one stage's candidates, read chunk by chunk: each chunk is reduced to its
    distinct responses (hashed) before the next is read."""
    from bstar.algorithms import balance_grid_of_distinct, distinct_responses, merge_distinct

    parts = [distinct_responses(c, hashed=True)
             for c in scored_chunks(lake, run_id, iteration, stage, scorer, rows=cfg.storage.chunk_rows)]
    return balance_grid_of_distinct(merge_distinct(parts), thresholds, cfg.selection.target_per_query)


@stage_task
def search_config(
    run_id: str, iteration: int, scorer: str, thresholds: list[float], fixed: dict, cfg_json: str
) -> dict:
    """Balance score of every (t, τ) cell; argmax (ties: smaller t, then larger τ). `fixed` pins
    the temperature or threshold for the ablations."""
    from bstar.algorithms import choose_config, mark_chosen

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    grid = stage_balance_grid(lake, cfg, run_id, iteration, "search", scorer, thresholds)
    chosen = choose_config(grid, temperature=fixed.get("temperature"), threshold=fixed.get("threshold"))
    lake.write("search", mark_chosen(grid, chosen), run_id, iteration)
    n_t, n_thr = grid["temperature"].n_unique(), grid["threshold"].n_unique()
    log.info("search (round %d): chose t=%g, τ=%g with balance score %.4f (%s selected, %s unique correct over %s "
             "queries) on a grid of %d temperature(s) x %d threshold(s) = %d cells%s", iteration,
             chosen["temperature"], chosen["threshold"], chosen["balance_score"], chosen.get("n_selected"),
             chosen.get("n_unique_correct"), chosen.get("n_queries"), n_t, n_thr, grid.height,
             f", pinned {fixed}" if fixed else "")
    return {k: (float(v) if isinstance(v, float) else v) for k, v in chosen.items()}


@stage_task
def select_data(run_id: str, iteration: int, scorer: str, threshold: float, cfg_json: str) -> dict:
    """Keep this round's candidates with reward > τ, one per distinct response (optionally capped)."""
    from bstar.algorithms import select_training_data

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    # only what passes τ is kept from each chunk; the selection itself runs once over those rows
    passing = pl.col("reward").is_not_null() & ~pl.col("reward").is_nan() & (pl.col("reward") > float(threshold))
    chunks, n_candidates, n_queries = [], 0, 0
    for c in scored_chunks(lake, run_id, iteration, "train", scorer, rows=cfg.storage.chunk_rows):
        n_candidates += c.height
        n_queries += c["query_id"].n_unique()  # a query's candidates are in one chunk
        chunks.append(c.filter(passing))
    scored = pl.concat(chunks) if chunks else pl.DataFrame(schema=SCORED_SCHEMA)
    kept = select_training_data(scored, threshold, max_per_query=cfg.selection.max_per_query)
    rows = kept.select("query_id", "sample_idx", "reward", "temperature", "response").cast(SELECTION_SCHEMA)
    gold = gold_rows(cfg, run_id) if cfg.selection.include_gold else rows.clear()
    lake.write("selections", pl.concat([rows, gold]), run_id, iteration, "train")
    cap = cfg.selection.max_per_query
    log.info("select (round %d): %d responses selected for training from %d of %d queries (%d scored candidates, "
             "%d with reward > τ=%g, kept %s; %d of the selected correct)%s", iteration, rows.height,
             rows["query_id"].n_unique(), n_queries, n_candidates, scored.height, threshold,
             f"at most {cap} distinct per query" if cap else "once per distinct response", int(kept["correct"].sum()),
             f"; plus {gold.height} gold solutions" if gold.height else "")
    return {
        "iteration": iteration,
        "selected": rows.height,
        "queries": rows["query_id"].n_unique(),
        "correct": int(kept["correct"].sum()),
        "gold": gold.height,
    }


def gold_rows(cfg, run_id: str) -> pl.DataFrame:
    """The warm-up seed set's gold solutions as selection rows (sample_idx -1 marks gold)."""
    from bstar.datasets import gold_response

    from bstar.tasks.data import as_rows, warmup_queries
    from bstar.tasks.prompts import template_of

    seed_set = warmup_queries(cfg, run_id)
    if seed_set.is_empty():
        raise ValueError("training on the warm-up's gold solutions needs training.warmup.examples > 0")
    responses = [gold_response(template_of(cfg, r), r) for r in as_rows(seed_set)]
    return pl.DataFrame(
        {"query_id": seed_set["query_id"], "sample_idx": -1, "reward": None, "temperature": None, "response": responses},
        schema=SELECTION_SCHEMA,
    )


@stage_task
def select_gold(run_id: str, iteration: int, cfg_json: str) -> dict:
    """The control arm's round: no sampling, the gold solutions of the warm-up seed set as the
    training data, so equal training steps can be compared with and without self-generated data."""
    cfg = load_cfg(cfg_json)
    rows = gold_rows(cfg, run_id)
    lake_of(cfg).write("selections", rows, run_id, iteration, "train")
    log.info("select (round %d): %d gold solutions of the warm-up seed set as the training data (no sampling)",
             iteration, rows.height)
    return {"iteration": iteration, "selected": rows.height, "queries": rows.height, "correct": rows.height}
