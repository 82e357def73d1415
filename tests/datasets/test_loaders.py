"""Dataset loaders on fixtures written here in the hub schemas (MATH, MATH-500, APPS, ARC,
GSM8K), the error policy for malformed rows, duplicate ids, user loaders from config, and the
arith task's split guarantee."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bstar.datasets import DATASET_VERIFIERS, RowError, answer_for_verifier, gold_response, load, register_dataset
from bstar.datasets.arith import ArithSpec, generate, split_of
from bstar.verifiers import verify

MATH_ROWS = [
    {
        "problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
        "level": "Level 1",
        "type": "Prealgebra",
        "solution": "We have $\\frac{1}{2} + \\frac{1}{4} = \\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$.",
    },
    {
        "problem": "Solve $x^2 = 4$ for $x>0$.",
        "level": "Level 2",
        "type": "Algebra",
        "solution": "Both $\\pm 2$ square to 4; the positive one is $\\boxed{2}$.",
    },
]
MATH500_ROWS = [
    {
        "problem": "Find the set of solutions of $x^2=1$.",
        "solution": "$x=\\pm1$, so the set is $\\boxed{\\{-1,1\\}}$.",
        "answer": "\\{-1,1\\}",
        "subject": "Algebra",
        "level": 2,
        "unique_id": "test/algebra/1.json",
    }
]
APPS_ROWS = [
    {
        "problem_id": 7,
        "question": "Read two integers and print their sum.",
        "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)\n"]),
        "input_output": json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}),
        "starter_code": "",
        "difficulty": "introductory",
        "url": "https://example.invalid/7",
    },
    {
        "problem_id": 8,
        "question": "Return the larger of two numbers.",
        "solutions": json.dumps(["def bigger(a, b):\n    return max(a, b)\n"]),
        "input_output": json.dumps({"fn_name": "bigger", "inputs": [[1, 2], [5, 3]], "outputs": [[2], [5]]}),
        "starter_code": "def bigger(a, b):\n    ",
        "difficulty": "introductory",
        "url": "https://example.invalid/8",
    },
]
ARC_ROW = {
    "id": "Mercury_1",
    "question": "Which is a liquid at room temperature?",
    "choices": {"text": ["iron", "water", "salt"], "label": ["1", "2", "3"]},
    "answerKey": "2",
}
GSM8K_ROW = {"question": "Tom has 1,200 apples and eats 2. How many are left?", "answer": "1200-2=<<1200-2=1198>>1198\n#### 1,198"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_math_fixture_jsonl_and_parquet(tmp_path):
    for path in (write_jsonl(tmp_path / "math.jsonl", MATH_ROWS), write_parquet(tmp_path / "math.parquet", MATH_ROWS)):
        rows = load({"name": "math", "path": str(path)})
        assert rows.verifier == "math" and [r["answer"] for r in rows] == ["\\frac{3}{4}", "2"]
        r = rows[0]
        assert r["query_id"].startswith("math-") and r["prompt"] == MATH_ROWS[0]["problem"]
        assert r["meta"] == {"solution": MATH_ROWS[0]["solution"], "level": "Level 1", "type": "Prealgebra"}
    gold = gold_response("paper", rows[0])
    assert gold.endswith("# Answer\n\n\\frac{3}{4}")
    assert verify("math", gold, rows[0]["answer"]).correct


def test_math500_fixture(tmp_path):
    rows = load({"name": "math500", "path": str(write_jsonl(tmp_path / "m500.jsonl", MATH500_ROWS))})
    (r,) = rows
    assert r["query_id"] == "test/algebra/1.json" and r["answer"] == "\\{-1,1\\}"
    assert r["meta"]["type"] == "Algebra" and r["meta"]["level"] == 2
    assert verify("math", "so $\\boxed{\\{1,-1\\}}$", r["answer"]).correct
    bad = {k: v for k, v in MATH500_ROWS[0].items() if k != "answer"}
    with pytest.raises(RowError, match=r"m500b.jsonl:1: field 'answer': missing"):
        load({"name": "math500", "path": str(write_jsonl(tmp_path / "m500b.jsonl", [bad]))})


def test_apps_fixture(tmp_path):
    rows = load({"name": "apps", "path": str(write_jsonl(tmp_path / "apps.jsonl", APPS_ROWS))})
    assert rows.verifier == "code" == DATASET_VERIFIERS["apps"]
    stdio, call = rows
    assert stdio["query_id"] == "apps-7" and json.loads(stdio["answer"])["outputs"] == ["3\n", "7\n"]
    assert stdio["meta"]["fn_name"] is None and call["meta"]["fn_name"] == "bigger"
    assert call["meta"]["starter_code"].startswith("def bigger")
    assert call["meta"]["solution"].startswith("def bigger") and call["meta"]["difficulty"] == "introductory"
    assert gold_response("paper", stdio).startswith("```python\na, b = map(int")


def test_arc_and_gsm8k_fixtures(tmp_path):
    (arc,) = load({"name": "arc", "path": str(write_jsonl(tmp_path / "arc.jsonl", [ARC_ROW]))})
    assert arc == {
        "query_id": "Mercury_1",
        "prompt": ARC_ROW["question"],
        "answer": "2",
        "meta": {"labels": ["1", "2", "3"], "choices": ["iron", "water", "salt"]},
    }
    assert json.loads(answer_for_verifier(arc)) == {"label": "2", "labels": ["1", "2", "3"], "choices": ["iron", "water", "salt"]}
    assert answer_for_verifier({**arc, "meta": json.dumps(arc["meta"])}) == answer_for_verifier(arc)  # meta as stored
    (g,) = load({"name": "gsm8k", "path": str(write_jsonl(tmp_path / "g.jsonl", [GSM8K_ROW]))})
    assert g["answer"] == "1198" and g["meta"]["solution"] == "1200-2=1198"
    assert answer_for_verifier(g) == "1198"


@pytest.mark.parametrize(
    "line,match",
    [
        (b'{"question": "q"}', r"bad.jsonl:2: field 'answer': missing"),
        (b'{"question": "q", "answer": "no final"}', r"bad.jsonl:2: field 'answer': no '#### N'"),
        (b'{"question": "", "answer": "#### 3"}', r"bad.jsonl:2: field 'question': empty"),
        (b'{"question": "q", "answer": "#### three"}', r"bad.jsonl:2: field 'answer': final answer 'three'"),
        (b'{"question": "q\xff", "answer": "#### 3"}', r"bad.jsonl:2: not UTF-8"),
        (b'{"question": "q", "answer": ', r"bad.jsonl:2: not valid JSON"),
        (b'["q", "#### 3"]', r"bad.jsonl:2: expected a JSON object"),
        (b'{"question": 5, "answer": "#### 3"}', r"bad.jsonl:2: field 'question': expected a string"),
    ],
)
def test_malformed_row_raise_or_skip(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GSM8K_ROW).encode() + b"\n" + line + b"\n" + json.dumps({**GSM8K_ROW, "question": "other"}).encode() + b"\n")
    with pytest.raises(RowError, match=match):
        load({"name": "gsm8k", "path": str(path)})
    rows = load({"name": "gsm8k", "path": str(path), "on_error": "skip"})
    assert len(rows) == 2 and rows.skipped == 1 and "bad.jsonl:2" in rows.errors[0]
    assert rows.report()["skipped"] == 1


@pytest.mark.parametrize(
    "name,row,match",
    [
        ("apps", {**APPS_ROWS[0], "input_output": "{not json"}, "field 'input_output': unusable tests JSON"),
        ("apps", {**APPS_ROWS[0], "input_output": ""}, "field 'input_output': missing or empty"),
        ("apps", {**APPS_ROWS[0], "input_output": json.dumps({"inputs": ["1"], "outputs": []})}, "1 inputs but 0 outputs"),
        ("arc", {**ARC_ROW, "answerKey": "D"}, "field 'answerKey': 'D' is not among the labels"),
        ("arc", {**ARC_ROW, "choices": {"text": ["a"], "label": ["A", "B"]}}, "field 'choices': 1 texts but 2 labels"),
        ("math", {**MATH_ROWS[0], "solution": "no box here"}, "field 'solution': no \\\\boxed"),
    ],
)
def test_malformed_hub_schema_rows(tmp_path, name, row, match):
    path = write_jsonl(tmp_path / f"{name}.jsonl", [row])
    with pytest.raises(RowError, match=match):
        load({"name": name, "path": str(path)})
    assert load({"name": name, "path": str(path), "on_error": "skip"}).skipped == 1


def test_duplicate_ids_policy(tmp_path):
    same = write_jsonl(tmp_path / "dup.jsonl", [ARC_ROW, ARC_ROW, {**ARC_ROW, "id": "Mercury_2"}])
    rows = load({"name": "arc", "path": str(same)})
    assert [r["query_id"] for r in rows] == ["Mercury_1", "Mercury_2"] and rows.duplicates == 1
    clash = write_jsonl(tmp_path / "clash.jsonl", [ARC_ROW, {**ARC_ROW, "answerKey": "3"}])
    with pytest.raises(RowError, match=r"clash.jsonl:2: field 'query_id': duplicate id 'Mercury_1' with different content \(first at .*clash.jsonl:1\)"):
        load({"name": "arc", "path": str(clash)})
    rows = load({"name": "arc", "path": str(clash), "on_error": "skip"})
    assert len(rows) == 1 and rows[0]["answer"] == "2" and rows.skipped == 1


def test_limit_split_and_spec_forms(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", MATH_ROWS)
    assert len(load({"name": "math", "path": str(path), "limit": 1})) == 1

    class Cfg:  # a pydantic-like config object
        def model_dump(self):
            return {"name": "math", "path": str(path), "split": "test", "limit": None, "template": "paper", "verifier": None}

    assert len(load(Cfg())) == 2
    with pytest.raises(ValueError, match="unknown dataset"):
        load("nope")
    with pytest.raises(FileNotFoundError):
        load({"name": "math", "path": str(tmp_path / "missing.jsonl")})
    with pytest.raises(ValueError, match="on_error"):
        load({"name": "math", "path": str(path), "on_error": "ignore"})


def test_offset_and_limit_cut_one_file_into_disjoint_parts(shared_data):
    path = str(shared_data / "gsm8k" / "test.jsonl")
    everything = load({"name": "gsm8k", "path": path})
    train = load({"name": "gsm8k", "path": path, "limit": 1000})
    test = load({"name": "gsm8k", "path": path, "offset": 1295, "limit": 100})
    assert len(everything) == 1319 and len(train) == 1000 and len(test) == 24  # the file ends first
    assert [r["query_id"] for r in test] == [r["query_id"] for r in everything][1295:]
    assert not {r["query_id"] for r in train} & {r["query_id"] for r in test}
    with pytest.raises(ValueError, match="offset must be a non-negative integer"):
        load({"name": "gsm8k", "path": path, "offset": -2})


def test_hub_without_datasets_package_says_how_to_fix():
    pytest.importorskip("math_verify")
    try:
        import datasets  # noqa: F401

        pytest.skip("`datasets` is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"bstar\[hub\]"):
        load({"name": "gsm8k", "split": "test"})


def test_user_loader_and_verifier_from_config(tmp_path, monkeypatch):
    (tmp_path / "my_task_mod.py").write_text(
        "def rows(size, split='train'):\n"
        "    return [{'prompt': f'{split} {i}?', 'answer': str(i), 'meta': {'i': i}} for i in range(size)]\n"
        "def rows_bad():\n"
        "    return [{'prompt': 'p', 'answer': ''}, {'prompt': 'q', 'answer': '1'}]\n"
        "def grade(response, answer):\n"
        "    return response.strip() == answer\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = load({"name": "toy", "loader": "my_task_mod:rows", "verifier": "my_task_mod:grade", "split": "test", "options": {"size": 3}})
    assert [r["prompt"] for r in rows] == ["test 0?", "test 1?", "test 2?"]
    assert rows[0]["query_id"].startswith("q-") and rows.verifier == "toy"
    assert verify("toy", " 1 ", "1").correct and not verify("toy", "2", "1").correct
    with pytest.raises(RowError, match=r"my_task_mod:rows_bad row 0: field 'answer': missing or empty"):
        load({"name": "toy2", "loader": "my_task_mod:rows_bad"})
    assert load({"name": "toy2", "loader": "my_task_mod:rows_bad", "on_error": "skip"}).skipped == 1
    with pytest.raises(ValueError, match="cannot import module"):
        load({"name": "toy3", "loader": "no_such_mod_xyz:rows"})
    register_dataset("toy4", "my_task_mod:rows", verifier="gsm8k")
    rows = load({"name": "toy4", "options": {"size": 2}})
    assert len(rows) == 2 and rows.verifier == "gsm8k"
    with pytest.raises(KeyError, match="unknown verifier"):
        load({"name": "toy5", "loader": "my_task_mod:rows", "verifier": "no-such-verifier", "options": {"size": 1}})


# --- arith ----------------------------------------------------------------------------------


def test_arith_splits_never_overlap():
    spec = ArithSpec(min_ops=1, max_ops=2, lo=0, hi=20)
    train = {r["prompt"] for seed in range(3) for r in generate(2000, seed=seed, split="train", spec=spec)}
    test = {r["prompt"] for seed in range(3) for r in generate(150, seed=seed, split="test", spec=spec)}
    assert train and test and not train & test
    assert all(split_of(q) == "train" for q in train) and all(split_of(q) == "test" for q in test)


def test_arith_through_load():
    rows = load({"name": "arith", "split": "test", "n": 50, "seed": 1, "max_ops": 2, "ops": "+-*"})
    assert len(rows) == 50 and rows.verifier == "arith"
    assert rows == generate(50, seed=1, split="test", spec=ArithSpec(max_ops=2, ops="+-*"))
    assert len(load({"name": "arith", "limit": 7})) == 7
    with pytest.raises(ValueError, match="unknown options"):
        load({"name": "arith", "options": {"max_opz": 3}})
    for r in rows:
        assert verify("arith", gold_response("arith", r), r["answer"], question=r["prompt"]).correct
