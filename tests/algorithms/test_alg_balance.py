"""balance_grid / choose_config / n_star: hand-computed values and a slow reference."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from bstar.algorithms import (
    balance_grid,
    balance_grid_of_distinct,
    choose_config,
    distinct_responses,
    mark_chosen,
    merge_distinct,
    n_star,
    threshold_grid,
)


def frame(rows, temperature=0.7):
    """rows: (query_id, response, correct, reward[, temperature])."""
    data = {"query_id": [], "temperature": [], "response": [], "correct": [], "reward": []}
    for row in rows:
        q, resp, ok, r = row[:4]
        data["query_id"].append(q)
        data["temperature"].append(row[4] if len(row) > 4 else temperature)
        data["response"].append(resp)
        data["correct"].append(ok)
        data["reward"].append(r)
    return pl.DataFrame(
        data,
        schema={
            "query_id": pl.Int64,
            "temperature": pl.Float64,
            "response": pl.String,
            "correct": pl.Boolean,
            "reward": pl.Float64,
        },
    )


def cell(grid, t, thr):
    rows = grid.filter((pl.col("temperature") == t) & (pl.col("threshold") == thr))
    assert rows.height == 1
    return rows.row(0, named=True)


def reference_grid(scored: pl.DataFrame, thresholds, nstar) -> dict:
    """Straightforward definition: loops over temperatures, thresholds, queries, candidates."""
    by_tq: dict = {}
    for row in scored.iter_rows(named=True):
        by_tq.setdefault(row["temperature"], {}).setdefault(row["query_id"], []).append(row)
    out = {}
    for t, queries in by_tq.items():
        for thr in thresholds:
            total, n_sel, n_cor = 0.0, 0, 0
            for cands in queries.values():
                selected, good = set(), set()
                for c in cands:
                    r = c["reward"]
                    if r is None or math.isnan(r) or not r > thr:
                        continue
                    text = c["response"].strip()
                    selected.add(text)
                    if c["correct"]:
                        good.add(text)
                n, nc = len(selected), len(good)
                total += min(nc / nstar, 1.0) * nc / n if n else 0.0
                n_sel += n
                n_cor += nc
            out[(t, float(thr))] = (total / len(queries), n_sel, n_cor, len(queries))
    return out


# ------------------------------------------------------------------------------------ n_star
def test_n_star_paper_and_rounding():
    assert n_star(67_500, 11_500) == 67_500 / 11_500  # the paper's n* = N / M, 5.87
    assert n_star(67_500, 11_500, "ceil") == 6 and n_star(67_500, 11_500, "floor") == 5
    assert n_star(12, 4) == 3 == n_star(12, 4, "ceil")
    assert n_star(13, 4) == 3.25 and n_star(13, 4, "ceil") == 4
    assert n_star(1, 100) == 0.01 and n_star(1, 100, "ceil") == 1 == n_star(1, 100, "floor")
    with pytest.raises(ValueError, match="rounding"):
        n_star(1, 2, "nearest")
    with pytest.raises(ValueError):
        n_star(0, 5)
    with pytest.raises(ValueError):
        n_star(5, 0)


def test_threshold_grid_is_decimal_exact():
    grid = threshold_grid(-1.0, 1.0, 0.01)
    assert len(grid) == 201
    assert grid[0] == -1.0 and grid[-1] == 1.0
    assert grid[130] == 0.3 and grid[100] == 0.0
    assert not np.signbit(grid[100])
    assert list(threshold_grid(0.0, 0.5, 0.25)) == [0.0, 0.25, 0.5]
    with pytest.raises(ValueError):
        threshold_grid(0.0, 1.0, 0.3)


# ------------------------------------------------------------------------- hand-computed grid
def test_query_with_nothing_selected_counts_in_mean():
    scored = frame(
        [
            (1, "a", True, 0.9),
            (1, "b", True, 0.8),
            (2, "c", True, -0.5),  # not selected at 0.0: bs = 0 but still in the mean
        ]
    )
    row = cell(balance_grid(scored, [0.0], n_star=2), 0.7, 0.0)
    # q1: n=2, n'=2 -> min(2/2,1)*2/2 = 1; q2: 0 -> mean 0.5
    assert row["balance_score"] == 0.5
    assert (row["n_selected"], row["n_unique_correct"], row["n_queries"]) == (2, 2, 2)


def test_whitespace_duplicates_count_once():
    scored = frame(
        [
            (1, "x = 4", True, 0.5),
            (1, "  x = 4\n", True, 0.6),
            (1, "\tx = 4 ", True, 0.1),
            (1, "x=4", True, 0.2),  # inner whitespace differs: a different response
        ]
    )
    row = cell(balance_grid(scored, [0.0], n_star=4), 0.7, 0.0)
    # distinct: "x = 4", "x=4" -> n=2, n'=2 -> min(2/4,1)*1 = 0.5
    assert row["balance_score"] == 0.5
    assert (row["n_selected"], row["n_unique_correct"]) == (2, 2)


def test_incorrect_selected_lowers_ratio_and_nstar_larger_than_k():
    scored = frame(
        [
            (1, "a", True, 0.9),
            (1, "b", False, 0.9),
            (1, "c", False, 0.9),
            (1, "d", True, 0.95),
        ]
    )
    # n* = 10 > K = 4: n=4, n'=2 -> min(2/10,1) * 2/4 = 0.1
    row = cell(balance_grid(scored, [0.5], n_star=10), 0.7, 0.5)
    assert row["balance_score"] == pytest.approx(0.1, abs=1e-15)
    assert (row["n_selected"], row["n_unique_correct"]) == (4, 2)
    # the paper's fractional n* = N / M: 2 / 2.5 * 2/4 = 0.4 (ceil(2.5) = 3 would give 1/3)
    assert cell(balance_grid(scored, [0.5], n_star=2.5), 0.7, 0.5)["balance_score"] == pytest.approx(0.4, abs=1e-15)
    # n* = 1: min(2, 1) * 2/4 = 0.5
    assert cell(balance_grid(scored, [0.5], n_star=1), 0.7, 0.5)["balance_score"] == 0.5


def test_threshold_is_strict_and_grid_over_temperatures():
    scored = frame(
        [
            # t = 0.5
            (1, "a", True, 1.0, 0.5),
            (1, "b", False, 0.5, 0.5),
            (2, "c", True, 0.5, 0.5),
            # t = 1.0: query 2 only sampled here with incorrect answers, query 3 correct
            (2, "d", False, 0.0, 1.0),
            (3, "e", True, 0.3, 1.0),
            (3, "f", True, 0.3, 1.0),
        ]
    )
    grid = balance_grid(scored, threshold_grid(0.0, 0.5, 0.25), n_star=2)
    assert grid.columns == [
        "temperature", "threshold", "balance_score", "n_selected", "n_unique_correct", "n_queries",
    ]
    assert grid.select("temperature", "threshold").rows() == [
        (0.5, 0.0), (0.5, 0.25), (0.5, 0.5), (1.0, 0.0), (1.0, 0.25), (1.0, 0.5),
    ]
    # t=0.5, τ=0.0 and 0.25: q1 n=2 n'=1 -> 0.5*0.5=0.25; q2 n=1 n'=1 -> 0.5 => 0.375
    assert cell(grid, 0.5, 0.0)["balance_score"] == 0.375
    assert cell(grid, 0.5, 0.25)["balance_score"] == 0.375
    # τ = 0.5: reward 0.5 is NOT > 0.5 -> q1: only "a" (0.5*1), q2: nothing => 0.25
    r = cell(grid, 0.5, 0.5)
    assert (r["balance_score"], r["n_selected"], r["n_unique_correct"], r["n_queries"]) == (0.25, 1, 1, 2)
    # t=1.0, τ=0.0: reward 0.0 not > 0 -> q2 nothing; q3 n=2 n'=2 -> 1 => 0.5
    r = cell(grid, 1.0, 0.0)
    assert (r["balance_score"], r["n_selected"], r["n_queries"]) == (0.5, 2, 2)
    assert cell(grid, 1.0, 0.25)["balance_score"] == 0.5
    assert cell(grid, 1.0, 0.5)["balance_score"] == 0.0


def test_duplicates_with_different_rewards_and_correctness():
    scored = frame(
        [
            # same text: the incorrect copy (verifier hiccup) passes, the correct copy does not
            (1, "a", False, 0.8),
            (1, "a ", True, 0.2),
            (1, "b", True, 0.6),
        ]
    )
    grid = balance_grid(scored, [0.0, 0.5], n_star=2)
    # τ=0.0: texts {a, b} selected, correct copies passing: {a, b} -> n=2, n'=2 -> 1.0
    assert cell(grid, 0.7, 0.0)["balance_score"] == 1.0
    # τ=0.5: texts {a, b} selected (a via its 0.8 copy); correct passing copy only b -> n'=1
    r = cell(grid, 0.7, 0.5)
    assert (r["n_selected"], r["n_unique_correct"]) == (2, 1)
    assert r["balance_score"] == 0.5 * 0.5


def test_null_and_nan_rewards_never_selected():
    scored = frame(
        [
            (1, "a", True, None),
            (1, "b", True, float("nan")),
            (1, "c", None, 0.9),  # null correct -> incorrect
            (2, "d", True, 0.9),
        ]
    )
    r = cell(balance_grid(scored, [-1.0], n_star=1), 0.7, -1.0)
    assert (r["n_selected"], r["n_unique_correct"], r["n_queries"]) == (2, 1, 2)
    assert r["balance_score"] == 0.5


def test_thresholds_sorted_and_deduplicated_and_string_query_ids():
    scored = frame([(1, "a", True, 0.4)]).with_columns(pl.col("query_id").cast(pl.String))
    grid = balance_grid(scored, [0.5, 0.0, 0.5], n_star=1)
    assert grid["threshold"].to_list() == [0.0, 0.5]
    assert grid["balance_score"].to_list() == [1.0, 0.0]


def test_empty_inputs_and_errors():
    empty = frame([])
    assert balance_grid(empty, [0.0], n_star=1).height == 0
    assert balance_grid(frame([(1, "a", True, 1.0)]), [], n_star=1).height == 0
    with pytest.raises(ValueError, match="reward"):
        balance_grid(frame([(1, "a", True, 1.0)]).drop("reward"), [0.0], n_star=1)
    with pytest.raises(ValueError):
        balance_grid(frame([(1, "a", True, 1.0)]), [0.0], n_star=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_slow_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = 600
    q = rng.integers(0, 12, n)
    t = rng.choice([0.3, 0.7, 1.1], n)
    base = rng.integers(0, 6, n)  # few texts per query -> many duplicates
    pad = rng.choice(["", " ", "\n", "\t "], n)
    responses = [f"{p}resp-{b}{p[::-1]}" for p, b in zip(pad, base)]
    correct = (base % 2 == 0) | (rng.random(n) < 0.1)  # mostly a function of the text
    reward = np.round(rng.uniform(-1.0, 2.0, n), 2)  # 2 decimals: many ties with thresholds
    reward[rng.random(n) < 0.03] = np.nan
    scored = pl.DataFrame(
        {"query_id": q, "temperature": t, "response": responses, "correct": correct, "reward": reward}
    )
    thresholds = threshold_grid(-1.0, 1.0, 0.05)
    nstar = int(rng.integers(1, 5))
    grid = balance_grid(scored, thresholds, nstar)
    ref = reference_grid(scored, thresholds, nstar)
    assert grid.height == len(ref)
    for row in grid.iter_rows(named=True):
        score, n_sel, n_cor, n_q = ref[(row["temperature"], row["threshold"])]
        assert (row["n_selected"], row["n_unique_correct"], row["n_queries"]) == (n_sel, n_cor, n_q)
        assert row["balance_score"] == pytest.approx(score, abs=1e-12)


@pytest.mark.parametrize("chunks", [1, 3, 7, 50])
def test_chunked_grid_equals_the_whole_one(chunks):
    """A stage read in chunks (any cut, a query's copies in several chunks, a text's best reward
    and its correct copy in different chunks) gives the grid of the whole stage exactly."""
    rng = np.random.default_rng(7)
    n = 900
    q = rng.integers(0, 20, n)
    t = rng.choice([0.5, 0.9], n)
    base = rng.integers(0, 5, n)
    responses = [f"{' ' * int(rng.integers(0, 2))}text-{b}" for b in base]
    scored = pl.DataFrame({"query_id": q, "temperature": t, "response": responses,
                           "correct": (base % 2 == 0) | (rng.random(n) < 0.1),
                           "reward": np.round(rng.uniform(-1.0, 2.0, n), 1)})
    thresholds = threshold_grid(-1.0, 1.0, 0.1)
    whole = balance_grid(scored, thresholds, 2.5)
    cuts = np.linspace(0, n, chunks + 1).astype(int)
    parts = [distinct_responses(scored[a:b], hashed=True) for a, b in zip(cuts[:-1], cuts[1:])]
    merged = merge_distinct(parts)
    assert merged.height == scored.select("temperature", "query_id", pl.col("response").str.strip_chars()).unique().height
    assert balance_grid_of_distinct(merged, thresholds, 2.5).equals(whole)


# ------------------------------------------------------------------------------- choose_config
def grid_of(rows):
    return pl.DataFrame(
        rows,
        schema={
            "temperature": pl.Float64,
            "threshold": pl.Float64,
            "balance_score": pl.Float64,
            "n_selected": pl.Int64,
            "n_unique_correct": pl.Int64,
            "n_queries": pl.Int64,
        },
        orient="row",
    )


def test_choose_config_argmax_and_ties():
    grid = grid_of(
        [
            (0.5, 0.0, 0.4, 10, 5, 3),
            (0.5, 0.3, 0.6, 8, 4, 3),   # tie with (1.0, 0.0) and (0.5, 0.1)
            (0.5, 0.1, 0.6, 9, 4, 3),
            (1.0, 0.0, 0.6, 12, 6, 3),
            (1.0, 0.5, 0.2, 2, 1, 3),
        ]
    )
    best = choose_config(grid)
    # equal scores: smaller temperature (0.5), then larger threshold (0.3)
    assert best == {
        "temperature": 0.5, "threshold": 0.3, "balance_score": 0.6,
        "n_selected": 8, "n_unique_correct": 4, "n_queries": 3,
    }
    # a score higher by one ulp-level noise is still a tie
    noisy = grid.with_columns(
        pl.when(pl.col("temperature") == 1.0).then(pl.col("balance_score") + 1e-15)
        .otherwise(pl.col("balance_score")).alias("balance_score")
    )
    assert choose_config(noisy)["temperature"] == 0.5
    # a clear winner wins regardless of the tie rules
    clear = grid.with_columns(
        pl.when((pl.col("temperature") == 1.0) & (pl.col("threshold") == 0.5)).then(0.9)
        .otherwise(pl.col("balance_score")).alias("balance_score")
    )
    assert (choose_config(clear)["temperature"], choose_config(clear)["threshold"]) == (1.0, 0.5)


def test_choose_config_ablations():
    grid = grid_of(
        [
            (0.5, 0.0, 0.4, 0, 0, 1),
            (0.5, 0.3, 0.7, 0, 0, 1),
            (1.0, 0.0, 0.5, 0, 0, 1),
            (1.0, 0.3, 0.2, 0, 0, 1),
        ]
    )
    # threshold-only search: temperature fixed at 1.0
    assert choose_config(grid, temperature=1.0)["threshold"] == 0.0
    # temperature-only search: threshold fixed at 0.0 (given as a float-noisy value)
    best = choose_config(grid, threshold=0.1 + 0.2 - 0.3)
    assert (best["temperature"], best["threshold"]) == (1.0, 0.0)
    fixed = choose_config(grid, temperature=0.5, threshold=0.0)
    assert (fixed["temperature"], fixed["threshold"], fixed["balance_score"]) == (0.5, 0.0, 0.4)
    with pytest.raises(ValueError, match="temperature=0.8"):
        choose_config(grid, temperature=0.8)
    with pytest.raises(ValueError):
        choose_config(grid.head(0))


def test_mark_chosen_and_end_to_end():
    scored = frame(
        [
            (1, "a", True, 0.9, 0.5),
            (1, "b", False, 0.4, 0.5),
            (1, "a", True, 0.9, 1.0),
            (1, "c", True, 0.2, 1.0),
        ]
    )
    grid = balance_grid(scored, [0.0, 0.3, 0.6], n_star=2)
    best = choose_config(grid)
    # t=1.0, τ ∈ {0.0}: n=2 n'=2 -> 1.0 (only there)
    assert (best["temperature"], best["threshold"], best["balance_score"]) == (1.0, 0.0, 1.0)
    marked = mark_chosen(grid, best)
    assert marked["chosen"].sum() == 1
    assert marked.filter("chosen").select("temperature", "threshold").row(0) == (1.0, 0.0)


def test_algorithms_import_neither_torch_nor_prefect():
    code = (
        "import sys, bstar.algorithms; "
        "bad = [m for m in ('torch', 'prefect') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
