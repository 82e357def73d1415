"""Monitoring queries over a large local lake: 10 million candidates and 10 million rewards.

    .venv/bin/python benchmarks/bench_lake_monitoring.py [--rows 10000000] [--iterations 10] [--keep DIR]

Builds the lake with bench_lake.make_partition (arith-style responses, 8 samples per query,
one partition per iteration, written one partition at a time so memory stays flat), then times
every named query of bstar.storage.queries and the ad-hoc queries a user types into `bstar sql`
(counts per stage, aggregates over the whole `scored` join, one query's samples).
Each query: `fresh` = a fresh read-only connection plus the first run (what `bstar sql` pays),
3 times, best and median; `warm` = best of 3 more runs on the last connection. Then the
whole-`scored` aggregate on fresh connections, alternating between `scored` as it is and the
string-keyed join it was before (run_id, iteration, stage, query_id, sample_idx compared as
read), for a before/after under the same machine load. Figures only; tests/reliability/test_load.py asserts the 2 s bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_lake import make_partition  # noqa: E402
from bstar.storage.catalog import SCORED_VIEWS_SQL, connect  # noqa: E402
from bstar.storage.lake import Lake  # noqa: E402
from bstar.storage.queries import QUERIES, run_query  # noqa: E402
from bstar.storage.sql import check_read_only  # noqa: E402

SCORED_AGGREGATE = (
    "SELECT run_id, iteration, stage, scorer, status, correct, count(*) AS n, avg(reward) AS mean_reward "
    "FROM scored GROUP BY ALL ORDER BY ALL"
)
AD_HOC = {
    "candidates per iteration and stage": "SELECT iteration, stage, count(*) AS n FROM candidates GROUP BY ALL ORDER BY ALL",
    "statuses per scorer (scored join)": "SELECT iteration, scorer, status, count(*) AS n FROM scored GROUP BY ALL ORDER BY ALL",
    "status/correct/mean reward (scored)": SCORED_AGGREGATE,
    "accuracy per iteration": "SELECT iteration, avg(correct::INT) AS acc FROM rewards GROUP BY ALL ORDER BY ALL",
    "one query's samples": "SELECT sample_idx, response, correct FROM scored WHERE query_id = 'q777-3' ORDER BY sample_idx",
    "longest responses": "SELECT query_id, sample_idx, length(response) AS n FROM candidates ORDER BY n DESC LIMIT 10",
}
PARAMS = {"pass_at_k": {"k": 4}}


def build(root: Path, rows: int, iterations: int) -> dict:
    lake = Lake(root)
    rng = np.random.default_rng(0)
    per = rows // iterations
    t0 = time.perf_counter()
    for it in range(iterations):
        cands, rewards = make_partition(per, it, rng)
        lake.write("candidates", cands, "bench", it, "train")
        lake.write("rewards", rewards, "bench", it, "train", part="part-arith")
    size = sum(os.path.getsize(p) for t in ("candidates", "rewards") for p in lake.parts(t))
    return {"rows": per * iterations, "build_s": time.perf_counter() - t0, "mib": size / 2**20}


@dataclass(frozen=True)
class Timing:
    fresh_best: float  # fresh connection + first run, best of `repeats`
    fresh_median: float
    warm_best: float | None  # best of `repeats` more runs on the last connection
    rows: int


def _time(root: Path, run, repeats: int = 3) -> Timing:
    fresh = []
    for i in range(repeats):
        t0 = time.perf_counter()
        con = connect(root)
        out = run(con)
        fresh.append(time.perf_counter() - t0)
        if i < repeats - 1:
            con.close()
    warm = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(con)
        warm = min(warm, time.perf_counter() - t0)
    con.close()
    return Timing(min(fresh), statistics.median(fresh), warm, out)


def time_queries(root: Path) -> dict[str, Timing]:
    out = {}
    for name in QUERIES:
        out[name] = _time(root, lambda con, n=name: run_query(con, n, **PARAMS.get(n, {})).height)
    for name, sql in AD_HOC.items():
        text = check_read_only(sql)  # the same guard `bstar sql` applies
        out[name] = _time(root, lambda con, t=text: len(con.sql(t).fetchall()))
    return out


def _connect_string_join(root: Path):
    """A connection whose `scored` is the previous definition: candidates JOIN rewards USING
    (run_id, iteration, stage, query_id, sample_idx) over the two VARCHAR-keyed views."""
    con = connect(root, read_only=False)
    con.execute(SCORED_VIEWS_SQL)
    return con


def compare_joins(root: Path, repeats: int = 3) -> dict[str, Timing]:
    """SCORED_AGGREGATE on fresh connections, `scored` as it is and the string-keyed join,
    interleaved so both see the same machine load."""
    runs: dict[str, list[float]] = {"enum-keyed join (now)": [], "string-keyed join (before)": []}
    rows = 0
    for _ in range(repeats):
        for name, connect_fn in zip(runs, (connect, _connect_string_join)):
            t0 = time.perf_counter()
            con = connect_fn(root)
            rows = len(con.sql(SCORED_AGGREGATE).fetchall())
            runs[name].append(time.perf_counter() - t0)
            con.close()
    return {name: Timing(min(t), statistics.median(t), None, rows) for name, t in runs.items()}


def _line(name: str, t: Timing) -> str:
    warm = "" if t.warm_best is None else f"warm {t.warm_best * 1000:6.0f} ms   "
    return (f"{name:38s} fresh best {t.fresh_best * 1000:6.0f} ms  median {t.fresh_median * 1000:6.0f} ms   "
            f"{warm}({t.rows} rows)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--keep", type=Path, help="build the lake here and keep it")
    args = ap.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="bstar-lake10m-")
    root = args.keep or Path(tmp.name)
    try:
        b = build(root, args.rows, args.iterations)
        print(f"lake: {b['rows']:,} candidates + {b['rows']:,} rewards, {b['mib']:.0f} MiB, built in {b['build_s']:.1f} s")
        for name, t in time_queries(root).items():
            print(_line(name, t))
        print("status/correct/mean reward over the whole `scored` join, interleaved:")
        for name, t in compare_joins(root).items():
            print(_line("  " + name, t))
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
