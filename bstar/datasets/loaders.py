"""Hub-schema record -> internal row, one mapper per dataset (schemas: shared/data/README.md).

| dataset | query_id | prompt | answer | meta |
|---|---|---|---|---|
| gsm8k | `gsm8k-<sha1(question)>` | question | number after `####`, commas removed | solution (worked text, `<<..>>` notes and `####` line removed) |
| math | `unique_id`/`id`, else `math-<sha1(problem)>` | problem | `answer` field, else last `\\boxed{}` of solution | solution, level, type |
| math500 | `unique_id` | problem | `answer` | solution, level, type (= subject) |
| apps | `apps-<problem_id>` | question | input_output JSON string | fn_name, starter_code, difficulty, solution (first of solutions), url |
| arc | `id` | question | answerKey | labels, choices (texts) |
"""

from __future__ import annotations

import json
import re

from bstar.datasets.rows import RowError, hash_id, require_str

_CALC_RE = re.compile(r"<<[^<>]*>>")
_NUMBER_RE = re.compile(r"^-?\d+(?:\.\d+)?(?:/\d+)?$")


def gsm8k(raw: dict, where: str) -> dict:
    question = require_str(raw, "question", where)
    solution = require_str(raw, "answer", where)
    if "####" not in solution:
        raise RowError(where, "answer", "no '#### N' final answer")
    body, final = solution.rsplit("####", 1)
    answer = final.strip().replace(",", "").replace("$", "")
    if not _NUMBER_RE.match(answer):
        raise RowError(where, "answer", f"final answer {final.strip()!r} is not a number")
    qid = raw.get("id") or hash_id("gsm8k", question)
    return {
        "query_id": str(qid),
        "prompt": question,
        "answer": answer,
        "meta": {"solution": _CALC_RE.sub("", body).strip()},
    }


def math(raw: dict, where: str) -> dict:
    from bstar.verifiers.math_answer import last_boxed  # pure text helper; no sympy import

    problem = require_str(raw, "problem", where)
    solution = require_str(raw, "solution", where)
    answer = raw.get("answer")
    if answer is None:
        answer = last_boxed(solution)
        if answer is None:
            raise RowError(where, "solution", "no \\boxed{...} answer in the solution")
    if not isinstance(answer, str) or not answer.strip():
        raise RowError(where, "answer", "missing or empty")
    qid = raw.get("unique_id") or raw.get("id") or hash_id("math", problem)
    meta = {"solution": solution, "level": raw.get("level"), "type": raw.get("type", raw.get("subject"))}
    return {"query_id": str(qid), "prompt": problem, "answer": answer.strip(), "meta": meta}


def math500(raw: dict, where: str) -> dict:
    require_str(raw, "answer", where)
    require_str(raw, "unique_id", where)
    return math(raw, where)


def apps(raw: dict, where: str) -> dict:
    from bstar.verifiers.code import parse_tests

    if raw.get("problem_id") is None:
        raise RowError(where, "problem_id", "missing")
    question = require_str(raw, "question", where)
    io = raw.get("input_output")
    if io is None or (isinstance(io, str) and not io.strip()):
        raise RowError(where, "input_output", "missing or empty (no tests)")
    try:
        _, fn_name = parse_tests(io)
    except (ValueError, TypeError) as e:
        raise RowError(where, "input_output", f"unusable tests JSON: {e}") from None
    io_text = io if isinstance(io, str) else json.dumps(io)
    solutions = raw.get("solutions") or "[]"
    try:
        sols = json.loads(solutions) if isinstance(solutions, str) else list(solutions)
    except (ValueError, TypeError) as e:
        raise RowError(where, "solutions", f"not a JSON list: {e}") from None
    starter = raw.get("starter_code") or ""
    if not isinstance(starter, str):
        raise RowError(where, "starter_code", "expected a string")
    meta = {
        "fn_name": fn_name,
        "starter_code": starter,
        "difficulty": raw.get("difficulty"),
        "solution": sols[0] if sols and isinstance(sols[0], str) else "",
        "url": raw.get("url"),
    }
    return {"query_id": f"apps-{raw['problem_id']}", "prompt": question, "answer": io_text, "meta": meta}


def arc(raw: dict, where: str) -> dict:
    qid = require_str(raw, "id", where)
    question = require_str(raw, "question", where)
    choices = raw.get("choices")
    if not isinstance(choices, dict):
        raise RowError(where, "choices", "missing or not {text: [...], label: [...]}")
    texts, labels = choices.get("text"), choices.get("label")
    if not isinstance(texts, list) or not isinstance(labels, list) or not labels:
        raise RowError(where, "choices", "needs non-empty lists 'text' and 'label'")
    if len(texts) != len(labels):
        raise RowError(where, "choices", f"{len(texts)} texts but {len(labels)} labels")
    labels = [str(x).strip() for x in labels]
    if len(set(labels)) != len(labels):
        raise RowError(where, "choices", f"repeated labels {labels}")
    key = require_str(raw, "answerKey", where).strip()
    if key not in labels:
        raise RowError(where, "answerKey", f"{key!r} is not among the labels {labels}")
    return {
        "query_id": qid,
        "prompt": question,
        "answer": key,
        "meta": {"labels": labels, "choices": [str(t) for t in texts]},
    }


# name -> (mapper, default hub id, default hub config, configs to concatenate when none given,
#          default split, verifier)
BUILTIN = {
    "gsm8k": (gsm8k, "openai/gsm8k", "main", (), "train", "gsm8k"),
    "math": (
        math,
        "EleutherAI/hendrycks_math",
        None,
        ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra", "precalculus"),
        "train",
        "math",
    ),
    "math500": (math500, "HuggingFaceH4/MATH-500", None, (), "test", "math"),
    "apps": (apps, "codeparrot/apps", "all", (), "train", "code"),
    "arc": (arc, "allenai/ai2_arc", "ARC-Challenge", (), "train", "multiple_choice"),
}
