"""Verifier and step checker for the built-in `arith` task (bstar.datasets.arith).

Responses look like `23+45=68; 68-12=56. #### 56`: steps separated by `; `, the body ended by
`.`, the final answer after `####`.

    verify_arith("23+45=68; 68-12=56. #### 56", "56")          -> Verdict(correct=True, ...)
    check_steps("23+45=68; 68-12=55. #### 55", "23+45-12=?")    -> [True, False]
    verify_arith_steps(response, {"answer": "56", "question": "23+45-12=?"})   # every step right too
    step_details(response, question)                            -> [StepCheck, ...]

A step is right when (1) its arithmetic is right (`a op b = c`), (2) its left operand continues
from the previous step's result (the first step's from the question's first number), and
(3) when the question is given, it applies the question's operation at that position. With
`cumulative=True` a step is right only if every step before it is right too (a prefix label,
the Math-Shepherd convention); the default judges each step against the text before it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from bstar.verifiers.base import NO_ANSWER, OK, Verdict, as_text

_STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_FINAL_RE = re.compile(r"^\s*(-?\d+)")
_QUESTION_RE = re.compile(r"^\s*(?:Q:\s*)?(-?\d+)((?:\s*[+\-*]\s*\d+)+)\s*(?:=\s*\?)?\s*(?:A:\s*)?$")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
# Products of many 4-digit numbers are fine; a model emitting a 10,000-digit number is not
# doing arithmetic and must not make int() slow.
_MAX_DIGITS = 60


@dataclass(frozen=True)
class StepCheck:
    text: str
    parsed: bool
    arithmetic_ok: bool
    chain_ok: bool
    question_ok: bool

    @property
    def ok(self) -> bool:
        return self.parsed and self.arithmetic_ok and self.chain_ok and self.question_ok


def _int(s: str) -> int | None:
    return int(s) if len(s.lstrip("-")) <= _MAX_DIGITS else None


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]] | None:
    """`"23+45-12=?"` (or `"Q: 23+45-12=? A: "`) -> (23, [("+", 45), ("-", 12)]); None if not arith."""
    m = _QUESTION_RE.match(question or "")
    if not m:
        return None
    first = int(m.group(1))
    ops = [(op, int(b)) for op, b in re.findall(r"([+\-*])\s*(\d+)", m.group(2))]
    return first, ops


def split_response(response: str) -> tuple[list[str], str | None]:
    """(step texts, text after `####` or None)."""
    body, sep, final = response.partition("####")
    body = body.strip()
    if body.endswith("."):
        body = body[:-1]
    steps = [s for s in (part.strip() for part in body.split(";")) if s]
    return steps, (final if sep else None)


def step_details(response, question: str | None = None, cumulative: bool = False) -> list[StepCheck]:
    """One StepCheck per `;`-separated step of the response's body."""
    text = as_text(response) or ""
    steps, _ = split_response(text)
    q = parse_question(question) if question else None
    out: list[StepCheck] = []
    prev: int | None = q[0] if q else None
    all_ok = True
    for i, step in enumerate(steps):
        m = _STEP_RE.match(step)
        vals = [_int(g) for g in (m.group(1), m.group(3), m.group(4))] if m else [None]
        if not m or None in vals:
            out.append(StepCheck(step, False, False, False, False))
            all_ok = False
            prev = None
            continue
        a, b, c = vals
        op = m.group(2)
        arithmetic_ok = _APPLY[op](a, b) == c
        # Without a question the first step has nothing to continue from, so it passes.
        if i == 0 and q is None:
            chain_ok = True
        else:
            chain_ok = prev is not None and a == prev
        question_ok = True
        if q is not None:
            question_ok = i < len(q[1]) and q[1][i] == (op, b)
        check = StepCheck(step, True, arithmetic_ok, chain_ok, question_ok)
        if cumulative and not all_ok:
            check = StepCheck(step, True, arithmetic_ok, False, question_ok)
        all_ok = all_ok and check.ok
        out.append(check)
        prev = c
    return out


def check_steps(response, question: str | None = None, cumulative: bool = False) -> list[bool]:
    """Per-step truth labels (see the module docstring); [] when the response has no steps."""
    return [s.ok for s in step_details(response, question, cumulative)]


def extract_final(response) -> str | None:
    text = as_text(response)
    if text is None:
        return None
    _, final = split_response(text)
    if final is None:
        return None
    m = _FINAL_RE.match(final)
    if not m or _int(m.group(1)) is None:
        return None
    return str(int(m.group(1)))


def answer_key(response, answer) -> str | None:
    """What `verify_arith`'s verdict depends on besides the gold answer (without `question=`)."""
    return extract_final(response)


def verify_arith(response, answer, question: str | None = None) -> Verdict:
    """Correct when the integer after `####` equals `answer`. `question` adds a step summary."""
    extracted = extract_final(response)
    if extracted is None:
        return Verdict(False, None, NO_ANSWER, "no integer after '####'")
    try:
        gold = int(str(answer).strip())
    except ValueError:
        return Verdict(False, extracted, "error", f"gold answer is not an integer: {answer!r}")
    detail = ""
    if question:
        labels = check_steps(response, question)
        detail = f"steps {sum(labels)}/{len(labels)} right"
    return Verdict(int(extracted) == gold, extracted, OK, detail)


def verify_arith_steps(response, answer) -> Verdict:
    """Strict: correct only when the final answer is right AND the worked solution is: one right
    step per operation of the question, each continuing the last, the last one's result equal to
    the final answer. `answer` is `{"answer": "56", "question": "23+45-12=?"}` (a dict or its
    JSON, from `answer_for_verifier(row, "arith-steps")`); a bare answer checks the steps'
    arithmetic and chaining only.

    A small policy often writes the right total after wrong steps (`89+54=133; 133-7=136. #### 136`);
    answer-only rewards select those and teach wrong arithmetic. This verifier does not."""
    gold, question = answer, None
    if isinstance(answer, str) and answer.lstrip().startswith("{"):
        answer = json.loads(answer)
    if isinstance(answer, dict):
        gold, question = answer["answer"], answer.get("question")
    verdict = verify_arith(response, gold, question)
    if not verdict.correct:
        return verdict
    checks = step_details(response, question)
    parsed = parse_question(question) if question else None
    n_ops = len(parsed[1]) if parsed else len(checks)
    last = _STEP_RE.match(checks[-1].text) if checks else None
    solved = (
        bool(checks)
        and all(c.ok for c in checks)
        and len(checks) == n_ops
        and last is not None
        and str(int(last.group(4))) == verdict.extracted
    )
    if solved:
        return verdict
    return Verdict(False, verdict.extracted, OK, f"right answer, wrong steps ({verdict.detail or 'unchained'})")
