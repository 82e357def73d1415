"""GSM8K verifier: numeric comparison of the model's final answer with the gold `#### N`.

The model's answer is read from the last explicit answer it wrote that carries a number, in
any of the forms real models use:
- `# Answer` (the paper's and our chat instruction's format) or `#### N` (GSM8K's own): the
  first number after the marker;
- `\\boxed{N}` (math-tuned models; `\\frac{a}{b}` inside reads as a/b);
- "The answer is N", "Answer: N", "the final answer is $N$" (instruct models' prose; "the answer
  is 4 + 2 = 6" states 6).
A marker with no number after it (a model quoting the instruction back: "the line '# Answer' is
the final answer") does not count. With no explicit answer, the last number anywhere. Commas,
`$`, `%` and a trailing `.` are dropped; the numbers are compared exactly as fractions (so `18`,
`18.00`, `$18` and `36/2` all equal `18`).

    verify_gsm8k("... so she makes $18.\\n\\n# Answer\\n\\n18", "18")     -> correct
    verify_gsm8k("... The answer is: 18", "18")                          -> correct
    verify_gsm8k(response, "Janet sells ... #### 18")                    -> gold may be a full solution
"""

from __future__ import annotations

import re

from bstar.verifiers.base import ERROR, NO_ANSWER, NUMBER_RE, OK, Verdict, after_marker, as_text, format_number, parse_number

MARKERS = ("# Answer", "####")
# Longer numbers are not GSM8K answers; capping keeps Fraction() cheap on adversarial text.
_MAX_LEN = 64
# "The answer is 18", "Answer: 18", "final answer is $18$": the number must follow within a few
# characters of the phrase (after optional `:`, `=`, `$`, `\(`, `**`), or the phrase is prose.
_ANSWER_IS_RE = re.compile(r"(?i)\banswer\s*(?:is|was|=|:)\s*:?\s*(?:\\\(|\$|\*\*|\\\[|\s|[\"'“])*(?=[-.\d\\])")
_FRAC_RE = re.compile(r"\\d?frac\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")
_TAIL_WINDOW = 40  # characters after a phrase in which its number must start


def _boxed_span(text: str) -> tuple[int, str] | None:
    """(position, content) of the last `\\boxed{...}`."""
    from bstar.verifiers.math_answer import last_boxed  # pure text helper; no sympy import

    content = last_boxed(text)
    if content is None:
        return None
    return max(text.rfind("\\boxed"), text.rfind("\\fbox")), content


def _first_number(text: str) -> str | None:
    m = NUMBER_RE.search(_FRAC_RE.sub(r"\1/\2", text))
    return m.group(0) if m else None


def _phrase_number(tail: str) -> str | None:
    """The number a phrase states: "the answer is 4 + 2 = 6 books" states 6 (after the last `=`
    of its sentence), "the answer is 18. Check: 18 - 5 = 13" states 18."""
    line = _SENTENCE_END_RE.split(tail, maxsplit=1)[0]
    if "=" in line:
        found = _first_number(line.rsplit("=", 1)[1])
        if found is not None:
            return found
    return _first_number(line)


def extract_answer(response) -> str | None:
    """The model's final number as text (as written, commas kept), or None."""
    text = as_text(response)
    if text is None:
        return None
    text = text[-20_000:]
    spans: list[tuple[int, str | None]] = []  # (where the explicit answer starts, its number)
    tail = after_marker(text, MARKERS)
    if tail is not None:
        spans.append((len(text) - len(tail), _first_number(tail)))
    boxed = _boxed_span(text)
    if boxed is not None:
        spans.append((boxed[0], _first_number(boxed[1])))
    phrases = list(_ANSWER_IS_RE.finditer(text))
    if phrases:
        m = phrases[-1]
        spans.append((m.start(), _phrase_number(text[m.end() : m.end() + _TAIL_WINDOW])))
    # A marker with no number after it is the instruction quoted back ("The line '# Answer' is
    # the final answer"), not an answer: the last explicit answer that has a number wins.
    numbered = [s for s in spans if s[1] is not None]
    if numbered:
        return max(numbered, key=lambda s: s[0])[1]
    if spans:
        return None
    matches = NUMBER_RE.findall(text)
    return matches[-1] if matches else None


def gold_number(answer) -> str | None:
    s = str(answer)
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    m = NUMBER_RE.search(s)
    return m.group(0) if m else None


def answer_key(response, answer) -> str | None:
    """What `verify_gsm8k`'s verdict depends on besides the gold answer: the number as written."""
    return extract_answer(response)


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
