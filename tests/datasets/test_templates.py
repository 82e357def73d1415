"""Prompt templates: the paper's format, arith, chat (duck-typed tokenizer) and few-shot ARC."""

from __future__ import annotations

import pytest

from bstar.datasets import gold_response, render_prompt
from bstar.verifiers import verify

ARITH = {"query_id": "a", "prompt": "23+45-12=?", "answer": "56", "meta": {"solution": "23+45=68; 68-12=56. #### 56"}}
GSM = {"query_id": "g", "prompt": "How many?", "answer": "18", "meta": {"solution": "9 * 2 = 18"}}
ARC = {"query_id": "c", "prompt": "Which is wet?", "answer": "B", "meta": {"labels": ["A", "B"], "choices": ["sand", "water"]}}
APPS = {"query_id": "p", "prompt": "Add.", "answer": "{}", "meta": {"fn_name": "add", "starter_code": "def add(a, b):", "solution": "def add(a, b):\n    return a + b"}}


class FakeTokenizer:
    """Anything with apply_chat_template works; records what it was given."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        self.messages = messages
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"


def test_paper_format():
    assert render_prompt("paper", GSM) == "# Question\n\nHow many?\n\n# Solution\n\n"
    assert gold_response("paper", GSM) == "9 * 2 = 18\n\n# Answer\n\n18"
    shot = render_prompt("paper", GSM, shots=[ARITH])
    assert shot.startswith("# Question\n\n23+45-12=?\n\n# Solution\n\n23+45=68") and shot.endswith("# Question\n\nHow many?\n\n# Solution\n\n")
    assert "(A) sand\n(B) water" in render_prompt("paper", ARC)
    assert gold_response("paper", ARC) == "# Answer\n\nB"


def test_arith_format():
    assert render_prompt("arith", ARITH) == "Q: 23+45-12=? A: "
    assert gold_response("arith", ARITH) == "23+45=68; 68-12=56. #### 56"
    assert render_prompt("arith", ARITH, shots=[ARITH]) == "Q: 23+45-12=? A: 23+45=68; 68-12=56. #### 56\nQ: 23+45-12=? A: "
    with pytest.raises(ValueError, match="meta\\['solution'\\]"):
        gold_response("arith", {**ARITH, "meta": {}})


def test_chat_format_with_duck_typed_tokenizer():
    tok = FakeTokenizer()
    out = render_prompt("chat", GSM, tokenizer=tok, shots=[GSM], system="Be brief.")
    assert [m["role"] for m in tok.messages] == ["system", "user", "assistant", "user"]
    assert tok.messages[-1]["content"].startswith("How many?") and "# Answer" in tok.messages[-1]["content"]
    assert tok.messages[2]["content"] == gold_response("chat", GSM)
    assert out.endswith("<|assistant|>")
    render_prompt("chat", APPS, tokenizer=tok)
    assert "```python" in tok.messages[-1]["content"] and "Call-Based" in tok.messages[-1]["content"]
    with pytest.raises(ValueError, match="tokenizer"):
        render_prompt("chat", GSM)


def test_arc_few_shot_and_verifier_agree():
    prompt = render_prompt("arc", ARC, shots=[ARC, ARC])
    assert prompt.count("Answer: B\n\n") == 2 and prompt.endswith("(A) sand\n(B) water\nAnswer:")
    completion = gold_response("arc", ARC) + "\n\nQuestion: something else"
    assert verify("multiple_choice", completion, {"label": "B", "labels": ["A", "B"]}).correct


def test_code_gold_is_the_fenced_program():
    assert gold_response("paper", APPS) == "```python\ndef add(a, b):\n    return a + b\n```"
    assert "Starter code:\n```python\ndef add(a, b):\n```" in render_prompt("paper", APPS)


def test_unknown_template():
    with pytest.raises(ValueError, match="unknown template"):
        render_prompt("nope", GSM)
    with pytest.raises(ValueError, match="unknown template"):
        gold_response("nope", GSM)
