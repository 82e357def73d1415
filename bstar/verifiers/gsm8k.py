"""GSM8K verifier: numeric comparison of the model's final answer with the gold `#### N`.

The model's answer is the first number after the last `# Answer` or `####` marker, else the
last number anywhere in the response. Commas, `$` and a trailing `.` are dropped; the numbers
are compared exactly as fractions (so `18`, `18.00`, `$18` and `36/2` all equal `18`).

    verify_gsm8k("... so she makes $18.\n\n# Answer\n\n18", "18")     -> correct
    verify_gsm8k(response, "Janet sells ... #### 18")                -> gold may be a full solution
"""

from __future__ import annotations

from bstar.verifiers.base import ERROR, NO_ANSWER, NUMBER_RE, OK, Verdict, after_marker, as_text, format_number, parse_number

MARKERS = ("# Answer", "####")
# Longer numbers are not GSM8K answers; capping keeps Fraction() cheap on adversarial text.
_MAX_LEN = 64


def extract_answer(response) -> str | None:
    """The model's final number as text (as written, commas kept), or None."""
    text = as_text(response)
    if text is None:
        return None
    tail = after_marker(text, MARKERS)
    if tail is not None:
        m = NUMBER_RE.search(tail)
        return m.group(0) if m else None
    matches = NUMBER_RE.findall(text[-20_000:])
    return matches[-1] if matches else None


def gold_number(answer) -> str | None:
    s = str(answer)
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    m = NUMBER_RE.search(s)
    return m.group(0) if m else None


def verify_gsm8k(response, answer) -> Verdict:
    raw = extract_answer(response)
    if raw is None:
        return Verdict(False, None, NO_ANSWER, "no number in the response")
    value = parse_number(raw) if len(raw) <= _MAX_LEN else None
    if value is None:
        return Verdict(False, raw, NO_ANSWER, f"cannot read {raw[:40]!r} as a number")
    gold_raw = gold_number(answer)
    gold = parse_number(gold_raw) if gold_raw else None
    if gold is None:
        return Verdict(False, format_number(value), ERROR, f"gold answer has no number: {str(answer)[:80]!r}")
    return Verdict(value == gold, format_number(value), OK, "")
