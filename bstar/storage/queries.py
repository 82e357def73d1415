"""Named, parameterised SQL over the catalog views (see catalog.py).

    from bstar.storage.catalog import connect
    from bstar.storage.queries import run_query
    df = run_query(connect("lake"), "pass_at_k_dashboard", run_id="r1")   # polars

Parameters are DuckDB named parameters (``$run_id``); a filter left as None matches all rows.
Queries are plain strings so they can also be read, copied into ``bstar sql``, or tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import polars as pl

from .schemas import spec

__all__ = ["NamedQuery", "QUERIES", "run_query", "duplicate_keys_sql"]


@dataclass(frozen=True)
class NamedQuery:
    name: str
    sql: str
    params: dict  # name -> default
    doc: str


_RUN_FILTER = "($run_id IS NULL OR run_id = $run_id) AND ($iteration IS NULL OR iteration = $iteration)"

PASS_AT_K_DASHBOARD = f"""
-- per run, iteration, stage and scorer: pass@1 estimated from the samples, pass@k as
-- "any of the k samples correct" (k = samples per query). Scorer failures count as wrong.
WITH per_query AS (
    SELECT run_id, iteration, stage, scorer, query_id,
           count(*) AS n,
           count(*) FILTER (WHERE correct) AS c
    FROM rewards
    WHERE {_RUN_FILTER} AND ($stage IS NULL OR stage = $stage)
    GROUP BY run_id, iteration, stage, scorer, query_id
)
SELECT run_id, iteration, stage, scorer,
       count(*)                        AS n_queries,
       sum(n)                          AS n_candidates,
       max(n)                          AS k,
       sum(c) / sum(n)                 AS mean_correct,
       avg(c / n)                      AS pass_at_1,
       avg(CASE WHEN c > 0 THEN 1.0 ELSE 0.0 END) AS pass_at_k
FROM per_query
GROUP BY run_id, iteration, stage, scorer
ORDER BY run_id, iteration, stage, scorer
"""

# unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021) through log-gamma
PASS_AT_K = f"""
WITH per_query AS (
    SELECT run_id, iteration, stage, scorer, query_id,
           count(*) AS n, count(*) FILTER (WHERE correct) AS c
    FROM rewards
    WHERE {_RUN_FILTER} AND ($stage IS NULL OR stage = $stage)
    GROUP BY run_id, iteration, stage, scorer, query_id
)
SELECT run_id, iteration, stage, scorer, CAST($k AS INTEGER) AS k,
       count(*) AS n_queries,
       avg(CASE WHEN n - c < $k THEN 1.0
                ELSE 1.0 - exp(lgamma(n - c + 1) - lgamma(n - c - $k + 1)
                               - lgamma(n + 1) + lgamma(n - $k + 1)) END) AS pass_at_k
FROM per_query
WHERE n >= $k
GROUP BY run_id, iteration, stage, scorer
ORDER BY run_id, iteration, stage, scorer
"""

CANDIDATES_PER_STATUS = f"""
SELECT run_id, iteration, stage, scorer, status, count(*) AS n_candidates,
       count(*) FILTER (WHERE correct) AS n_correct
FROM rewards
WHERE {_RUN_FILTER}
GROUP BY run_id, iteration, stage, scorer, status
ORDER BY run_id, iteration, stage, scorer, status
"""

SELECTED_PER_QUERY = f"""
SELECT run_id, iteration, stage, query_id,
       count(*) AS n_selected,
       count(DISTINCT trim(response)) AS n_unique,
       avg(reward) AS mean_reward
FROM selections
WHERE {_RUN_FILTER}
GROUP BY run_id, iteration, stage, query_id
ORDER BY run_id, iteration, stage, query_id
"""

SEARCH_GRID = f"""
SELECT run_id, iteration, temperature, threshold, balance_score,
       n_selected, n_unique_correct, n_queries, chosen
FROM search
WHERE {_RUN_FILTER}
ORDER BY run_id, iteration, temperature, threshold
"""

METRICS = f"""
SELECT run_id, iteration, split, name, k, s, value
FROM metrics
WHERE {_RUN_FILTER}
ORDER BY run_id, iteration, split, name, k, s
"""

_RUN = {"run_id": None, "iteration": None}
QUERIES: dict[str, NamedQuery] = {
    q.name: q
    for q in [
        NamedQuery("pass_at_k_dashboard", PASS_AT_K_DASHBOARD, {**_RUN, "stage": None},
                   "per iteration/stage/scorer: n queries, mean correct, pass@1, pass@k (any correct)"),
        NamedQuery("pass_at_k", PASS_AT_K, {**_RUN, "stage": None, "k": 1},
                   "unbiased pass@k for a given k over queries with at least k samples"),
        NamedQuery("candidates_per_status", CANDIDATES_PER_STATUS, dict(_RUN),
                   "candidates per scorer status (ok, no_answer, timeout, error, ...)"),
        NamedQuery("selected_per_query", SELECTED_PER_QUERY, dict(_RUN),
                   "selected training examples per query"),
        NamedQuery("search_grid", SEARCH_GRID, dict(_RUN), "the (temperature, threshold) grid"),
        NamedQuery("metrics", METRICS, dict(_RUN), "stored metric values"),
    ]
}


def run_query(con: duckdb.DuckDBPyConnection, name: str, **params) -> pl.DataFrame:
    """Run a named query; unknown names or parameters raise KeyError/TypeError."""
    try:
        q = QUERIES[name]
    except KeyError:
        raise KeyError(f"unknown query {name!r}; known: {', '.join(QUERIES)}") from None
    bad = set(params) - set(q.params)
    if bad:
        raise TypeError(f"query {name!r} has no parameter(s) {', '.join(sorted(bad))}; has {', '.join(q.params)}")
    values = {**q.params, **params}
    # DuckDB refuses named parameters the statement does not use
    values = {k: v for k, v in values.items() if f"${k}" in q.sql}
    return pl.from_arrow(con.sql(q.sql, params=values).to_arrow_table())


def duplicate_keys_sql(table: str) -> str:
    """SQL listing key values of ``table`` that occur more than once (must return no rows)."""
    key = ", ".join(spec(table).full_key)
    return f"SELECT {key}, count(*) AS n FROM {table} GROUP BY {key} HAVING count(*) > 1"
