"""Hostile model output: every verifier returns a stored status (never an exception, never a
silent zero), the scoring stage writes one reward row per candidate with that status, and the
round's metrics count scorer failures apart from wrong answers.

Also the code sandbox attack suite at batch scale through the scoring stage, with the host
checked before and after: no stray processes, no temp dirs, no planted files.

    BSTAR_TORCH_THREADS=1 pytest tests/reliability/test_bad_output.py            # ~40 s
    BSTAR_TORCH_THREADS=1 pytest -m slow tests/reliability/test_bad_output.py    # + 320 programs
"""

from __future__ import annotations

import json
import os
import time

import polars as pl
import pytest

from bstar.verifiers import SCORER_FAILURES, STATUSES, verify_many
from bstar.verifiers import sandbox as sb
from tests.reliability.fixtures_input import (
    GOOD_PROGRAM,
    HOSTILE_PROGRAMS,
    HOSTILE_TEXT,
    INVALID_UTF8,
    RUN_ID,
    STDIO_TESTS,
    fenced,
    host_changes,
    host_state,
    read_rewards,
    score,
    scoring_lake,
)

needs_bwrap = pytest.mark.skipif(sb.sandbox_problem() is not None, reason=f"no sandbox here: {sb.sandbox_problem()}")

GOLD = {
    "arith": "42",
    "gsm8k": "42",
    "math": "42",
    "multiple_choice": json.dumps({"label": "B", "labels": ["A", "B", "C", "D"], "choices": ["41", "42", "43", "44"]}),
    "code": STDIO_TESTS,
}
# Only the response that really ends in the gold answer may be graded correct.
CORRECT_ONLY = {"100k chars then answer"}
# What each verifier makes of the texts that are not plain no_answer; everything else must be
# `no_answer`. Bombs that math-verify cannot finish are `timeout`: a scorer failure, no reward.
EXPECTED = {
    "arith": {"100k chars then answer": "ok", "injection": "ok", "injection quoting the gold": "ok",
              "lone surrogate": "ok", "raw bytes": "ok"},
    "gsm8k": {"100k chars then answer": "ok", "injection": "ok", "injection quoting the gold": "ok",
              "power tower": "ok", "huge factorial": "ok", "nested fractions": "ok",
              "nul and controls": "ok",  # reads the 2 of the escape sequence ESC[2J: a wrong number
              "lone surrogate": "ok", "raw bytes": "ok"},
    "math": {"100k chars then answer": "ok", "injection": "ok", "injection quoting the gold": "ok",
             "power tower": "timeout", "huge factorial": "timeout", "nested fractions": "ok",
             "5000-digit number": "ok", "lone surrogate": "ok", "raw bytes": "ok"},
    "multiple_choice": {"100k chars then answer": "ok", "injection": "ok", "injection quoting the gold": "ok"},
    "code": {},
}


@pytest.mark.parametrize("verifier", sorted(GOLD))
def test_every_hostile_text_gets_a_status(verifier):
    if verifier == "code" and sb.sandbox_problem() is not None:
        pytest.skip("no sandbox here")
    texts = {**HOSTILE_TEXT, **INVALID_UTF8}
    verdicts = dict(zip(texts, verify_many(verifier, [(t, GOLD[verifier]) for t in texts.values()], workers=2, timeout=10)))
    statuses = {name: v.status for name, v in verdicts.items()}
    assert statuses == {name: EXPECTED[verifier].get(name, "no_answer") for name in texts}
    assert {name for name, v in verdicts.items() if v.correct} == (CORRECT_ONLY if verifier != "code" else set())
    assert set(statuses.values()) <= set(STATUSES)


def _stages_lake(tmp_path, dataset, queries, candidates, **kw):
    """The same candidates as the greedy and the eval stage, so the metrics stage sees both."""
    s = scoring_lake(tmp_path, dataset, queries, candidates, stage="eval", **kw)
    g = scoring_lake(tmp_path, dataset, queries, candidates, stage="greedy", **kw)
    return g, s


