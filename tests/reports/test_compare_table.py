"""The comparison table from hand-built `metrics` / `search` rows: last round per run, 95%
intervals, seeds averaged with their standard errors combined, gains over the shared start."""

import math

import polars as pl
import pytest

from bstar.reports.compare import comparison_table, format_rows, interval, markdown, per_round, per_round_rows, trajectories

ARMS = [
    {"label": "bstar", "method": "bstar", "reward": "answer", "run_ids": ["c-bstar-seed0", "c-bstar-seed1"]},
    {"label": "gold-only", "method": "sft", "reward": "answer", "run_ids": ["c-gold-only"]},
]


def metric_rows() -> pl.DataFrame:
    rows = [("c-start", 0, "greedy_pass@1", 1, None, 0.40), ("c-start", 0, "greedy_pass@1_se", 1, None, 0.02)]
    for run, p1 in (("c-bstar-seed0", (0.50, 0.60)), ("c-bstar-seed1", (0.52, 0.64)), ("c-gold-only", (0.41, 0.39))):
        for it, v in enumerate(p1, 1):
            rows += [(run, it, "greedy_pass@1", 1, None, v), (run, it, "greedy_pass@1_se", 1, None, 0.03)]
        rows += [(run, 2, "pass@k", 4, None, 0.8), (run, 2, "pass@k_se", 4, None, 0.01),
                 (run, 2, "pass@k-s", 4, 2, 0.7), (run, 2, "pass@k-s_se", 4, 2, 0.02),
                 (run, 2, "pass@k-s", 4, 1, 0.8), (run, 2, "reward@k-s", 4, 2, 0.3),
                 (run, 2, "reward@k-s_se", 4, 2, 0.04)]
    frame = pl.DataFrame(rows, schema=["run_id", "iteration", "name", "k", "s", "value"], orient="row")
    return frame.with_columns(pl.lit("test-arith").alias("split"))


def test_last_round_seed_mean_combined_se_and_gain():
    t = comparison_table(metric_rows(), ARMS, "c-start", k=4, s=2)
    assert t["arm"].to_list() == ["start", "bstar", "gold-only"]
    b = t.filter(pl.col("arm") == "bstar").row(0, named=True)
    assert b["Pass@1"] == pytest.approx(0.62)  # round 2 of both seeds, averaged
    assert b["Pass@1 se"] == pytest.approx(math.sqrt(2 * 0.03**2) / 2)
    assert b["gain"] == pytest.approx(0.22) and (b["seeds"], b["rounds"]) == (2, 2)
    assert (b["Pass@K"], b["Pass@K-S"], b["Reward@K-S"]) == pytest.approx((0.8, 0.7, 0.3))
    g = t.filter(pl.col("arm") == "gold-only").row(0, named=True)
    assert g["gain"] == pytest.approx(-0.01) and g["Pass@1 se"] == pytest.approx(0.03)
    s = t.filter(pl.col("arm") == "start").row(0, named=True)
    assert s["Pass@K"] is None and s["gain"] == 0


def test_formatting_in_percent_with_interval_half_widths():
    assert interval(0.612, 0.015) == "61.2 ±2.9"
    assert interval(None, None) == "—" and interval(0.5, None) == "50.0"
    rows = format_rows(comparison_table(metric_rows(), ARMS, "c-start", k=4, s=2))
    assert rows[0][-1] == "—" and rows[1][-1] == "+22.0" and rows[2][-1] == "-1.0"
    assert rows[2][5] == "39.0 ±5.9"


def test_trajectories_and_markdown():
    search = pl.DataFrame({
        "run_id": ["c-bstar-seed0"] * 4, "iteration": [1, 1, 2, 2], "temperature": [0.6, 0.9, 0.6, 0.9],
        "threshold": [0.0] * 4, "balance_score": [0.3, 0.5, 0.6, 0.4], "chosen": [False, True, True, False],
    })
    traj = trajectories(search, metric_rows(), ARMS)
    chosen = traj.filter(pl.col("run_id") == "c-bstar-seed0")
    assert chosen.select("iteration", "temperature", "balance_score", "Pass@1").rows() == [(1, 0.9, 0.5, 0.5), (2, 0.6, 0.6, 0.6)]
    assert traj.filter(pl.col("arm") == "gold-only")["temperature"].null_count() == 2
    text = markdown(comparison_table(metric_rows(), ARMS, "c-start", k=4, s=2), traj, 4, 2)
    assert "| bstar | 2 | 0.60 | 0.00 | 0.6000 | 0.600 |" in text
    assert "| gold-only | sft | answer | test-arith | 2 | 39.0 ±5.9 |" in text


def test_per_round_monitoring_of_every_arm():
    search = pl.DataFrame({
        "run_id": ["c-bstar-seed0"] * 2, "iteration": [1, 1], "temperature": [0.6, 0.9],
        "threshold": [0.0, 0.5], "balance_score": [0.3, 0.5], "chosen": [False, True],
    })
    train = pl.DataFrame(
        [("c-bstar-seed0", 1, "balance_score", None, None, 0.45), ("c-bstar-seed0", 1, "search_balance_score", None, None, 0.5),
         ("c-gold-only", 1, "selected", None, None, 0.0), ("c-bstar-seed0", 1, "selected", None, None, 120.0),
         ("c-bstar-seed0", 1, "selected_queries", None, None, 40.0),
         ("c-bstar-seed0", 2, "balance_score", None, None, 0.52)],
        schema=["run_id", "iteration", "name", "k", "s", "value"], orient="row",
    ).with_columns(pl.lit("train").alias("split"))
    metrics = pl.concat([metric_rows(), train.select(metric_rows().columns)])
    rounds = per_round(metrics, search, ARMS, k=4, s=2)
    b1 = rounds.filter((pl.col("run_id") == "c-bstar-seed0") & (pl.col("iteration") == 1)).row(0, named=True)
    assert (b1["Pass@1"], b1["balance"], b1["search balance"], b1["selected"], b1["selected queries"]) == (
        0.5, 0.45, 0.5, 120.0, 40.0)
    assert (b1["temperature"], b1["threshold"], b1["Pass@K"]) == (0.9, 0.5, None)
    b2 = rounds.filter((pl.col("run_id") == "c-bstar-seed0") & (pl.col("iteration") == 2)).row(0, named=True)
    assert (b2["Pass@K"], b2["Pass@K-S"], b2["Reward@K-S"], b2["balance"]) == (0.8, 0.7, 0.3, 0.52)
    assert rounds["arm"].to_list()[:2] == ["bstar", "bstar"] and rounds["arm"].to_list()[-1] == "gold-only"
    header, rows = per_round_rows(rounds)
    assert rows[1][:13] == ["bstar", "0", "2", "test-arith", "60.0", "80.0", "70.0", "30.0", "—", "0.5200", "—", "—", "—"]
    assert rows[-1][:2] == ["gold-only", "—"]
    assert "| bstar | 0 | 1 | test-arith | 50.0 | — | — | — | — | 0.4500 | 0.5000 | 120 | 40 | 0.90 | 0.50 |" in markdown(
        comparison_table(metrics, ARMS, "c-start", k=4, s=2), trajectories(search, metrics, ARMS), 4, 2, rounds)
