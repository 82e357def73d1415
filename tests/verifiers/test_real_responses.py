"""Verifiers on what real models write: responses of SmolLM2-135M-Instruct (chat template, our
instruction) from `bstar run deployments/configs/{gsm8k,arc}-smollm2.yaml`, each with the verdict
a careful reader gives it (`why` says how the answer is read).

    tests/verifiers/fixtures/gsm8k_smollm2.jsonl   real GSM8K test rows
    tests/verifiers/fixtures/arc_smollm2.jsonl     real ARC-Challenge test rows
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bstar.verifiers import verify

FIXTURES = Path(__file__).parent / "fixtures"


def _cases(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("case", _cases("gsm8k_smollm2.jsonl"), ids=lambda c: c["why"][:40])
def test_gsm8k_verdicts_on_real_responses(case):
    v = verify("gsm8k", case["response"], case["answer"])
    assert (v.correct, v.extracted, v.status) == (case["correct"], case["extracted"], "ok"), case["why"]


def test_gsm8k_fixture_covers_the_forms_real_models_write():
    cases = _cases("gsm8k_smollm2.jsonl")
    texts = [c["response"] for c in cases]
    assert len(cases) >= 20 and sum(c["correct"] for c in cases) >= 5
    assert any("# Answer" in t for t in texts) and any("####" in t for t in texts)
    assert sum("answer is" in t.lower() for t in texts) >= 10
    assert sum(c["finish_reason"] == "length" for c in cases) >= 4  # cut off before any answer


@pytest.mark.parametrize("case", _cases("arc_smollm2.jsonl"), ids=lambda c: c["why"][:40])
def test_multiple_choice_verdicts_on_real_responses(case):
    from bstar.datasets import answer_for_verifier

    row = {"answer": case["answer"], "meta": {"labels": case["labels"], "choices": case["choices"]}}
    v = verify("multiple_choice", case["response"], answer_for_verifier(row))
    assert (v.correct, v.extracted, v.status) == (case["correct"], case["extracted"], case["status"]), case["why"]


def test_arc_fixture_covers_the_forms_real_models_write():
    cases = _cases("arc_smollm2.jsonl")
    assert len(cases) >= 20 and sum(c["correct"] for c in cases) >= 5
    assert sum(c["status"] == "no_answer" for c in cases) >= 5
    assert any(c["labels"][0] == "1" for c in cases)  # an item labelled 1-4
