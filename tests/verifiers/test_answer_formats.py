"""arith, gsm8k and multiple_choice verifiers, the registry, and verify_many's contract."""

from __future__ import annotations

import json

import pytest

from bstar.verifiers import STATUSES, Verdict, check_steps, register_verifier, step_details, verify, verify_many
from bstar.verifiers.registry import get_verifier

# --- arith -----------------------------------------------------------------------------------


def test_arith_final_answer():
    assert verify("arith", "23+45=68; 68-12=56. #### 56", "56") == Verdict(True, "56", "ok", "")
    assert verify("arith", "23+45=68; 68-12=55. #### 55", "56").correct is False
    assert verify("arith", "12-45=-33; -33+5=-28. #### -28", "-28").correct
    assert verify("arith", "23+45=68", "68").status == "no_answer"
    assert verify("arith", "#### abc", "68").status == "no_answer"
    assert verify("arith", "#### " + "9" * 5000, "68").status == "no_answer"


def test_arith_steps_against_question():
    q = "23+45-12=?"
    assert check_steps("23+45=68; 68-12=56. #### 56", q) == [True, True]
    assert check_steps("23+45=68; 68-12=55. #### 55", q) == [True, False]  # arithmetic slip
    assert check_steps("23+45=69; 69-12=57. #### 57", q) == [False, True]  # continues from its own result
    assert check_steps("23+45=69; 69-12=57. #### 57", q, cumulative=True) == [False, False]
    assert check_steps("23+45=68; 67-12=55. #### 55", q) == [True, False]  # does not continue
    assert check_steps("24+45=69; 69-12=57. #### 57", q) == [False, True]  # first operand not the question's
    assert check_steps("23+44=67; 67-12=55. #### 55", q) == [False, True]  # wrong operand from the question
    assert check_steps("23+45=68; 68+12=80. #### 80", q) == [True, False]  # wrong operation
    assert check_steps("23+45=68; 68-12=56; 56+1=57. #### 57", q) == [True, True, False]  # extra step
    assert check_steps("23+45=68; 68 minus 12 is 56. #### 56", q) == [True, False]  # unparseable step
    assert check_steps("", q) == []
    assert check_steps("12-45=-33; -33*2=-66. #### -66", "Q: 12-45*2=? A: ") == [True, True]


def test_arith_steps_verifier_needs_the_whole_solution_right():
    from bstar.datasets import answer_for_verifier

    q = "89+54-7=?"
    gold = answer_for_verifier({"prompt": q, "answer": "136", "meta": "{}"}, "arith-steps")
    assert json.loads(gold) == {"answer": "136", "question": q}
    assert verify("arith-steps", "89+54=143; 143-7=136. #### 136", gold) == Verdict(True, "136", "ok", "steps 2/2 right")
    # the right total after wrong steps: answer-only says correct, arith-steps does not
    lucky = "89+54=133; 133-7=136. #### 136"
    assert verify("arith", lucky, "136").correct
    assert verify("arith-steps", lucky, gold) == Verdict(False, "136", "ok", "right answer, wrong steps (steps 0/2 right)")
    assert not verify("arith-steps", "89+54=143. #### 136", gold).correct  # a step missing
    assert not verify("arith-steps", "89+53=142; 142-6=136. #### 136", gold).correct  # wrong operands
    assert not verify("arith-steps", "89+54=143; 143-7=136. #### 135", gold).correct  # wrong final
    assert verify("arith-steps", "89+54=143; 143-7=136", gold).status == "no_answer"
    # a bare answer: arithmetic and chaining only
    assert verify("arith-steps", "23+45=68; 68-12=56. #### 56", "56").correct
    assert not verify("arith-steps", "23+45=68; 68-12=55. #### 56", "56").correct  # last step != final


def test_arith_steps_without_question():
    assert check_steps("23+45=68; 68-12=56. #### 56") == [True, True]
    assert check_steps("23+45=60; 68-12=56. #### 56") == [False, False]
    d = step_details("23+45=68; 68-12=55. #### 55", "23+45-12=?")
    assert d[1].parsed and not d[1].arithmetic_ok and d[1].chain_ok and d[1].question_ok


def test_arith_matches_generated_gold():
    from bstar.datasets.arith import generate

    for row in generate(200, seed=3, split="train"):
        sol = row["meta"]["solution"]
        assert verify("arith", sol, row["answer"]).correct
        assert all(check_steps(sol, row["prompt"]))


# --- gsm8k -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response,answer,correct,extracted",
    [
        ("She makes $18 a day.\n\n# Answer\n\n18", "18", True, "18"),
        ("# Answer\n\n$18.00", "18", True, "18"),
        ("#### 2,125", "2125", True, "2125"),
        ("The total is 1,234,567 apples.", "1234567", True, "1234567"),
        ("so -3 degrees. #### -3", "-3", True, "-3"),
        ("half: 36/2 # Answer 18.", "18", True, "18"),
        ("... #### 19", "18", False, "19"),
        ("3 apples then 5 pears", "5", True, "5"),
        ("answer 0.5", "Janet ... #### 0.50", True, "1/2"),
        # the forms instruct and math-tuned models write; the last explicit answer wins over later numbers
        ("3 + 4 = 7 apples. The answer is: 7\n\nI hope that helps with 2 of your questions.", "7", True, "7"),
        ("She pays 5 * 3 = 15. The answer is $15.", "15", True, "15"),
        ("Final Answer: The final answer is $\\boxed{42}$. I hope it is correct (1 try).", "42", True, "42"),
        ("So x = \\boxed{\\frac{3}{4}} of the 12 cakes.", "0.75", True, "3/4"),
        ("**Answer:** 12 apples, from 3 boxes", "12", True, "12"),
        ("the answer is \\(10\\), not 3", "10", True, "10"),
        ("# Answer\n\n12\n\nThe answer is 13.", "13", True, "13"),  # a later explicit answer corrects it
        ("The answer is 8. Check: 8 - 5 = 3", "8", True, "8"),
        ("#### 5\n\n6 apples in total", "5", True, "5"),
    ],
)
def test_gsm8k(response, answer, correct, extracted):
    v = verify("gsm8k", response, answer)
    assert (v.correct, v.extracted, v.status) == (correct, extracted, "ok")


