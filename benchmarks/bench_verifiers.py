"""Verifier throughput on this machine; prints its figures.

    python benchmarks/bench_verifiers.py [--math N] [--code N] [--workers W]

- `math` verifications per second through `verify_many` (worker pool, hard kill per item), on a
  mix of MATH-style answers (fractions, radicals, sets, intervals, matrices), warm workers;
- APPS-style programs per second through `verify_many("code", ...)` (3 stdin tests each);
- the sandbox's per-problem overhead: one trivial program run through bubblewrap + the runner
  vs. the same runner as a plain subprocess (no namespaces, no uid drop).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bstar.verifiers import verify_many  # noqa: E402
from bstar.verifiers import sandbox as sb  # noqa: E402
from bstar.verifiers.pool import default_workers  # noqa: E402

MATH_PAIRS = [
    (r"\frac{3}{4}", "0.75"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
    (r"\{1,2,3\}", r"\{3,1,2\}"),
    (r"(-\infty,2]", r"(-\infty, 2]"),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    ("x^2+2x+1", "(x+1)^2"),
    (r"\frac{\pi}{6}", r"\frac{\pi}{3}"),
    ("42", "41"),
]


def bench_math(n: int, workers: int) -> None:
    pairs = [(f"so the answer is $\\boxed{{{p}}}$.", g) for g, p in (MATH_PAIRS * (n // len(MATH_PAIRS) + 1))[:n]]
    verify_many("math", pairs[: workers * 2], workers=workers)  # start and warm the workers
    t0 = time.perf_counter()
    out = verify_many("math", pairs, workers=workers)
    dt = time.perf_counter() - t0
    bad = sum(v.status != "ok" for v in out)
    print(f"math: {n} verifications in {dt:.2f}s with {workers} workers -> {n / dt:.0f}/s ({bad} not ok)")


def bench_code(n: int, workers: int) -> None:
    io = json.dumps({"inputs": ["1 2\n", "30 12\n", "-5 5\n"], "outputs": ["3\n", "42\n", "0\n"]})
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    wrong = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
    pairs = [(good if i % 2 == 0 else wrong, io) for i in range(n)]
    verify_many("code", pairs[:workers], workers=workers)
    t0 = time.perf_counter()
    out = verify_many("code", pairs, workers=workers)
    dt = time.perf_counter() - t0
    statuses = {s: sum(v.status == s for v in out) for s in {v.status for v in out}}
    print(f"code: {n} APPS-style programs (3 tests each) in {dt:.2f}s with {workers} workers -> {n / dt:.1f}/s {statuses}")


def bench_overhead(reps: int) -> None:
    tests = [{"input": "", "output": "1"}]

    def timed(sandbox: bool) -> list[float]:
        cfg = sb.SandboxConfig(allow_unsandboxed=True)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = sb.run_tests("print(1)", [dict(t) for t in tests], config=cfg, sandbox=sandbox)
            times.append(time.perf_counter() - t0)
            assert r["results"][0]["status"] == "ok", r
        return times

    plain = timed(False)
    problem = sb.sandbox_problem()
    if problem is not None:
        print(f"sandbox overhead: bubblewrap unavailable ({problem}); plain subprocess {statistics.median(plain) * 1000:.1f} ms")
        return
    boxed = timed(True)
    mp, mb = statistics.median(plain) * 1000, statistics.median(boxed) * 1000
    print(
        f"sandbox overhead (trivial program, median of {reps}): plain subprocess {mp:.1f} ms, "
        f"bubblewrap {mb:.1f} ms -> +{mb - mp:.1f} ms per problem"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--math", type=int, default=800)
    ap.add_argument("--code", type=int, default=60)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=default_workers())
    args = ap.parse_args()
    print(f"cores available: {default_workers()}, workers: {args.workers}, python {sys.version.split()[0]}, pid {os.getpid()}")
    bench_math(args.math, args.workers)
    bench_code(args.code, args.workers)
    bench_overhead(args.reps)


if __name__ == "__main__":
    main()
