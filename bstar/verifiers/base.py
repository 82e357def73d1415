"""The verdict every verifier returns, and small helpers shared by the answer formats.

A verifier is a plain function `fn(response: str, answer, **options) -> Verdict`. It never
raises on model output: whatever the text, it returns a status.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

# Every status a verdict can carry (DESIGN.md §1 "Rewards"): `ok` means the grader ran to the
# end (correct or not); everything else says why there is no clean comparison.
OK = "ok"
NO_ANSWER = "no_answer"
TIMEOUT = "timeout"
ERROR = "error"
COMPILE_ERROR = "compile_error"
RUNTIME_ERROR = "runtime_error"
WRONG_ANSWER = "wrong_answer"
# A generated program that ran past its time limit: judged wrong, like runtime_error. Kept apart
# from `timeout`, which says the grader itself ran out of time and so has no verdict; an infinite
# loop must count as a wrong answer, not as a scorer failure.
TIME_LIMIT = "time_limit"
STATUSES = (OK, NO_ANSWER, TIMEOUT, ERROR, COMPILE_ERROR, RUNTIME_ERROR, WRONG_ANSWER, TIME_LIMIT)
# Statuses that mean "the scorer could not judge": no reward, counted apart from wrong answers.
SCORER_FAILURES = (TIMEOUT, ERROR)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None
    status: str
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def as_text(response: Any) -> str | None:
    """Model output as text; None when there is nothing to grade. Never raises."""
    if response is None:
        return None
    if isinstance(response, str):
        return response
    if isinstance(response, (bytes, bytearray)):
        return bytes(response).decode("utf-8", errors="replace")
    try:
        return str(response)
    except Exception:  # an object whose __str__ raises is still "model output" here
        return None


# A number as models and GSM8K write it: optional sign, digits with optional thousands
# separators, optional decimals, or a simple fraction. The (?<![\d.]) guard keeps "1.2.3"
# from yielding ".3".
NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<![\w.])-?\.\d+")


def parse_number(text: str) -> Fraction | None:
    """`"1,234.50"`, `"$-3"`, `"3/4"`, `"12."` -> exact Fraction; None when it is not a number."""
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    s = s.rstrip(".")
    s = s.removesuffix("%")
    if not s:
        return None
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return Fraction(num) / Fraction(den)
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    """Canonical text for an extracted number (integers without a decimal point)."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def after_marker(text: str, markers: tuple[str, ...]) -> str | None:
    """Text after the last occurrence of any marker, or None when none occurs."""
    best = -1
    best_len = 0
    for m in markers:
        i = text.rfind(m)
        if i > best:
            best, best_len = i, len(m)
    if best < 0:
        return None
    return text[best + best_len :]
