"""Multiple-choice verifier (ARC-Challenge): the answer label read from the response, matched
through the item's own label list.

The `answer` argument is one of:
- a plain gold label, `"C"` (labels then default to A-E, or 1-5 when the gold is a digit);
- a dict `{"label": "C", "labels": ["A", "B", "C", "D"], "choices": ["text A", ...]}`
  (`answerKey` is accepted for `label`, and `choices` may be ARC's own
  `{"text": [...], "label": [...]}`);
- that dict as a JSON string (how it travels through Parquet).
`bstar.datasets.answer_for_verifier(row)` builds it from an ARC row.

    verify_multiple_choice("... # Answer\n\nC", {"label": "C", "labels": ["A", "B", "C", "D"]})

Reading the response: the text after the last `# Answer`, else the last "answer is X" /
"Answer: X" / `\\boxed{X}`, else a response that is only a label (`"(B)"`, `"B."`), else one
line quoting a single option (`"(C) They have each gained ..."`; a list of every option is no
answer). The label may
be written in the other numbering: ARC items labelled `1`-`4` accept `B` for the second choice,
and letter-labelled items accept `2`; a response that repeats a choice's text also counts.
"""

from __future__ import annotations

import json
import re

from bstar.verifiers.base import ERROR, NO_ANSWER, OK, Verdict, after_marker, as_text

_TOKEN_RE = re.compile(r"^\s*(?:\\boxed\{\s*)?\**\s*\(?\s*([A-Za-z]|\d{1,2})\s*\)?(?:\s*\})?\**(?:[.:)\s,]|$)")
# Words case-insensitive, the label itself upper case or a digit: "the answer is a ..." is prose.
_ANSWER_IS_RE = re.compile(
    r"(?i:answer|choice|option)\s*(?i:is|:)?\s*(?i:option|choice)?\s*[:\-]?\s*\**\s*['\"‘“]?\(?\s*([A-Z]|\d{1,2})\s*\)?"
    r"['\"’”]?\**(?=[\s.,;:)!]|$)"
)
_LEADING_RE = re.compile(r"^\s*\(?([A-Z]|\d)\)?\s*(?:[.)]|\n|$)")
_BOXED_RE = re.compile(r"\\boxed\{\s*\(?([A-Za-z]|\d{1,2})\)?\s*\}")
# An instruct model that answers by quoting one option: "(C) They have each gained ..." on a line
# of its own. Read only when the response quotes exactly one option (a list of all is no answer).
_QUOTED_OPTION_RE = re.compile(r"(?m)^\s*\**\s*\(?([A-Z]|\d)[).]\s+\S")


def parse_answer(answer) -> tuple[str, list[str], list[str]]:
    """(gold label, labels, choice texts) from any of the accepted `answer` forms."""
    obj = answer
    if isinstance(answer, str) and answer.lstrip().startswith("{"):
        obj = json.loads(answer)
    if isinstance(obj, dict):
        gold = str(obj.get("label", obj.get("answerKey", ""))).strip()
        choices = obj.get("choices") or []
        labels = obj.get("labels")
        if isinstance(choices, dict):  # ARC's {"text": [...], "label": [...]}
            labels = labels or choices.get("label")
            choices = choices.get("text") or []
        labels = [str(x).strip() for x in (labels or [])]
        choices = [str(x) for x in choices]
    else:
        gold = str(obj).strip()
        labels, choices = [], []
    if not labels:
        labels = [str(i) for i in range(1, 6)] if gold.isdigit() else list("ABCDE")
    if not gold:
        raise ValueError("empty gold label")
    if gold not in labels:
        raise ValueError(f"gold label {gold!r} is not among the labels {labels}")
    return gold, labels, choices


def to_label(token: str, labels: list[str]) -> str | None:
    """A token the model wrote -> one of `labels` (same numbering or the other one), else None."""
    t = token.strip()
    if t in labels:
        return t
    if t.upper() in labels:
        return t.upper()
    numeric = all(lab.isdigit() for lab in labels)
    if t.isalpha() and len(t) == 1 and numeric:
        i = ord(t.upper()) - ord("A")
        return labels[i] if 0 <= i < len(labels) else None
    if t.isdigit() and not numeric:
        i = int(t) - 1
        return labels[i] if 0 <= i < len(labels) else None
    return None


def _norm(s: str) -> str:
    return re.sub(r"[\s.]+$", "", re.sub(r"\s+", " ", s.strip().lower()))


def extract_label(response, labels: list[str], choices: list[str] | None = None) -> tuple[str | None, str | None]:
    """(label, raw token) the response picks; (None, raw) when it names something not in `labels`."""
    text = as_text(response)
    if text is None:
        return None, None
    choices = choices or []
    raw: str | None = None
    tail = after_marker(text, ("# Answer",))
    candidates: list[str] = []
    if tail is not None:
        seg = tail.strip().split("\n", 1)[0] if tail.strip() else ""
        m = _TOKEN_RE.match(seg) or _ANSWER_IS_RE.search(seg)
        if m:
            candidates.append(m.group(1))
        elif seg:
            for lab, choice in zip(labels, choices):
                if _norm(seg) == _norm(choice):
                    return lab, seg
            raw = seg[:40]
    if not candidates:
        found = _ANSWER_IS_RE.findall(text) or _BOXED_RE.findall(text)
        if found:
            candidates.append(found[-1])
    if not candidates:
        m = _TOKEN_RE.match(text.strip())
        if m and len(text.strip()) <= 6:
            candidates.append(m.group(1))
        else:
            # A few-shot completion after "Answer:" that ran on: " C\n\nQuestion: ...".
            m = _LEADING_RE.match(text)
            quoted = set(_QUOTED_OPTION_RE.findall(text))
            if m and not _QUOTED_OPTION_RE.match(text):
                candidates.append(m.group(1))
            elif len(quoted) == 1:
                candidates.append(quoted.pop())
    if not candidates:
        stripped = text.strip()
        for lab, choice in zip(labels, choices):
            if stripped and _norm(stripped) == _norm(choice):
                return lab, stripped
        return None, raw
    token = candidates[-1]
    return to_label(token, labels), token


def answer_key(response, answer) -> str | None:
    """What `verify_multiple_choice`'s verdict depends on besides the gold answer: the label, or
    (no label) the unreadable token it reports."""
    try:
        _, labels, choices = parse_answer(answer)
    except (ValueError, TypeError):
        return None  # a bad answer spec: the same error verdict for every response
    label, raw = extract_label(response, labels, choices)
    if label is not None:
        return "label:" + label
    return None if raw is None else "raw:" + raw


def verify_multiple_choice(response, answer) -> Verdict:
    try:
        gold, labels, choices = parse_answer(answer)
    except (ValueError, TypeError) as e:
        return Verdict(False, None, ERROR, f"bad answer spec: {e}")
    label, raw = extract_label(response, labels, choices)
    if label is None:
        if raw is not None:
            return Verdict(False, raw, NO_ANSWER, f"{raw!r} is not one of the labels {labels}")
        return Verdict(False, None, NO_ANSWER, "no answer label in the response")
    return Verdict(label == gold, label, OK, "")
