"""The built-in `arith` task: seeded multi-step integer arithmetic with a worked chain of thought.

A problem is evaluated left to right, one operation per step:

    prompt:   23+45-12=?
    solution: 23+45=68; 68-12=56. #### 56

Every step `a op b = c` is checkable, which gives a process reward model its step-level truth.
Train and test splits never overlap: a problem's split is a pure function of its text (a hash),
so any two generators, whatever their seeds, agree on which split a problem belongs to.

    from bstar.datasets.arith import generate
    rows = generate(1000, seed=0, split="train")
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
TEST_FRACTION_BUCKETS = 5  # 1 bucket in 20 hash buckets goes to test (5%)


@dataclass(frozen=True)
class ArithSpec:
    """Shape of the generated problems (all bounds inclusive)."""

    min_ops: int = 1
    max_ops: int = 4
    lo: int = 0
    hi: int = 99
    ops: str = "+-"


def solve(question: str) -> tuple[list[tuple[int, str, int, int]], int]:
    """Steps `(a, op, b, c)` and the final value of `question` ("23+45-12=?" or "23+45-12")."""
    expr = question.removesuffix("=?").replace(" ", "")
    tokens: list[str] = []
    num = ""
    for ch in expr:
        if ch.isdigit():
            num += ch
        elif ch in OPS and num:
            tokens += [num, ch]
            num = ""
        else:
            raise ValueError(f"not an arith expression: {question!r}")
    if not num:
        raise ValueError(f"not an arith expression: {question!r}")
    tokens.append(num)
    value = int(tokens[0])
    steps = []
    for i in range(1, len(tokens), 2):
        op, b = tokens[i], int(tokens[i + 1])
        new = OPS[op](value, b)
        steps.append((value, op, b, new))
        value = new
    return steps, value


def format_solution(question: str) -> str:
    """The worked solution in the task's canonical format."""
    steps, value = solve(question)
    body = "; ".join(f"{a}{op}{b}={c}" for a, op, b, c in steps)
    return f"{body}. #### {value}"


def split_of(question: str) -> str:
    bucket = int(hashlib.sha1(question.encode()).hexdigest(), 16) % 100
    return "test" if bucket < TEST_FRACTION_BUCKETS else "train"


def query_id(question: str) -> str:
    return "arith-" + hashlib.sha1(question.encode()).hexdigest()[:12]


def generate(n: int, seed: int = 0, split: str = "train", spec: ArithSpec | None = None) -> list[dict]:
    """`n` distinct problems of `split` as internal rows: query_id, prompt, answer, meta."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = spec or ArithSpec()
    if not (1 <= spec.min_ops <= spec.max_ops) or spec.lo > spec.hi or not spec.ops or set(spec.ops) - set(OPS):
        raise ValueError(f"invalid arith spec: {spec}")
    rng = random.Random(f"arith:{seed}:{split}")
    seen: set[str] = set()
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"cannot find {n} distinct {split} problems with {spec}; widen the ranges")
        n_ops = rng.randint(spec.min_ops, spec.max_ops)
        parts = [str(rng.randint(spec.lo, spec.hi))]
        for _ in range(n_ops):
            parts += [rng.choice(spec.ops), str(rng.randint(spec.lo, spec.hi))]
        question = "".join(parts) + "=?"
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        steps, value = solve(question)
        rows.append(
            {
                "query_id": query_id(question),
                "prompt": question,
                "answer": str(value),
                "meta": {"solution": format_solution(question), "n_ops": len(steps)},
            }
        )
    return rows
