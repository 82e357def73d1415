"""Benchmark of the candidate lake: write 1M candidates + 1M rewards, time the Pass@k dashboard.

    .venv/bin/python benchmarks/bench_lake.py [--rows 1000000] [--iterations 20] [--rounds 3] [--no-s3]

Data: one run, ``iterations`` partitions of stage=train, 8 samples per query, ~60-character
responses (arith-style chains of thought). Writes the same data to a local root and to a
SeaweedFS S3 server started with tests/s3server.py, then for each round times the dashboard
query (best of 5 after a warm-up, on a fresh catalog connection) locally and on S3 back to
back, so each S3/local ratio compares timings taken under the same machine load.
Targets: write <= 5 s, query <= 0.3 s locally, S3 <= 3x local. The S3 server runs on the same
cores as DuckDB and other jobs may share them: read the ranges over rounds, not one figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bstar.storage.catalog import connect  # noqa: E402
from bstar.storage.lake import Lake  # noqa: E402
from bstar.storage.queries import QUERIES, run_query  # noqa: E402

K = 8


def make_partition(n: int, it: int, rng: np.random.Generator) -> tuple[pa.Table, pa.Table]:
    """n candidates and their rewards for one iteration, built with vectorised Arrow ops."""
    q = np.arange(n) // K
    a, b, c = (rng.integers(10, 99, n) for _ in range(3))
    ans = a + b - c
    wrong = rng.random(n) < 0.4
    ans_out = np.where(wrong, ans + rng.integers(1, 9, n), ans)
    s = lambda x: pc.cast(pa.array(x), pa.string())  # noqa: E731
    response = pc.binary_join_element_wise(
        "A: ", s(a), "+", s(b), "=", s(a + b), "; ", s(a + b), "-", s(c), "=", s(ans_out),
        ". so the answer is #### ", s(ans_out), "",
    )
    qid = pc.binary_join_element_wise(pa.scalar("q"), s(q), pa.scalar(f"-{it}"), "")
    cands = pa.table({
        "query_id": qid,
        "sample_idx": pa.array(np.arange(n) % K, pa.int32()),
        "temperature": pa.array(np.full(n, 0.7)),
        "policy": pa.array(np.full(n, f"ckpt-{it}")),
        "response": response,
        "n_tokens": pa.array(rng.integers(40, 80, n).astype(np.int32)),
        "finish_reason": pa.array(np.where(rng.random(n) < 0.98, "stop", "length")),
    })
    status = np.where(rng.random(n) < 0.97, "ok", "no_answer")
    correct = ~wrong & (status == "ok")
    rewards = pa.table({
        "query_id": qid,
        "sample_idx": cands["sample_idx"],
        "scorer": pa.array(np.full(n, "arith")),
        "correct": pa.array(correct),
        "extracted": s(ans_out),
        "status": pa.array(status),
        "reward": pa.array(correct.astype(np.float64)),
    })
    return cands, rewards


def write_all(lake: Lake, parts: list[tuple[pa.Table, pa.Table]]) -> float:
    t0 = time.perf_counter()
    for it, (c, r) in enumerate(parts):
        lake.write("candidates", c, "bench", it, "train")
        lake.write("rewards", r, "bench", it, "train", part="part-arith")
    return time.perf_counter() - t0


def time_query(root, storage_options=None, repeats: int = 5) -> tuple[float, float, int]:
    """(connect seconds, best query seconds, result rows) on a fresh catalog connection."""
    t0 = time.perf_counter()
    con = connect(root, storage_options)
    t_connect = time.perf_counter() - t0
    res = run_query(con, "pass_at_k_dashboard")  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = run_query(con, "pass_at_k_dashboard")
        best = min(best, time.perf_counter() - t0)
    con.close()
    return t_connect, best, res.height


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    per = args.rows // args.iterations
    parts = [make_partition(per, it, rng) for it in range(args.iterations)]
    n = per * args.iterations
    print(f"rows: {n:,} candidates + {n:,} rewards in {args.iterations} partitions each")
    assert QUERIES["pass_at_k_dashboard"]

    tmp = tempfile.mkdtemp(prefix="bench-lake-")
    try:
        lake = Lake(tmp)
        w = write_all(lake, parts)
        size = sum(os.path.getsize(p) for t in ("candidates", "rewards") for p in lake.parts(t))
        print(f"local write: {w:.2f} s  ({size / 2**20:.1f} MiB)   target <= 5 s")
        if args.no_s3:
            for r in range(args.rounds):
                c, q_local, nres = time_query(tmp)
                print(f"round {r}: local dashboard {q_local * 1000:.0f} ms ({nres} rows; connect {c * 1000:.0f} ms)")
            return 0
        from tests.s3server import S3Server

        with S3Server(bucket="bench") as s3:
            root = f"s3://{s3.bucket}/lake"
            w = write_all(Lake(root, s3.storage_options), parts)
            print(f"s3 write: {w:.2f} s")
            local_ms, s3_ms = [], []
            for r in range(args.rounds):
                c_l, q_l, n_l = time_query(tmp)
                c_s, q_s, n_s = time_query(root, s3.storage_options)
                assert n_l == n_s, (n_l, n_s)
                local_ms.append(q_l * 1000)
                s3_ms.append(q_s * 1000)
                print(f"round {r}: dashboard local {q_l * 1000:.0f} ms, s3 {q_s * 1000:.0f} ms, "
                      f"s3/local {q_s / q_l:.2f}x  ({n_s} rows; connect local {c_l * 1000:.0f} ms, "
                      f"s3 {c_s * 1000:.0f} ms)")
            ratios = [b / a for a, b in zip(local_ms, s3_ms)]
            print(f"dashboard over {args.rounds} rounds: local {min(local_ms):.0f}-{max(local_ms):.0f} ms "
                  f"(target <= 300 ms), s3 {min(s3_ms):.0f}-{max(s3_ms):.0f} ms, "
                  f"s3/local {min(ratios):.2f}-{max(ratios):.2f}x (target <= 3x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
