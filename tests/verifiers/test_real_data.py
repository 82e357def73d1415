"""Real GSM8K test and ARC-Challenge rows (../shared/data): every gold answer verifies as correct
and a perturbed one as incorrect."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bstar.datasets import answer_for_verifier, gold_response, load
from bstar.verifiers import verify

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real benchmark rows not found at {DATA}")


def _raw(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_gsm8k_test_split_gold_and_perturbed():
    raw = _raw(DATA / "gsm8k" / "test.jsonl")
    rows = load({"name": "gsm8k", "path": str(DATA / "gsm8k" / "test.jsonl"), "split": "test"})
    assert len(rows) == len(raw) == 1319 and rows.skipped == 0
    assert len({r["query_id"] for r in rows}) == 1319
    n_comma = n_negative = 0
    for r, item in zip(rows, raw):
        # the dataset's own worked solution (calculator notes, "#### 2,125") against the loaded answer
        assert verify("gsm8k", item["answer"], r["answer"]).correct, item["answer"][-40:]
        # the SFT target in the paper's format
        v = verify("gsm8k", gold_response("paper", r), r["answer"])
        assert v.correct and v.status == "ok"
        # a perturbed final answer
        wrong = str(int(r["answer"]) + 1) if r["answer"].lstrip("-").isdigit() else r["answer"] + "1"
        assert not verify("gsm8k", gold_response("paper", {**r, "answer": wrong}), r["answer"]).correct
        assert not verify("gsm8k", item["answer"].rsplit("####", 1)[0] + "#### " + wrong, r["answer"]).correct
        n_comma += "," in item["answer"].rsplit("####", 1)[1]
        n_negative += r["answer"].startswith("-")
    assert n_comma == 14 and n_negative == 2  # the quirks named in the data README


@pytest.mark.parametrize("split", ["train", "test"])
def test_arc_answer_keys_gold_and_perturbed(split):
    path = DATA / "arc_challenge" / f"{split}.jsonl"
    raw = _raw(path)
    rows = load({"name": "arc", "path": str(path), "split": split})
    assert len(rows) == len(raw) and rows.skipped == 0
    rng = random.Random(0)
    shapes = set()
    for r in rows:
        labels = r["meta"]["labels"]
        shapes.add((len(labels), labels[0]))
        answer = answer_for_verifier(r)
        assert verify("multiple_choice", gold_response("paper", r), answer).correct
        assert verify("multiple_choice", f"The answer is ({r['answer']}).", answer).correct
        assert verify("multiple_choice", gold_response("arc", r) + "\n\nQuestion: ...", answer).correct
        # the other numbering: position as a letter (numeric labels) or a digit (letter labels)
        pos = labels.index(r["answer"])
        other = chr(ord("A") + pos) if labels[0].isdigit() else str(pos + 1)
        assert verify("multiple_choice", f"# Answer\n\n{other}", answer).correct
        wrong = rng.choice([lab for lab in labels if lab != r["answer"]])
        v = verify("multiple_choice", f"# Answer\n\n{wrong}", answer)
        assert v.status == "ok" and not v.correct
    # the quirks named in the data README: numeric labels and 3 or 5 choices occur
    assert any(first == "1" for _, first in shapes)
    assert {3, 5} & {n for n, _ in shapes}