def test_scoring_stage_stores_statuses_and_metrics_count_scorer_errors_apart(tmp_path):
    from bstar.tasks.evaluation import compute_metrics

    texts = {**HOSTILE_TEXT, "right": "so \\boxed{42}", "wrong": "so \\boxed{41}"}
    # one query per text (greedy: one response per query), gold 42
    queries = [(f"q{i}", "42") for i in range(len(texts))]
    candidates = [(f"q{i}", t) for i, t in enumerate(texts.values())]
    greedy, sampled = _stages_lake(tmp_path, "math", queries, candidates)
    results = {s.stage: score(s, "math") for s in (greedy, sampled)}
    rewards = read_rewards(sampled)
    by_name = dict(zip(texts, rewards.iter_rows(named=True)))

    assert rewards.height == len(texts)
    failed = {n for n, r in by_name.items() if r["status"] in SCORER_FAILURES}
    assert failed == {"power tower", "huge factorial"}
    for name, r in by_name.items():  # no reward for a scorer failure, 0/1 for everything else
        if name in failed:
            assert (r["correct"], r["reward"]) == (None, None), name
        else:
            assert r["reward"] == (1.0 if name in ("right", "100k chars then answer") else 0.0), name
    assert results["eval"]["status"] == {"no_answer": 7, "ok": 7, "timeout": 2}
    assert results["eval"]["scored"] == len(texts) and results["eval"]["correct"] == 2

    out = compute_metrics.fn(RUN_ID, 1, "math", True, sampled.cfg_json)
    metrics = {(r["name"], r["k"]): r["value"] for r in sampled.lake.read("metrics", RUN_ID, 1).iter_rows(named=True)}
    judged = len(texts) - 2
    assert metrics[("scorer_errors", None)] == 2 and metrics[("sampled_scorer_errors", None)] == 2
    assert metrics[("wrong_answers", None)] == judged - 2 and metrics[("sampled_wrong_answers", None)] == judged - 2
    # `n` counts test queries, `sampled_n` samples: failures included, as in every denominator
    assert metrics[("n", None)] == len(texts) and metrics[("sampled_n", None)] == len(texts)
    # greedy Pass@1 is over all 16 test queries: the two timeouts count as not correct
    assert out["pass@1"] == {"test": pytest.approx(2 / len(texts))}
    assert metrics[("pass@k", 1)] == pytest.approx(2 / len(texts))  # sampled: a failure is a miss


def test_lake_stores_replacement_characters_and_controls_verbatim(tmp_path):
    s = scoring_lake(tmp_path, "gsm8k", [("q0", "42")], [("q0", HOSTILE_TEXT["replacement chars"]), ("q0", HOSTILE_TEXT["nul and controls"])])
    assert s.lake.read("candidates", RUN_ID, 1, "eval")["response"].to_list() == [
        HOSTILE_TEXT["replacement chars"], HOSTILE_TEXT["nul and controls"]
    ]
    score(s, "gsm8k")
    rewards = read_rewards(s)
    assert rewards["status"].to_list() == ["no_answer", "ok"] and rewards["reward"].to_list() == [0.0, 0.0]


def _program_batch(n_copies: int) -> tuple[list[tuple[str, str]], list[set[str]], list[str]]:
    programs = [GOOD_PROGRAM, *HOSTILE_PROGRAMS] * n_copies
    return [("q0", fenced(code)) for _, code, _ in programs], [st for *_, st in programs], [n for n, *_ in programs]


_SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _sandbox_uid_entries() -> set[str]:
    """Entries of the shared temp dirs owned by the sandbox uid (root hosts only): a program
    that got out of its private /tmp would leave its files there under that uid."""
    if os.geteuid() != 0:
        return set()
    out = set()
    for d in _SHARED_DIRS:
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        if e.stat(follow_symlinks=False).st_uid == sb.NOBODY:
                            out.add(e.path)
                    except OSError:
                        pass
        except OSError:
            pass
    return out


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _hostile_batch(tmp_path, n_copies: int, timeout_s: float):
    candidates, allowed, names = _program_batch(n_copies)
    s = scoring_lake(tmp_path, "apps", [("q0", STDIO_TESTS)], candidates, timeout_s=timeout_s)
    before, planted_before, fds_before = host_state(), _sandbox_uid_entries(), _open_fds()
    t0 = time.monotonic()
    summary = score(s, "code")
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    after, planted_after = host_state(), _sandbox_uid_entries()
    rewards = read_rewards(s)
    assert rewards.height == len(candidates) == summary["scored"]
    bad = [(name, st) for name, st, ok in zip(names, rewards["status"], allowed) if st not in ok]
    assert not bad, bad
    assert rewards.filter(pl.col("correct"))["sample_idx"].to_list() == [
        i for i, n in enumerate(names) if n == GOOD_PROGRAM[0]
    ]
    assert rewards["reward"].null_count() == 0  # every hostile program is a wrong answer, not a scorer failure
    assert host_changes(before, after) == {}
    assert planted_after - planted_before == set()
    # idle verifier workers are kept (their pipes stay open); a per-program leak would be hundreds
    assert _open_fds() - fds_before < 16
    return summary


@needs_bwrap
def test_sandbox_attacks_in_one_scoring_batch(tmp_path):
    summary = _hostile_batch(tmp_path, 1, timeout_s=30)
    assert summary["status"]["ok"] == 1 and summary["correct"] == 1


@needs_bwrap
@pytest.mark.slow
def test_sandbox_attacks_at_batch_scale(tmp_path):
    """20 copies of the suite: 340 programs (320 hostile) in one scoring stage."""
    summary = _hostile_batch(tmp_path, 20, timeout_s=30)
    print(f"\n340 programs: {summary['wall_s']} s, statuses {summary['status']}")
    assert summary["scored"] == 20 * (1 + len(HOSTILE_PROGRAMS)) and summary["correct"] == 20
