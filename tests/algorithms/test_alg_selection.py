"""select_training_data: threshold strictness, per-query dedupe, cap, kept columns."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from bstar.algorithms import balance_grid, select_training_data


def scored(rows):
    """rows: (query_id, sample_idx, response, reward, correct)."""
    return pl.DataFrame(
        rows,
        schema={
            "query_id": pl.String,
            "sample_idx": pl.Int64,
            "response": pl.String,
            "reward": pl.Float64,
            "correct": pl.Boolean,
        },
        orient="row",
    )


def test_threshold_is_strict_and_null_nan_dropped():
    df = scored(
        [
            ("q", 0, "a", 0.0, True),
            ("q", 1, "b", 0.01, True),
            ("q", 2, "c", None, True),
            ("q", 3, "d", float("nan"), True),
            ("q", 4, "e", -0.5, False),
        ]
    )
    out = select_training_data(df, 0.0)
    assert out["sample_idx"].to_list() == [1]
    assert select_training_data(df, -1.0)["sample_idx"].to_list() == [0, 1, 4]


def test_dedupe_keeps_first_passing_copy_by_sample_idx_and_all_columns():
    df = scored(
        [
            ("q2", 5, "x", 0.9, True),
            ("q1", 3, " ans 1 ", 0.7, True),
            ("q1", 1, "ans 1", -0.2, True),     # first copy, but below the threshold
            ("q1", 2, "ans 1\n", 0.4, True),    # first passing copy -> kept
            ("q1", 0, "ans 2", 0.5, False),
            ("q2", 1, "x", 0.1, True),          # same text in another query: kept there
        ]
    ).with_columns(pl.lit("meta").alias("extra"))
    out = select_training_data(df, 0.0)
    assert out.columns == df.columns
    assert out.select("query_id", "sample_idx", "response").rows() == [
        ("q1", 0, "ans 2"),
        ("q1", 2, "ans 1\n"),
        ("q2", 1, "x"),
    ]
    assert out["extra"].to_list() == ["meta"] * 3


def test_cap_highest_reward_then_sample_idx():
    df = scored(
        [
            ("q", 0, "a", 0.5, True),
            ("q", 1, "b", 0.9, True),
            ("q", 2, "c", 0.5, True),
            ("q", 3, "d", 0.9, True),
            ("q", 4, "b", 0.95, True),  # duplicate of sample 1: dropped before capping
            ("r", 0, "z", 0.1, True),
        ]
    )
    out = select_training_data(df, 0.0, max_per_query=3)
    # q: distinct kept {0:a .5, 1:b .9, 2:c .5, 3:d .9} -> top 3: 1, 3 (0.9), then 0 (0.5, lower idx)
    assert out.select("query_id", "sample_idx").rows() == [("q", 0), ("q", 1), ("q", 3), ("r", 0)]
    assert select_training_data(df, 0.0, max_per_query=1)["sample_idx"].to_list() == [1, 0]
    assert select_training_data(df, 0.0, max_per_query=0).height == 0
    # deterministic whatever the seed
    assert select_training_data(df, 0.0, max_per_query=3, seed=7).equals(out)
    with pytest.raises(ValueError):
        select_training_data(df, 0.0, max_per_query=-1)


def test_without_sample_idx_keeps_input_order():
    df = pl.DataFrame(
        {"query_id": [1, 1, 1], "response": ["b", "a", "b "], "reward": [0.3, 0.2, 0.9]}
    )
    out = select_training_data(df, 0.0)
    assert out.rows() == [(1, "b", 0.3), (1, "a", 0.2)]
    with pytest.raises(ValueError, match="reward"):
        select_training_data(df.drop("reward"), 0.0)


def test_selected_texts_match_balance_grid_counts():
    rng = np.random.default_rng(5)
    n = 400
    df = pl.DataFrame(
        {
            "query_id": rng.integers(0, 10, n),
            "sample_idx": np.arange(n),
            "temperature": 0.8,
            "response": [f"r{v}" + " " * int(w) for v, w in zip(rng.integers(0, 8, n), rng.integers(0, 2, n))],
            "reward": np.round(rng.uniform(-1, 1, n), 2),
        }
    ).with_columns(correct=pl.col("response").str.strip_chars().is_in(["r0", "r2", "r4"]))
    for thr in (-0.5, 0.0, 0.37):
        selected = select_training_data(df, thr)
        row = balance_grid(df, [thr], n_star=3).row(0, named=True)
        assert selected.height == row["n_selected"]
        assert int(selected["correct"].sum()) == row["n_unique_correct"]
