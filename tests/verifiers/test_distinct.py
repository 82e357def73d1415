"""Grading each distinct answer once (bstar.verifiers.distinct): every candidate still gets the
verdict a per-row call gives, with grader calls = distinct (query, answer) keys."""

from __future__ import annotations

import polars as pl
import pytest

from bstar.verifiers import register_verifier, verify
from bstar.verifiers.distinct import VerdictCache, verify_distinct


@pytest.fixture
def calls(monkeypatch):
    """The items every verify_many batch hands the pool."""
    import bstar.verifiers.pool as pool

    seen, real = [], pool.run_batch

    def spy(target, items, *, workers=None, timeout):
        seen.extend(items)
        return real(target, items, workers=1, timeout=timeout)

    monkeypatch.setattr(pool, "run_batch", spy)
    return seen


def frame(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    """(query_id, response, gold) rows; sample_idx counts per query."""
    df = pl.DataFrame(rows, schema=["query_id", "response", "answer"], orient="row")
    return df.with_columns(pl.int_range(pl.len()).over("query_id").cast(pl.Int32).alias("sample_idx"))


SOLUTION = "She has 3 + 15 = 18 apples.\n#### 18"
OTHER_WAY = "15 + 3 = 18, so the answer is 18.\n#### 18"
WRONG = "3 * 15 = 45 wait 17\n#### 17"
NO_NUMBER = "I cannot tell."


def test_gsm8k_grades_each_distinct_answer_of_a_query_once(calls):
    rows = [("q1", SOLUTION, "18")] * 3 + [("q1", OTHER_WAY, "18")] * 2 + [("q1", WRONG, "18"), ("q1", NO_NUMBER, "18")]
    rows += [("q2", SOLUTION, "17"), ("q2", WRONG, "17"), ("q2", WRONG, "17"), ("q2", " " + WRONG, "17")]
    f = frame(rows)
    cache = VerdictCache()
    out = verify_distinct("gsm8k", f, cache, workers=1)
    # per-row truth: the verdict a direct call gives each row
    truth = [verify("gsm8k", r, a) for _, r, a in rows]
    assert out["query_id"].to_list() == f["query_id"].to_list()
    assert out["sample_idx"].to_list() == f["sample_idx"].to_list()
    assert out["correct"].to_list() == [v.correct for v in truth]
    assert out["status"].to_list() == [v.status for v in truth]
    assert out["extracted"].to_list() == [v.extracted for v in truth]
    # q1 states 18 (two texts), 17 and nothing: 3 calls; q2 states 18 and 17 (three texts): 2 calls
    assert cache.verified == len(calls) == 5
    assert cache.candidates == 11 and cache.distinct_responses == 4 + 3
    # a later chunk of the same stage reuses what is cached: no new calls
    again = verify_distinct("gsm8k", frame([("q1", "so 18\n#### 18", "18"), ("q2", WRONG, "17")]), cache, workers=1)
    assert again["correct"].to_list() == [True, True] and cache.verified == 5 and len(calls) == 5


def test_step_verifier_keeps_one_verdict_per_distinct_response(calls):
    right = "23+45=68; 68-12=56. #### 56"
    lucky = "23+45=60; 60-4=56. #### 56"  # right answer, wrong steps: another verdict
    gold = '{"answer": "56", "question": "23+45-12=?"}'
    rows = [("a", right, gold)] * 4 + [("a", lucky, gold)] * 2
    cache = VerdictCache()
    out = verify_distinct("arith-steps", frame(rows), cache, workers=1)
    assert out["correct"].to_list() == [True] * 4 + [False] * 2
    assert cache.verified == len(calls) == 2
    assert verify("arith-steps", lucky, gold).correct is False


def _slow_on_13(response, answer):
    import time

    if response.rstrip().endswith("13"):
        time.sleep(30)
    return response.rstrip().endswith(answer)


def _last_token(response, answer):
    return response.split()[-1] if response.split() else None


def test_scorer_failure_is_shared_by_every_copy_and_counts_as_no_reward(calls):
    register_verifier("test-slow13", f"{__name__}:_slow_on_13", answer_key=f"{__name__}:_last_token", replace=True)
    rows = [("q", "it is 13", "12"), ("q", "so 13", "12"), ("q", "it is 12", "12"), ("q", "maybe 12", "12")]
    cache = VerdictCache()
    out = verify_distinct("test-slow13", frame(rows), cache, workers=1, timeout=1.5)
    assert out["status"].to_list() == ["timeout", "timeout", "ok", "ok"]
    assert out["correct"].to_list() == [None, None, True, True]  # a failure has no verdict, not False
    assert cache.verified == 2  # "13" once (it timed out once, for both), "12" once


def test_a_raising_key_function_grades_that_response_alone(calls):
    def bad_key(response, answer):
        raise RuntimeError("key bug")

    register_verifier("test-badkey", "bstar.verifiers.gsm8k:verify_gsm8k", answer_key=bad_key, replace=True)
    out = verify_distinct("test-badkey", frame([("q", SOLUTION, "18"), ("q", OTHER_WAY, "18"), ("q", SOLUTION, "18")]),
                          VerdictCache(), workers=1)
    assert out["correct"].to_list() == [True, True, True] and len(calls) == 2


@pytest.mark.parametrize(
    "name,responses,gold",
    [
        ("math", ["so $\\boxed{\\frac{1}{2}}$", "thus \\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "no box"], "\\frac{1}{2}"),
        ("multiple_choice", ["The answer is B", "Answer: B", "The answer is C", "none"],
         '{"label": "B", "labels": ["A", "B", "C", "D"], "choices": ["1", "2", "3", "4"]}'),
        ("arith", ["1+2=3. #### 3", "2+1=3. #### 3", "1+2=4. #### 4", "no answer"], "3"),
    ],
)
def test_answer_only_verifiers_agree_with_per_row_calls(calls, name, responses, gold):
    rows = [("q", r, gold) for r in responses]
    cache = VerdictCache()
    out = verify_distinct(name, frame(rows), cache, workers=1)
    truth = [verify(name, r, gold) for r in responses]
    assert out["correct"].to_list() == [v.correct for v in truth]
    assert out["status"].to_list() == [v.status for v in truth]
    assert cache.verified == 3  # the first two responses state the same answer
