"""Tricky MATH answer pairs and what the `math` verifier says about them.

The third column is what math-verify 0.9 says on its own (parse("$gold$") vs parse("$pred$"),
recorded by running it); the fourth is our verdict (we hand math-verify the extracted answer
wrapped in `\boxed{}`). They differ only where we normalise (see
bstar/verifiers/math_answer.py): a number followed by plain words; and `30°`, which math-verify
accepts between `$...$` but not inside `\boxed{}`.
Rows marked `# kept` are cases where math-verify's strict answer was kept on purpose.
"""

from __future__ import annotations

import time

import pytest

from bstar.verifiers import verify, verify_many

# (gold, prediction, math-verify alone, expected verdict)
TABLE = [
    # fractions vs decimals
    (r"\frac{1}{2}", "0.5", True, True),
    (r"\frac{1}{2}", r"\dfrac12", True, True),
    (r"\frac{1}{3}", "0.333", False, False),  # kept: 3 digits is not 1/3 at math-verify's rounding
    (r"\frac{1}{3}", "0.3333333", True, True),
    (r"-\frac{3}{4}", "-0.75", True, True),
    ("1/2", r"\frac{1}{2}", True, True),
    ("12", "12.0", True, True),
    # percent
    (r"25\%", "25", True, True),
    (r"25\%", "0.25", True, True),
    ("50", r"50\%", True, True),
    # intervals
    ("[1,3)", "[1,3)", True, True),
    ("[1,3)", "(1,3)", False, False),
    (r"(-\infty, 2]", r"x \le 2", False, False),  # kept: a relation is not an interval answer
    (r"(-\infty,2]\cup[5,\infty)", r"(-\infty,2] \cup [5,\infty)", True, True),
    (r"x \in [2,5]", "[2,5]", True, True),
    # sets and tuples
    (r"\{1,2,3\}", r"\{3,2,1\}", True, True),
    (r"\{1,2\}", r"\{1,2,3\}", False, False),
    ("1,2,3", "3,2,1", True, True),
    ("(1,2)", "(2,1)", False, False),
    # matrices
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", True, True),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&2\\3&5\end{pmatrix}", False, False),
    # units
    ("5", r"5\text{ cm}", True, True),
    ("10", r"10\text{ inches}", True, True),
    (r"5\text{ cm}", "5", True, True),
    ("4", r"\$4", True, True),
    ("4", "4 dollars", False, True),  # ours: number + plain words is the number
    # x = 3 vs 3
    ("3", "x=3", True, True),
    ("x=3", "3", True, True),
    ("3", "x = 4", False, False),
    # degrees
    (r"30^\circ", "30", True, True),
    ("30", r"30^{\circ}", True, True),
    ("30", "30°", True, True),  # inside \boxed{} math-verify says False: we rewrite ° as ^\circ
    (r"\frac{\pi}{6}", r"30^\circ", False, False),  # kept: degrees vs radians is not settled by the text
    # radicals, polynomials, complex, constants
    (r"2\sqrt{2}", r"\sqrt{8}", True, True),
    ("x^2+2x+1", "(x+1)^2", True, True),
    ("3+2i", "2i+3", True, True),
    (r"\pi", "3.14159265358979", True, True),
    (r"10,\!000", "10000", True, True),
    (r"\text{(A)}", "A", True, True),
    ("1e-3", "0.001", False, False),  # kept: scientific notation is not LaTeX
]


def test_table_is_big_enough():
    assert len(TABLE) >= 25


def test_table_verdicts():
    pairs = [("The answer is $\\boxed{" + pred + "}$.", gold) for gold, pred, _, _ in TABLE]
    verdicts = verify_many("math", pairs, workers=2, timeout=30)
    wrong = [
        (gold, pred, v)
        for (gold, pred, _, expected), v in zip(TABLE, verdicts)
        if v.correct != expected or v.status != "ok"
    ]
    assert not wrong, wrong


def test_math_verify_alone_matches_recorded_column():
    import math_verify

    got = [
        (gold, pred, bool(math_verify.verify(math_verify.parse("$" + gold + "$"), math_verify.parse("$" + pred + "$"))))
        for gold, pred, _, _ in TABLE
    ]
    diffs = [(g, p, mv, rec) for (g, p, mv), (_, _, rec, _) in zip(got, TABLE) if mv != rec]
    assert not diffs, f"math-verify changed its mind: {diffs}"


@pytest.mark.parametrize(
    "response,extracted",
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed 5.", "5"),
        (r"\fbox{7}", "7"),
        ("work...\n\n# Answer\n\n$x=3$", "x=3"),
        (r"\boxed{\frac{1}{2}", None),  # never closed: no answer
        ("no answer at all", None),
    ],
)
def test_extraction(response, extracted):
    from bstar.verifiers.math_answer import extract_answer

    assert extract_answer(response) == extracted


def test_no_answer_and_garbage_never_raise():
    assert verify("math", "I give up", "3").status == "no_answer"
    for junk in [None, b"\xff\xfe\\boxed{3}", r"\boxed{\frac{", r"\boxed{}", "\\boxed{" + "(" * 500 + "}", 12345]:
        v = verify("math", junk, "3")
        assert v.status in {"ok", "no_answer", "error", "timeout"}
        assert v.correct is False or junk == b"\xff\xfe\\boxed{3}"


def test_power_tower_times_out_and_batch_goes_on():
    tower = r"$\boxed{2^{2^{2^{2^{2^2}}}}}$"
    t0 = time.monotonic()
    verdicts = verify_many("math", [(tower, "5"), (r"\boxed{4}", "4"), (r"\boxed{5}", "4")], workers=2, timeout=3)
    elapsed = time.monotonic() - t0
    assert verdicts[0].status == "timeout" and not verdicts[0].correct
    assert verdicts[1].correct and verdicts[1].status == "ok"
    assert not verdicts[2].correct and verdicts[2].status == "ok"
    assert elapsed < 25


def test_single_verify_is_isolated_too():
    v = verify("math", r"\boxed{2^{2^{2^{2^{2^2}}}}}", "5", timeout=2)
    assert v.status == "timeout"
