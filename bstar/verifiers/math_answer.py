"""MATH / MATH-500 verifier: the last `\\boxed{...}` (or the text after `# Answer`) graded by math-verify.

    verify_math("... so the answer is $\\boxed{\\frac{1}{2}}$.", "0.5")  -> correct

Extraction is ours (brace-matched, so `\\boxed{\\frac{1}{2}}` is read whole); equivalence is
math-verify's (`math_verify.parse` + `math_verify.verify`, sympy underneath), imported lazily.

Timeouts. math-verify's own timeouts use SIGALRM, which works only in a main thread and cannot
interrupt a long C-level computation (sympy evaluating `2^{2^{2^{2^{2^2}}}}` is one huge integer
power). So this module runs a *soft* timer (SIGALRM via setitimer, raising a BaseException that
math-verify's `except Exception` clauses cannot swallow) when it is in a main thread, and the real
guarantee is the hard kill of `bstar.verifiers.verify_many` / `verify`, which run this verifier
in a worker process and report a hung item as `timeout`.

Normalisation added on top of math-verify, only where the table in
tests/verifiers/test_math_table.py found math-verify wrong by a reasonable standard (it already
handles `\\text{ cm}` units, `^\\circ`, `\\%`, `\\$`, `10,\\!000`, `x=3` vs `3`, `\\dfrac`):
- a Unicode degree sign `30°` is rewritten as `30^\\circ` (math-verify accepts `$30°$` but not
  `\\boxed{30°}`, the form we hand it);
- a number followed by plain words and nothing else (`4 dollars`, `12 cm`) is read as the number
  (math-verify reads it as a product of symbols). Only this exact shape: `5 x` in LaTeX is not
  affected because `x` alone is a variable, so the rule needs two or more letters per word.
Left as math-verify says (documented in the table): `(-\\infty, 2]` vs `x \\le 2` is wrong (a
relation is not an interval unless the prediction is a set), `\\frac{\\pi}{6}` vs `30^\\circ` is wrong,
`1e-3` vs `0.001` is wrong (scientific notation is not LaTeX).
"""

from __future__ import annotations

import re
import signal
import threading

from bstar.verifiers.base import ERROR, NO_ANSWER, OK, TIMEOUT, Verdict, after_marker, as_text

DEFAULT_SOFT_TIMEOUT = 5.0
_MAX_ANSWER_CHARS = 2_000


class _SoftTimeout(BaseException):
    """Raised from SIGALRM; a BaseException so library `except Exception` blocks let it through."""


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (brace-matched), or `\\boxed 5`; None if absent/unclosed."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = idx + (len("\\boxed") if text.startswith("\\boxed", idx) else len("\\fbox"))
    k = i
    while k < len(text) and text[k] == " ":
        k += 1
    if k > i and not text.startswith("{", k):  # `\boxed 5` form: up to whitespace, `$` or end of sentence
        m = re.match(r"\s*([^\s$,]+?)\.?(?:\s|\$|$)", text[i:])
        return m.group(1) if m else None
    i = k
    if not text.startswith("{", i):
        return None
    depth = 0
    j = i
    while j < len(text):
        c = text[j]
        if c == "\\":  # an escaped brace `\{` does not open or close
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None  # unbalanced: the model never closed the box


def extract_answer(response) -> str | None:
    """The last boxed answer, else the text after the last `# Answer` (first non-empty line)."""
    text = as_text(response)
    if text is None:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    tail = after_marker(text, ("# Answer",))
    if tail is None:
        return None
    for line in tail.strip().splitlines():
        line = line.strip()
        if line:
            return _strip_math_delims(line) or None
    return None


def _strip_math_delims(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s.rstrip(".").strip()


_NUMBER_WITH_WORDS_RE = re.compile(r"^\s*(-?\d[\d,]*(?:\.\d+)?)\s+[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*\.?\s*$")


def normalize(ans: str) -> str:
    """Our additions before math-verify (see the module docstring for why)."""
    s = ans.strip().replace("°", "^\\circ")
    m = _NUMBER_WITH_WORDS_RE.match(s)
    if m:
        s = m.group(1)
    return s


def _parse(ans: str):
    import math_verify

    # Wrapping in \boxed{} makes math-verify read the whole string as one LaTeX answer
    # instead of hunting for an expression inside it.
    return math_verify.parse(
        "\\boxed{" + ans + "}",
        extraction_config=[math_verify.LatexExtractionConfig(boxed_match_priority=0), math_verify.ExprExtractionConfig()],
        parsing_timeout=None,
    )


def _grade(gold: str, pred: str) -> tuple[bool, str]:
    import math_verify

    gold_parsed = _parse(gold)
    if not gold_parsed:
        raise ValueError(f"math-verify cannot parse the gold answer {gold!r}")
    pred_parsed = _parse(pred)
    if not pred_parsed:
        return False, "prediction not parseable"
    ok = math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None)
    return bool(ok), ""


def _quiet_math_verify_logs() -> None:
    # math-verify warns once that its own timeout is off; ours is on, so the warning misleads.
    import logging

    for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)


def answer_key(response, answer) -> str | None:
    """What `verify_math`'s verdict depends on besides the gold answer: the extracted answer text
    (graded once per distinct text, which is where math-verify's cost goes)."""
    return extract_answer(response)


def verify_math(response, answer, soft_timeout: float | None = DEFAULT_SOFT_TIMEOUT) -> Verdict:
    pred = extract_answer(response)
    if pred is None:
        return Verdict(False, None, NO_ANSWER, "no \\boxed{} and no '# Answer'")
    gold_text = as_text(answer) or ""
    gold = last_boxed(gold_text) if "\\boxed" in gold_text else gold_text
    gold = _strip_math_delims(gold or "")
    if not gold:
        return Verdict(False, pred, ERROR, "empty gold answer")
    if len(pred) > _MAX_ANSWER_CHARS:
        return Verdict(False, pred[:200], OK, f"answer longer than {_MAX_ANSWER_CHARS} characters; not graded")
    if normalize(pred) == normalize(gold):
        return Verdict(True, pred, OK, "string match")
    _quiet_math_verify_logs()
    use_alarm = soft_timeout and threading.current_thread() is threading.main_thread()
    old = None
    try:
        if use_alarm:
            def _raise(signum, frame):
                raise _SoftTimeout()

            old = signal.signal(signal.SIGALRM, _raise)
            signal.setitimer(signal.ITIMER_REAL, float(soft_timeout))
        try:
            correct, detail = _grade(normalize(gold), normalize(pred))
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except _SoftTimeout:
        return Verdict(False, pred, TIMEOUT, f"math-verify took over {soft_timeout}s")
    except ValueError as e:
        return Verdict(False, pred, ERROR, str(e)[:300])
    except Exception as e:  # sympy can raise anything on odd input; still a verdict
        return Verdict(False, pred, ERROR, f"{type(e).__name__}: {str(e)[:300]}")
    finally:
        if old is not None:
            signal.signal(signal.SIGALRM, old)
    return Verdict(correct, pred, OK, detail)
