"""Load: the scoring stage over 100,000 math candidates and 2,000 sandboxed programs (every row
stored, memory bounded, nothing left behind), and monitoring queries over a lake of 10 million
candidates (each named query and each ad-hoc one, aggregates over the whole `scored` join of
10M candidates x 10M rewards included, under 2 s on a fresh connection: best of 3). The
figures come from the same code in benchmarks/bench_scoring_load.py and
benchmarks/bench_lake_monitoring.py (docs/reliability.md).

    BSTAR_TORCH_THREADS=1 pytest -m slow tests/reliability/test_load.py     # ~15-25 min on 2 cores
"""

from __future__ import annotations

import os

import pytest

from benchmarks.bench_lake_monitoring import (
    SCORED_AGGREGATE,
    _connect_string_join,
    _line,
    build,
    compare_joins,
    time_queries,
)
from benchmarks.bench_scoring_load import run_load
from bstar.storage.catalog import connect
from bstar.verifiers import sandbox as sb

pytestmark = pytest.mark.slow

PEAK_RSS_MIB = 2048  # this process + verifier workers + sandboxes, summed
QUERY_BOUND_S = 2.0  # fresh read-only connection + first run, best of 3


@pytest.mark.skipif(sb.sandbox_problem() is not None, reason="no sandbox here")
def test_scoring_100k_math_and_2k_programs(tmp_path):
    f = run_load(100_000, 2_000, workers=2, root=tmp_path)
    math, code = f["math"], f["code"]
    assert math["stored"] == 100_000 and sum(math["status"].values()) == 100_000
    # the mix: 80% boxed answers (graded), 20% none; math-verify finishes every one of them
    assert math["status"] == {"ok": 80_000, "no_answer": 20_000}
    assert code["stored"] == 2_000
    assert code["status"] == {"ok": 1_400, "wrong_answer": 300, "compile_error": 100, "runtime_error": 160, "time_limit": 40}
    assert math["peak_rss_mib"] < PEAK_RSS_MIB and code["peak_rss_mib"] < PEAK_RSS_MIB
    assert f["left_behind"] == {} and f["descendants_after_shutdown"] == 0
    assert f["fds_grown"] < 16  # a per-item leak would be thousands


def test_monitoring_queries_on_10m_candidates(tmp_path):
    b = build(tmp_path, 10_000_000, 10)
    assert b["rows"] == 10_000_000
    times = time_queries(tmp_path)
    for name, t in {**times, **compare_joins(tmp_path)}.items():
        print(_line(name, t))
    assert times["pass_at_k_dashboard"].rows == 10 and times["one query's samples"].rows == 8
    # 10 iterations x (ok correct, ok wrong, no_answer)
    assert times["status/correct/mean reward (scored)"].rows == 30
    # the whole join gives what the string-keyed join it replaced gives, row for row
    con = connect(tmp_path)
    ref = _connect_string_join(tmp_path)
    try:
        assert con.sql(SCORED_AGGREGATE).fetchall() == ref.sql(SCORED_AGGREGATE).fetchall()
    finally:
        con.close()
        ref.close()
    # every query, the whole-join aggregates included, is under the bound (a loaded machine is not:
    # the figures printed above say by how much; the string-keyed join is the reference)
    slow = {name: round(t.fresh_best, 2) for name, t in times.items() if t.fresh_best >= QUERY_BOUND_S}
    assert not slow, f"{slow} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