def test_gsm8k_no_answer_and_bad_gold():
    assert verify("gsm8k", "I do not know", "3").status == "no_answer"
    assert verify("gsm8k", "# Answer\n\nnone", "3").status == "no_answer"
    assert verify("gsm8k", "#### 3", "three").status == "error"


# --- multiple choice ---------------------------------------------------------------------------

ARC_NUMERIC = {"label": "2", "labels": ["1", "2", "3", "4"], "choices": ["red", "blue", "green", "gold"]}


@pytest.mark.parametrize(
    "response,answer,correct",
    [
        ("# Answer\n\nB", "B", True),
        ("The answer is (C).", "B", False),
        ("Answer: D", {"label": "D", "labels": list("ABCD")}, True),
        (" C\n\nQuestion: next one", "C", True),
        ("# Answer\n\n2", ARC_NUMERIC, True),
        ("The answer is B.", ARC_NUMERIC, True),  # letter for a numerically labelled item
        ("# Answer\n\nblue", ARC_NUMERIC, True),  # the choice's own text
        ("# Answer\n\n(2)", json.dumps(ARC_NUMERIC), True),
        ("The answer is 3", json.dumps(ARC_NUMERIC), False),
        ("# Answer\n\nE", {"label": "E", "labels": list("ABCDE")}, True),  # a 5-choice item
        ("# Answer\n\nC", {"label": "A", "labels": list("ABC")}, False),  # a 3-choice item
        (r"\boxed{A}", "A", True),
    ],
)
def test_multiple_choice(response, answer, correct):
    v = verify("multiple_choice", response, answer)
    assert v.status == "ok" and v.correct is correct, v


def test_multiple_choice_no_answer():
    assert verify("multiple_choice", "A planet rotates faster.", "C").status == "no_answer"
    v = verify("multiple_choice", "# Answer\n\nD", {"label": "A", "labels": list("ABC")})
    assert v.status == "no_answer" and "not one of the labels" in v.detail
    assert verify("multiple_choice", "# Answer\n\nA", {"label": "Z", "labels": list("ABC")}).status == "error"


# --- registry and the never-raise contract ----------------------------------------------------

JUNK = [None, "", " ", "\x00\x00", b"\xff\xfe\x00", "#" * 10_000, "\\boxed{" * 200, 3.5, ["a"], "∞" * 100]


@pytest.mark.parametrize("name,answer", [("arith", "5"), ("gsm8k", "5"), ("multiple_choice", "A")])
def test_never_raises_on_junk(name, answer):
    for junk in JUNK:
        v = verify(name, junk, answer)
        assert isinstance(v, Verdict) and v.status in STATUSES and v.correct is False


def test_unknown_verifier_and_dotted_path():
    with pytest.raises(KeyError, match="unknown verifier"):
        get_verifier("nope")
    v = verify("bstar.verifiers.gsm8k:verify_gsm8k", "#### 4", "4")
    assert v.correct


def _always_boom(response, answer):
    raise RuntimeError("boom")


def _exact(response, answer):
    return response.strip() == answer


def test_registered_verifier_errors_become_status():
    register_verifier("test-boom", _always_boom, replace=True)
    v = verify("test-boom", "x", "y")
    assert v.status == "error" and "boom" in v.detail
    register_verifier("test-exact", _exact, replace=True)
    assert verify("test-exact", " y ", "y") == Verdict(True, None, "ok", "")
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("test-exact", "bstar.verifiers.gsm8k:verify_gsm8k")


def test_verify_many_keeps_order_and_item_options():
    pairs = [(f"#### {i}", str(i if i % 3 else i + 1)) for i in range(40)]
    verdicts = verify_many("gsm8k", pairs, workers=2)
    assert [v.correct for v in verdicts] == [bool(i % 3) for i in range(40)]
    out = verify_many("arith", [("1+2=3. #### 3", "3", {"question": "1+2=?"}), ("1+2=4. #### 4", "3")], workers=1)
    assert out[0].detail == "steps 1/1 right" and out[1].detail == ""
    assert verify_many("gsm8k", [], workers=2) == []


def test_verify_many_with_user_verifier_module(tmp_path, monkeypatch):
    (tmp_path / "my_grader_mod.py").write_text(
        "import time\n"
        "def grade(response, answer):\n"
        "    if response == 'hang':\n"
        "        time.sleep(60)\n"
        "    if response == 'die':\n"
        "        import os; os._exit(3)\n"
        "    return response == answer\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    verdicts = verify_many("my_grader_mod:grade", [("a", "a"), ("hang", "a"), ("b", "a"), ("die", "x"), ("c", "c")], workers=2, timeout=2)
    assert [v.status for v in verdicts] == ["ok", "timeout", "ok", "error", "ok"]
    assert [v.correct for v in verdicts] == [True, False, False, False, True]
    assert "died" in verdicts[3].detail
