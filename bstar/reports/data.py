"""Lake → frames for the run report: one DuckDB query per report section, no plotting.

    from bstar.reports.data import load_report_data
    data = load_report_data(["r1", "r2"], "lake")      # ReportData of polars frames
    data.metrics.filter(pl.col("name") == "greedy_pass@1")

Everything is read through the catalog views (``bstar.storage.catalog.connect``), so local
and S3 lakes go through the same code. Unknown run ids raise ``ValueError`` naming them and
listing the runs found under the root. Sections a run does not have (no ``search`` table for
methods that do not search, no sampled metrics when ``eval.k`` is 0) come back as empty frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import polars as pl

__all__ = ["ReportData", "load_report_data", "known_runs", "check_runs", "N_EXAMPLES"]

# best / worst sampled responses shown per run and round
N_EXAMPLES = 3

_METRICS_SQL = """
SELECT run_id, iteration, split, name, k, s, value
FROM metrics
WHERE stage = 'eval' AND list_contains($run_ids, run_id)
ORDER BY run_id, iteration, split, name, k NULLS FIRST, s NULLS FIRST
"""

_SEARCH_SQL = """
SELECT run_id, iteration, temperature, threshold, balance_score,
       n_selected, n_unique_correct, n_queries, chosen
FROM search
WHERE list_contains($run_ids, run_id)
ORDER BY run_id, iteration, temperature, threshold
"""

# selected samples per query in each round, including the round's queries that got none
# (the round's queries = the distinct query ids sampled in the stage the selections came from)
_SELECTED_PER_QUERY_SQL = """
WITH sel AS (
    SELECT run_id, iteration, stage, query_id, count(*) AS n_selected
    FROM selections
    WHERE list_contains($run_ids, run_id)
    GROUP BY run_id, iteration, stage, query_id
),
parts AS (SELECT DISTINCT run_id, iteration, stage FROM sel),
asked AS (
    SELECT DISTINCT c.run_id, c.iteration, c.stage, c.query_id
    FROM candidates AS c JOIN parts USING (run_id, iteration, stage)
)
SELECT run_id, iteration, query_id, coalesce(sel.n_selected, 0) AS n_selected
FROM asked FULL OUTER JOIN sel USING (run_id, iteration, stage, query_id)
ORDER BY run_id, iteration, query_id
"""

# best / worst sampled training responses by reward, per run, round and scorer (rewards of
# different scorers are on different scales, e.g. answer-only vs answer + PRM); ties: query, sample.
# Ranked on the rewards alone; only the picked rows' responses are read (a paper-sized round's
# train stage holds ~1 GB of response text).
_EXAMPLES_SQL = """
WITH s AS (
    SELECT run_id, iteration, query_id, sample_idx, scorer, correct, status, reward
    FROM rewards
    WHERE stage = 'train' AND reward IS NOT NULL AND NOT isnan(reward)
      AND list_contains($run_ids, run_id)
),
ranked AS (
    SELECT *,
           row_number() OVER (PARTITION BY run_id, iteration, scorer
                              ORDER BY reward DESC, query_id, sample_idx) AS best_rank,
           row_number() OVER (PARTITION BY run_id, iteration, scorer
                              ORDER BY reward ASC, query_id, sample_idx) AS worst_rank
    FROM s
),
picked AS (
    SELECT 'best' AS kind, best_rank AS rank, * EXCLUDE (best_rank, worst_rank)
    FROM ranked WHERE best_rank <= $n
    UNION ALL
    SELECT 'worst' AS kind, worst_rank AS rank, * EXCLUDE (best_rank, worst_rank)
    FROM ranked WHERE worst_rank <= $n
),
texts AS (
    SELECT c.run_id, c.iteration, c.query_id, c.sample_idx, c.temperature, c.response
    FROM candidates AS c
    SEMI JOIN picked AS p USING (run_id, iteration, query_id, sample_idx)
    WHERE c.stage = 'train' AND list_contains($run_ids, c.run_id)
),
prompts AS (
    SELECT run_id, query_id, any_value(prompt) AS prompt, any_value(answer) AS answer
    FROM queries
    WHERE list_contains($run_ids, run_id)
    GROUP BY run_id, query_id
)
SELECT p.run_id, p.iteration, p.kind, p.rank, p.query_id, p.sample_idx, t.temperature,
       p.scorer, p.correct, p.status, p.reward, q.prompt, q.answer, t.response
FROM picked AS p
JOIN texts AS t USING (run_id, iteration, query_id, sample_idx)
LEFT JOIN prompts AS q USING (run_id, query_id)
ORDER BY p.run_id, p.iteration, p.scorer, p.kind, p.rank
"""

_KNOWN_RUNS_SQL = """
SELECT DISTINCT run_id FROM (
    SELECT run_id FROM runs UNION ALL SELECT run_id FROM metrics
) ORDER BY run_id
"""


@dataclass(frozen=True)
class ReportData:
    """The frames one report is drawn from (all filtered to ``run_ids``)."""

    run_ids: list[str]
    root: str
    metrics: pl.DataFrame  # run_id, iteration, split, name, k, s, value (stage eval)
    search: pl.DataFrame  # run_id, iteration, temperature, threshold, balance_score, ..., chosen
    selected_per_query: pl.DataFrame  # run_id, iteration, query_id, n_selected (0 included)
    examples: pl.DataFrame  # run_id, iteration, kind (best/worst), rank, ..., reward, prompt, response

    def metric(self, name: str) -> pl.DataFrame:
        return self.metrics.filter(pl.col("name") == name)


def _frame(con: duckdb.DuckDBPyConnection, sql: str, **params) -> pl.DataFrame:
    # DuckDB 2.0: con.sql(...) gives a relation; execute() returns the connection itself
    return pl.from_arrow(con.sql(sql, params=params).to_arrow_table())


def known_runs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Run ids found under the root (in ``runs`` or ``metrics``)."""
    return [r[0] for r in con.execute(_KNOWN_RUNS_SQL).fetchall()]


def check_runs(con: duckdb.DuckDBPyConnection, run_ids: list[str], root: str) -> None:
    """Raise ValueError naming the unknown run ids and listing the known ones."""
    if not run_ids:
        raise ValueError("no run id given")
    known = known_runs(con)
    missing = [r for r in run_ids if r not in known]
    if missing:
        listing = ", ".join(known) if known else "none"
        raise ValueError(
            f"unknown run id(s) {', '.join(missing)} under {root}; known runs: {listing}"
        )


def load_report_data(
    run_ids: list[str] | tuple[str, ...] | str,
    root,
    storage_options: dict | None = None,
    n_examples: int = N_EXAMPLES,
) -> ReportData:
    """Query the lake at ``root`` for everything the report of ``run_ids`` shows."""
    from bstar.storage.catalog import connect
    from bstar.storage.lake import Lake

    if isinstance(run_ids, str):
        run_ids = [run_ids]
    run_ids = list(dict.fromkeys(run_ids))  # keep order, drop repeats
    lake = root if isinstance(root, Lake) else Lake(root, storage_options)
    con = connect(lake)
    try:
        check_runs(con, run_ids, lake.root)
        return ReportData(
            run_ids=run_ids,
            root=lake.root,
            metrics=_frame(con, _METRICS_SQL, run_ids=run_ids),
            search=_frame(con, _SEARCH_SQL, run_ids=run_ids),
            selected_per_query=_frame(con, _SELECTED_PER_QUERY_SQL, run_ids=run_ids),
            examples=_frame(con, _EXAMPLES_SQL, run_ids=run_ids, n=int(n_examples)),
        )
    finally:
        con.close()
