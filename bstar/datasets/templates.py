"""Prompt templates: what the policy sees (`render_prompt`) and the gold response it is trained
to produce in SFT (`gold_response`).

    render_prompt("paper", row)                      '# Question\\n\\n{q}\\n\\n# Solution\\n\\n'
    render_prompt("arith", row)                      'Q: 23+45-12=? A: '
    render_prompt("chat", row, tokenizer=tok)        tok.apply_chat_template(messages, add_generation_prompt=True)
    render_prompt("arc", row, shots=train_rows[:5])  few-shot 'Question: ...\\n(A) ...\\nAnswer: C' blocks
    gold_response("paper", row)                      '{solution}\\n\\n# Answer\\n\\n{answer}'

Templates:
- `paper` (B-STaR's format): the answer comes after `# Answer`; shots are earlier
  question/solution pairs in the same format.
- `arith`: the built-in task's compact format; gold = `meta["solution"]` (`23+45=68; 68-12=56. #### 56`).
- `chat`: for instruct models; the question (plus an instruction to end with `# Answer` and the
  final answer, or the option's label for multiple choice) as a user message, shots as earlier
  user/assistant turns, rendered by the tokenizer's own `apply_chat_template` (duck-typed:
  anything with that method works; transformers is not imported). Stages render through
  `bstar.tasks.prompts.render_prompts`, which passes the policy's own tokenizer.
- `arc`: few-shot multiple choice; the model answers with a label after `Answer:`.

The question text includes a multiple-choice item's options (`(A) ...` lines) and an APPS item's
starter code and calling convention, whatever the template.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

PAPER = "# Question\n\n{question}\n\n# Solution\n\n"
ARITH = "Q: {question} A: "
# Each instruction asks for an answer form its verifier reads: gsm8k also reads `\boxed{}` and
# "The answer is N", math also `\boxed{}`, multiple choice a label after `# Answer`.
CHAT_INSTRUCTION = "Solve the problem step by step. End with a line '# Answer' followed by the final answer."
CHOICE_INSTRUCTION = ("Think it through step by step, then end with a line '# Answer' followed by the label "
                      "of the correct option only.")
CODE_INSTRUCTION = "Write a Python 3 program that solves the problem. Put the program in a single ```python code block."
TEMPLATES = ("paper", "arith", "chat", "arc")


def question_text(row: dict) -> str:
    """The question as shown to the model: options for multiple choice, conventions for code."""
    q = row["prompt"].strip()
    meta = row.get("meta") or {}
    if meta.get("labels") and meta.get("choices"):
        options = "\n".join(f"({lab}) {text}" for lab, text in zip(meta["labels"], meta["choices"]))
        return f"{q}\n\n{options}"
    if "starter_code" in meta or "fn_name" in meta:  # an APPS item
        parts = [q]
        if meta.get("starter_code"):
            parts.append("Starter code:\n```python\n" + meta["starter_code"].rstrip() + "\n```")
        if meta.get("fn_name"):
            parts.append(f"Use Call-Based format: define `{meta['fn_name']}`; it is called with the test arguments.")
        else:
            parts.append("Use Standard Input format: read from stdin and print to stdout.")
        return "\n\n".join(parts)
    return q


def _final_answer(row: dict) -> str:
    meta = row.get("meta") or {}
    if "fn_name" in meta or "starter_code" in meta:
        return ""
    return row["answer"]


def _solution_body(row: dict) -> str:
    meta = row.get("meta") or {}
    if "fn_name" in meta or "starter_code" in meta:  # APPS: the program is the answer
        sol = meta.get("solution") or ""
        return f"```python\n{sol.rstrip()}\n```" if sol else ""
    return (meta.get("solution") or "").strip()


def gold_response(template: str, row: dict) -> str:
    """The response the policy learns in SFT for `row` under `template`."""
    meta = row.get("meta") or {}
    if template == "arith":
        sol = meta.get("solution")
        if not sol:
            raise ValueError(f"row {row.get('query_id')!r} has no meta['solution'] for the arith template")
        return sol
    if template == "arc":
        return f" {row['answer']}"
    if template in ("paper", "chat"):
        body = _solution_body(row)
        answer = _final_answer(row)
        if not answer:  # code: the fenced program is the whole response
            if not body:
                raise ValueError(f"row {row.get('query_id')!r} has no gold solution")
            return body
        return f"{body}\n\n# Answer\n\n{answer}" if body else f"# Answer\n\n{answer}"
    raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")


def _instruction(row: dict) -> str:
    meta = row.get("meta") or {}
    if "fn_name" in meta or "starter_code" in meta:
        return CODE_INSTRUCTION
    if meta.get("labels") and meta.get("choices"):
        return CHOICE_INSTRUCTION
    return CHAT_INSTRUCTION


def render_prompt(
    template: str,
    row: dict,
    tokenizer: Any = None,
    shots: Sequence[dict] | None = None,
    *,
    system: str | None = None,
    instruction: str | None = None,
) -> str:
    """The model input for `row`; `shots` are solved example rows shown before it."""
    shots = list(shots or [])
    if template == "paper":
        prefix = "".join(PAPER.format(question=question_text(s)) + gold_response("paper", s) + "\n\n\n" for s in shots)
        return prefix + PAPER.format(question=question_text(row))
    if template == "arith":
        prefix = "".join(ARITH.format(question=s["prompt"]) + gold_response("arith", s) + "\n" for s in shots)
        return prefix + ARITH.format(question=row["prompt"])
    if template == "arc":
        def block(r: dict) -> str:
            return f"Question: {question_text(r)}\nAnswer:"

        prefix = "".join(block(s) + gold_response("arc", s) + "\n\n" for s in shots)
        return prefix + block(row)
    if template == "chat":
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError("the chat template needs a tokenizer with apply_chat_template")
        instr = _instruction(row) if instruction is None else instruction
        messages: list[dict] = [{"role": "system", "content": system}] if system else []
        for s in shots:
            messages.append({"role": "user", "content": _user_message(s, instr)})
            messages.append({"role": "assistant", "content": gold_response("chat", s)})
        messages.append({"role": "user", "content": _user_message(row, instr)})
        out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(out, str):
            raise ValueError("apply_chat_template(tokenize=False) must return a string")
        return out
    raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")


def _user_message(row: dict, instruction: str) -> str:
    q = question_text(row)
    return f"{q}\n\n{instruction}" if instruction else q


def answer_for_verifier(row: dict, verifier: str | None = None) -> str:
    """What to pass as `answer` to `bstar.verifiers.verify` for this row.

    Multiple-choice rows carry their label list and options (as a JSON string, so it fits the
    `answer` string column); `arith-steps` gets the question beside the answer to check every
    step against it; every other row's gold answer is already complete.
    """
    meta = row.get("meta") or {}
    if isinstance(meta, str):  # meta as stored in Parquet
        meta = json.loads(meta) if meta else {}
    if verifier == "arith-steps":
        return json.dumps({"answer": row["answer"], "question": row["prompt"]})
    if meta.get("labels"):
        return json.dumps({"label": row["answer"], "labels": meta["labels"], "choices": meta.get("choices", [])})
    return row["answer"]
