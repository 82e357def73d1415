"""Load on the scoring stage: 100,000 math candidates and 2,000 sandboxed programs, each scored
by the real `score_candidates` stage in one call; prints throughput, peak memory, and what was
left behind (processes, temp dirs, open file descriptors).

    .venv/bin/python benchmarks/bench_scoring_load.py [--math 100000] [--code 2000] [--workers 2]

Math mix (MATH-style answers, gold in `queries`): 40% the gold string itself (graded by string
match), 40% an equivalent or wrong form that math-verify must parse, 20% no boxed answer.
Code mix (APPS-style stdin tests, 3 per problem): 70% correct, 15% wrong, 5% syntax errors,
8% runtime errors, 2% infinite loops (each costs the 4 s per-test limit).

Memory is sampled every 0.2 s as the summed RSS of this process and all its descendants (the
verifier workers and the sandboxes). Figures only; no thresholds here (tests/reliability/
test_load.py asserts the bounds).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.fixtures_input import (  # noqa: E402
    fenced,
    host_changes,
    host_state,
    read_rewards,
    score,
    scoring_lake,
)

MATH_FORMS = [  # (gold, response answer)
    (r"\frac{3}{4}", r"\frac{3}{4}"),
    ("42", "42"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
    (r"\{1,2,3\}", r"\{3,1,2\}"),
    ("x^2+2x+1", "(x+1)^2"),
    (r"\frac{\pi}{6}", r"\frac{\pi}{3}"),
    (r"(-\infty,2]", r"(-\infty, 2]"),
    ("0.5", r"\frac{1}{2}"),
]
CODE_TESTS = '{"inputs": ["1 2\\n", "10 -4\\n", "0 0\\n"], "outputs": ["3\\n", "6\\n", "0\\n"]}'
PROGRAMS = [  # (share in 100, program)
    (70, "a, b = map(int, input().split())\nprint(a + b)"),
    (15, "a, b = map(int, input().split())\nprint(a - b)"),
    (5, "def f(:\n    pass"),
    (8, "a, b = map(int, input().split())\nprint(a // (b - b))"),
    (2, "while True:\n    pass"),
]


def math_candidates(n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(queries, candidates): 8 candidates per query."""
    k = 8
    n_queries = (n + k - 1) // k
    queries = [(f"m{q}", MATH_FORMS[q % len(MATH_FORMS)][0]) for q in range(n_queries)]
    cands = []
    for i in range(n):
        q = i // k
        gold, form = MATH_FORMS[q % len(MATH_FORMS)]
        r = i % 10
        text = gold if r < 4 else form if r < 8 else None
        cands.append((f"m{q}", f"Step 1. ... so the answer is $\\boxed{{{text}}}$." if text else "I am not sure."))
    return queries, cands


def code_candidates(n: int) -> list[tuple[str, str]]:
    slots = [p for share, p in PROGRAMS for _ in range(share)]
    return [("c0", fenced(slots[(i * 37) % 100])) for i in range(n)]


@dataclass
class MemoryWatch:
    """Peak summed RSS (MiB) of this process and its descendants, sampled in a thread."""

    interval: float = 0.2
    peak_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _total(self) -> float:
        me = os.getpid()
        parent, rss = {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                parent[int(d)] = int(fields[1])
                rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        family, stack = {me}, [me]
        while stack:
            p = stack.pop()
            kids = [c for c, pp in parent.items() if pp == p and c not in family]
            family.update(kids)
            stack.extend(kids)
        return sum(rss.get(p, 0) for p in family) / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._total())
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemoryWatch":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_load(n_math: int, n_code: int, workers: int, root: Path) -> dict:
    """Score both batches; returns the figures (also used by tests/reliability/test_load.py)."""
    from bstar.verifiers import pool

    figures: dict = {}
    fds_before = _open_fds()
    before = host_state()
    if n_math:
        queries, cands = math_candidates(n_math)
        s = scoring_lake(root / "math", "math", queries, cands, workers=workers)
        t0 = time.perf_counter()
        with MemoryWatch() as mem:
            summary = score(s, "math")
        dt = time.perf_counter() - t0
        figures["math"] = {"n": n_math, "seconds": dt, "per_s": n_math / dt,
                           "peak_rss_mib": mem.peak_mib, "status": summary["status"],
                           "stored": read_rewards(s).height}
    if n_code:
        s = scoring_lake(root / "code", "apps", [("c0", CODE_TESTS)], code_candidates(n_code), workers=workers, timeout_s=30)
        t0 = time.perf_counter()
        with MemoryWatch() as mem:
            summary = score(s, "code")
        dt = time.perf_counter() - t0
        figures["code"] = {"n": n_code, "seconds": dt, "per_s": n_code / dt,
                           "peak_rss_mib": mem.peak_mib, "status": summary["status"],
                           "stored": read_rewards(s).height}
    after_stage = host_state()
    pool.shutdown()  # what is left once the idle workers are stopped must be nothing
    after_shutdown = host_state()
    figures["idle_workers_after_stage"] = len(after_stage.stray_children) + _worker_count()
    figures["left_behind"] = {k: sorted(map(str, v)) for k, v in host_changes(before, after_shutdown).items()}
    figures["descendants_after_shutdown"] = _descendant_count()
    figures["fds_grown"] = _open_fds() - fds_before
    return figures


def _worker_count() -> int:
    from bstar.verifiers import pool

    return len(pool._IDLE)


def _descendant_count() -> int:
    me, n = str(os.getpid()), 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                n += Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1] == me
            except (OSError, IndexError):
                pass
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--math", type=int, default=100_000)
    ap.add_argument("--code", type=int, default=2_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bstar-load-") as tmp:
        f = run_load(args.math, args.code, args.workers, Path(tmp))
    for kind in ("math", "code"):
        if kind in f:
            m = f[kind]
            print(
                f"{kind}: {m['n']:,} candidates in {m['seconds']:.1f} s -> {m['per_s']:.1f}/s "
                f"peak RSS {m['peak_rss_mib']:.0f} MiB with workers; "
                f"stored {m['stored']:,}; statuses {m['status']}"
            )
    print(f"left behind after the stages: {f['left_behind'] or 'nothing'}; "
          f"descendant processes after shutdown: {f['descendants_after_shutdown']}; fds grown: {f['fds_grown']}")


if __name__ == "__main__":
    main()
