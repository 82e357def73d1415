"""Monitoring queries over a large local lake: 10 million candidates and 10 million rewards.

    .venv/bin/python benchmarks/bench_lake_monitoring.py [--rows 10000000] [--iterations 10] [--keep DIR]

Builds the lake with bench_lake.make_partition (arith-style responses, 8 samples per query,
one partition per iteration, written one partition at a time so memory stays flat), then times
every named query of bstar.storage.queries and the ad-hoc queries a user types into `bstar sql`
(counts per stage, statuses per scorer through the `scored` join, one query's samples).
Each query: `first` = a fresh read-only connection plus the first run (what `bstar sql` pays),
`best` = best of 3 more runs on that connection. Figures only; tests/reliability/test_load.py
asserts the 2 s bound.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_lake import make_partition  # noqa: E402
from bstar.storage.catalog import connect  # noqa: E402
from bstar.storage.lake import Lake  # noqa: E402
from bstar.storage.queries import QUERIES, run_query  # noqa: E402
from bstar.storage.sql import check_read_only  # noqa: E402

AD_HOC = {
    "candidates per iteration and stage": "SELECT iteration, stage, count(*) AS n FROM candidates GROUP BY ALL ORDER BY ALL",
    "statuses per scorer (scored join)": "SELECT iteration, scorer, status, count(*) AS n FROM scored GROUP BY ALL ORDER BY ALL",
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


def _time(root: Path, run, repeats: int = 3) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    con = connect(root)
    out = run(con)
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(con)
        best = min(best, time.perf_counter() - t0)
    con.close()
    return first, best, out


def time_queries(root: Path) -> dict[str, tuple[float, float, int]]:
    """name -> (fresh connection + first run, best of 3 warm runs, result rows)."""
    out = {}
    for name in QUERIES:
        out[name] = _time(root, lambda con, n=name: run_query(con, n, **PARAMS.get(n, {})).height)
    for name, sql in AD_HOC.items():
        text = check_read_only(sql)  # the same guard `bstar sql` applies
        out[name] = _time(root, lambda con, t=text: len(con.sql(t).fetchall()))
    return out


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
        for name, (first, best, n) in time_queries(root).items():
            print(f"{name:38s} first {first * 1000:6.0f} ms   best {best * 1000:6.0f} ms   ({n} rows)")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
