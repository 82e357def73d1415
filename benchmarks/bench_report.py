"""Benchmark: build_report on a synthetic lake (time per phase: queries, plots, page).

    .venv/bin/python benchmarks/bench_report.py [--runs 2] [--rounds 3] [--queries 2000] [--samples 32]
    .venv/bin/python benchmarks/bench_report.py --root /tmp/report-lake --run-ids r1 r2   # an existing lake

Synthetic runs: per round, ``queries x samples`` training candidates (responses ~120 chars) with
answer-only rewards, selections of the correct ones, a search grid of 15 temperatures x 201
thresholds (the paper's grid), and greedy + sampled metrics. Prints the lake size, the time of
the lake queries (``load_report_data``), of drawing the plots and of rendering the page, and the
HTML size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bstar.storage.lake import Lake  # noqa: E402


def make_lake(root: str, runs: int, rounds: int, queries: int, samples: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lake = Lake(root)
    ids = [f"bench{i}" for i in range(runs)]
    temps = np.round(np.arange(0.5, 1.21, 0.05), 2)[:15]
    thrs = np.round(np.arange(-1.0, 1.001, 0.01), 2)
    for run in ids:
        lake.write("runs", [{"config": "{}", "created_at": dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)}], run)
        for it in range(rounds + 1):
            metrics = [{"split": "test", "name": "greedy_pass@1", "k": 1, "s": None, "value": 0.4 + 0.05 * it},
                       {"split": "test", "name": "greedy_pass@1_se", "k": 1, "s": None, "value": 0.01},
                       {"split": "test", "name": "diversity", "k": None, "s": None, "value": 0.9 - 0.02 * it}]
            for k in (1, 4, 16, 32):
                for s in (1, 2, 4):
                    if s <= k:
                        metrics.append({"split": "test", "name": "pass@k-s", "k": k, "s": s, "value": float(rng.random())})
                        metrics.append({"split": "test", "name": "reward@k-s", "k": k, "s": s, "value": float(rng.random())})
            lake.write("metrics", metrics, run, it)
            if it == 0:
                continue
            bs = rng.random((len(temps), len(thrs)))
            ti, hi = np.unravel_index(bs.argmax(), bs.shape)
            grid = pl.DataFrame({
                "temperature": np.repeat(temps, len(thrs)), "threshold": np.tile(thrs, len(temps)),
                "balance_score": bs.ravel(), "n_selected": rng.integers(0, 1000, bs.size),
                "n_unique_correct": rng.integers(0, 1000, bs.size), "n_queries": np.full(bs.size, 600),
                "chosen": (np.arange(bs.size) == ti * len(thrs) + hi),
            })
            lake.write("search", grid, run, it)
            n = queries * samples
            qid = np.repeat([f"q{i:06d}" for i in range(queries)], samples)
            idx = np.tile(np.arange(samples, dtype=np.int32), queries)
            correct = rng.random(n) < 0.4
            reward = correct.astype(float) + np.round(rng.uniform(-1, 1, n), 2)
            resp = [f"step {i % 97} + {i % 13} = {(i % 97) + (i % 13)}; " * 4 + f"#### {i % 101}" for i in range(n)]
            cands = pl.DataFrame({"query_id": qid, "sample_idx": idx, "temperature": 0.9, "policy": "p", "response": resp})
            rews = pl.DataFrame({"query_id": qid, "sample_idx": idx, "scorer": "arith", "correct": correct,
                                 "status": "ok", "reward": reward})
            lake.write("candidates", cands, run, it, "train")
            lake.write("rewards", rews, run, it, "train")
            keep = cands.with_columns(pl.Series("reward", reward)).filter(pl.Series(correct & (reward > 0.5)))
            lake.write("selections", keep.select("query_id", "sample_idx", "reward", "temperature", "response"), run, it, "train")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root")
    ap.add_argument("--run-ids", nargs="*")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=32)
    a = ap.parse_args()

    from bstar.reports.data import load_report_data
    from bstar.reports.html import render_page

    root = a.root or tempfile.mkdtemp(prefix="bench-report-")
    if a.run_ids:
        ids = a.run_ids
    else:
        t = time.perf_counter()
        ids = make_lake(root, a.runs, a.rounds, a.queries, a.samples)
        print(f"synthetic lake: {a.runs} runs x {a.rounds} rounds x {a.queries * a.samples:,} train candidates "
              f"in {time.perf_counter() - t:.1f}s")
    size = sum(p.stat().st_size for p in Path(root).rglob("*.parquet"))
    print(f"lake {root}: {size / 2**20:.1f} MiB of parquet; runs {ids}")
    import matplotlib  # noqa: F401  (import time kept out of the plot timing)

    t0 = time.perf_counter()
    data = load_report_data(ids, root)
    t1 = time.perf_counter()
    page = render_page(data)  # plots are drawn inside
    t2 = time.perf_counter()
    print(f"queries {t1 - t0:.2f}s  plots+page {t2 - t1:.2f}s  total {t2 - t0:.2f}s  html {len(page) / 2**10:.0f} KiB")


if __name__ == "__main__":
    main()
