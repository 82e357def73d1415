"""The vLLM backend against a stand-in `vllm` module (the real one needs a GPU)."""

import sys
import types
from types import SimpleNamespace

import pytest


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            calls["engine"] = kw

        def generate(self, prompts, params, use_tqdm=True):
            calls["params"], calls["prompts"] = params, prompts
            outs = []
            for p, sp in zip(prompts, params):
                ids = ",".join(map(str, p["prompt_token_ids"]))
                cands = [SimpleNamespace(index=j, text=f"{ids}|{sp.seed}|{j}", token_ids=[1] * (j + 1),
                                         finish_reason="length" if j == 0 else "stop") for j in range(sp.n)]
                outs.append(SimpleNamespace(outputs=cands[::-1]))  # out of order on purpose
            return outs

        def get_tokenizer(self):
            from bstar.models.tiny import build_char_tokenizer

            return build_char_tokenizer()

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return calls


def test_vllm_sampler_maps_requests_and_outputs(fake_vllm):
    from bstar.models.sampling import get_sampler

    with get_sampler("vllm", "/models/x", tensor_parallel_size=2, gpu_memory_utilization=0.5) as s:
        assert fake_vllm["engine"]["tensor_parallel_size"] == 2 and fake_vllm["engine"]["model"] == "/models/x"
        out = s.sample(["a", "b"], k=3, temperature=0.8, top_p=0.9, max_new_tokens=16, seeds=[1, 2], base_seed=5,
                       stop=["\n"])
        again = s.sample(["a", "b"], k=3, temperature=0.8, top_p=0.9, max_new_tokens=16, seeds=[1, 2], base_seed=5)
        g = s.greedy(["a"], max_new_tokens=4)
    # token ids, encoded as the transformers sampler and the trainer encode them (BOS added once)
    from bstar.models.loading import encode_prompts

    assert fake_vllm["prompts"] == [{"prompt_token_ids": encode_prompts(s.tokenizer, ["a"])[0]}]
    assert encode_prompts(s.tokenizer, ["<s>a"]) == encode_prompts(s.tokenizer, ["a"])
    p = fake_vllm["params"][0]
    assert (p.n, p.temperature, p.top_p, p.max_tokens) == (1, 0.0, 1.0, 4)
    assert [[c.sample_idx for c in cs] for cs in out] == [[0, 1, 2], [0, 1, 2]]
    assert [c.finish_reason for c in out[0]] == ["length", "stop", "stop"]
    assert [c.n_tokens for c in out[0]] == [1, 2, 3]
    assert [c.text for c in out[0]] == [c.text for c in again[0]]  # same seeds, same requests
    assert out[0][0].text != out[1][0].text  # per-prompt seeds differ
    assert g[0].sample_idx == 0
