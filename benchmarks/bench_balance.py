"""Benchmark: balance_grid at paper scale vs a straightforward per-threshold Python reference.

    .venv/bin/python benchmarks/bench_balance.py [--queries 600] [--samples 64] [--temperatures 15]

Synthetic search data as in B-STaR's configuration search: 600 queries x 64 samples x 15
temperatures = 576,000 candidates, about 25% exact duplicate responses (some differing only in
surrounding whitespace), correctness a function of the response text, rewards either
``correct + prm`` (prm in [-1, 1], 2 decimals) or answer-only (``correct``). The grid has 201
thresholds (-1.00 .. 1.00 step 0.01).

``balance_grid`` is timed as the best of 3 runs after a warm-up. The reference does what the
original scripts do: for each temperature, for each threshold, for each query, filter the
candidates by reward, put the texts in a set, count the correct ones (pure Python loops; the
grouping of candidates by (temperature, query) is done once and included in its time). When the
reference would take longer than --reference-budget seconds, it runs an evenly spaced subset of the
thresholds and its full time is extrapolated (the output says so). Both grids are compared on the
thresholds the reference computed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bstar.algorithms import balance_grid, n_star, threshold_grid  # noqa: E402


def synthetic_search(queries: int, samples: int, temperatures: int, seed: int = 0) -> pl.DataFrame:
    """One row per candidate: query_id, temperature, sample_idx, response, correct, reward, reward_answer."""
    rng = np.random.default_rng(seed)
    temps = np.round(np.linspace(0.5, 1.9, temperatures), 2)
    n_tq = queries * temperatures
    t_of_tq = np.repeat(temps, queries)
    # Solution ids per (t, q): a sample repeats an earlier sample's solution with a probability that
    # falls with temperature (0.40 at the lowest, 0.10 at the highest: ~25% duplicates overall).
    p_repeat = 0.40 - 0.30 * (t_of_tq - temps[0]) / max(temps[-1] - temps[0], 1e-9)
    sol = np.empty((n_tq, samples), dtype=np.int64)
    sol[:, 0] = 0
    for j in range(1, samples):
        repeat = rng.random(n_tq) < p_repeat
        earlier = sol[np.arange(n_tq), rng.integers(0, j, n_tq)]
        sol[:, j] = np.where(repeat, earlier, j)
    q = np.repeat(np.tile(np.arange(queries), temperatures), samples)
    t = np.repeat(t_of_tq, samples)
    s = sol.ravel()
    # Correctness and PRM score are functions of the text (query, solution) within a (t, q): query
    # difficulty varies a lot (many hard and many easy queries), accuracy drops with temperature.
    base = rng.beta(0.6, 0.6, queries)
    p_correct = base[q] * (1.0 - 0.35 * (t - temps[0]))
    key = np.repeat(np.arange(n_tq), samples) * samples + s
    u = np.random.default_rng(seed + 1).random(n_tq * samples)[key]  # same text -> same draw
    noise = np.random.default_rng(seed + 2).normal(0.0, 0.4, n_tq * samples)[key]
    correct = u < p_correct
    prm = np.round(np.clip(np.where(correct, 0.35, -0.1) + noise, -1.0, 1.0), 2)
    ws = rng.choice(["", "", "", "", "", "", "", "", " ", "\n"], len(s))  # whitespace variants of copies
    a, b = (q * 37 + s * 11) % 97 + 3, (q * 13 + s * 7) % 89 + 2
    responses = [
        f"{w}Q{qi} S{si}: {ai}+{bi}={ai + bi}; {ai + bi}*2={2 * (ai + bi)}; "
        f"{2 * (ai + bi)}-{bi}={2 * (ai + bi) - bi}. So the answer is {2 * (ai + bi) - bi}. #### {ai}{w}"
        for w, qi, si, ai, bi in zip(ws.tolist(), q.tolist(), s.tolist(), a.tolist(), b.tolist())
    ]
    return pl.DataFrame(
        {
            "query_id": q,
            "temperature": t,
            "sample_idx": np.tile(np.arange(samples), n_tq),
            "response": responses,
            "correct": correct,
            "reward": np.round(correct + prm, 2),
            "reward_answer": correct.astype(np.float64),
        }
    )


def reference_grid(scored: pl.DataFrame, thresholds, nstar: int) -> dict:
    """Per threshold, per query: filter, set, count. Pure Python."""
    groups: dict = {}
    for t, qid, resp, ok, r in zip(
        scored["temperature"].to_list(),
        scored["query_id"].to_list(),
        scored["response"].to_list(),
        scored["correct"].to_list(),
        scored["reward"].to_list(),
    ):
        groups.setdefault(t, {}).setdefault(qid, []).append((r, resp.strip(), ok))
    out = {}
    for t in sorted(groups):
        per_query = list(groups[t].values())
        for thr in thresholds:
            total, n_sel, n_cor = 0.0, 0, 0
            for cands in per_query:
                selected, good = set(), set()
                for r, text, ok in cands:
                    if r > thr:
                        selected.add(text)
                        if ok:
                            good.add(text)
                n, nc = len(selected), len(good)
                if n:
                    total += min(nc / nstar, 1.0) * nc / n
                n_sel += n
                n_cor += nc
            out[(t, float(thr))] = (total / len(per_query), n_sel, n_cor)
    return out


def time_grid(scored: pl.DataFrame, thresholds, nstar: int, repeats: int = 3) -> tuple[float, pl.DataFrame]:
    grid = balance_grid(scored, thresholds, nstar)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        grid = balance_grid(scored, thresholds, nstar)
        best = min(best, time.perf_counter() - start)
    return best, grid


def compare(grid: pl.DataFrame, ref: dict) -> float:
    """Max |score difference| over the reference cells; counts must match exactly."""
    worst = 0.0
    for row in grid.iter_rows(named=True):
        key = (row["temperature"], row["threshold"])
        if key not in ref:
            continue
        score, n_sel, n_cor = ref[key]
        if (row["n_selected"], row["n_unique_correct"]) != (n_sel, n_cor):
            raise SystemExit(f"MISMATCH at {key}: grid {row} vs reference {ref[key]}")
        worst = max(worst, abs(row["balance_score"] - score))
    if worst > 1e-12:
        raise SystemExit(f"MISMATCH: balance scores differ by up to {worst}")
    return worst


def run_variant(name: str, scored: pl.DataFrame, thresholds, nstar: int, budget: float) -> None:
    fast, grid = time_grid(scored, thresholds, nstar)
    # Probe the reference on a few thresholds to decide whether the full run fits the budget.
    probe = thresholds[:: max(1, len(thresholds) // 5)][:5]
    start = time.perf_counter()
    reference_grid(scored, probe, nstar)
    probe_s = time.perf_counter() - start
    projected = probe_s / len(probe) * len(thresholds)
    if projected <= budget:
        used = thresholds
    else:
        step = int(np.ceil(projected / budget))
        used = thresholds[::step]
    start = time.perf_counter()
    ref = reference_grid(scored, used, nstar)
    ref_s = time.perf_counter() - start
    full_ref_s = ref_s * len(thresholds) / len(used)
    worst = compare(grid, ref)
    best = grid.sort(["balance_score", "temperature", "threshold"], descending=[True, False, True]).row(0, named=True)
    print(f"[{name}]")
    print(f"  candidates            {scored.height:,}")
    print(f"  thresholds            {len(thresholds)}")
    print(f"  balance_grid seconds  {fast:.3f}  (best of 3 after warm-up)")
    if len(used) == len(thresholds):
        print(f"  reference seconds     {ref_s:.1f}  (all {len(thresholds)} thresholds)")
    else:
        print(
            f"  reference seconds     {full_ref_s:.1f}  EXTRAPOLATED from {ref_s:.1f} s on "
            f"{len(used)} of {len(thresholds)} thresholds"
        )
    print(f"  ratio                 {full_ref_s / fast:.0f}x")
    print(f"  grids agree           counts exact, max |score diff| {worst:.1e} on {len(used)} thresholds")
    print(
        f"  best cell             t={best['temperature']} tau={best['threshold']} "
        f"balance={best['balance_score']:.4f} selected={best['n_selected']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--temperatures", type=int, default=15)
    parser.add_argument("--reference-budget", type=float, default=120.0, help="seconds per variant")
    args = parser.parse_args()

    start = time.perf_counter()
    data = synthetic_search(args.queries, args.samples, args.temperatures)
    distinct = data.select(
        pl.struct("temperature", "query_id", pl.col("response").str.strip_chars()).n_unique()
    ).item()
    print(
        f"data: {data.height:,} candidates built in {time.perf_counter() - start:.1f} s; "
        f"{1 - distinct / data.height:.1%} duplicate responses; accuracy {data['correct'].mean():.2f}"
    )
    thresholds = threshold_grid(-1.0, 1.0, 0.01)
    nstar = n_star(67_500, 11_500)
    run_variant("answer + PRM rewards", data, thresholds, nstar, args.reference_budget)
    answer_only = data.with_columns(pl.col("reward_answer").alias("reward"))
    run_variant("answer-only rewards", answer_only, thresholds, nstar, args.reference_budget)


if __name__ == "__main__":
    main()
