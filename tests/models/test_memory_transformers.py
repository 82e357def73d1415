"""bstar.models.memory's parameter count equals transformers' own, for every family it counts
exactly: each config is built on the meta device (shapes only, no memory, no init), so even the
7B and 8B models take milliseconds; the tiny policy is built for real by `build_tiny_policy`."""

import pytest

from bstar.models.memory import ModelShape, tiny_shape

SMALL = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=160, vocab_size=321)

CASES = {
    "llama": dict(model_type="llama", **SMALL),
    "llama-gqa-tied": dict(model_type="llama", **SMALL, num_key_value_heads=2, tie_word_embeddings=True),
    "llama-biases": dict(model_type="llama", **SMALL, attention_bias=True, mlp_bias=True),
    "llama-head-dim": dict(model_type="llama", **SMALL, head_dim=24, num_key_value_heads=1),
    "mistral": dict(model_type="mistral", **SMALL, num_key_value_heads=2),
    "qwen2": dict(model_type="qwen2", **SMALL, num_key_value_heads=2),
    "qwen2-tied": dict(model_type="qwen2", **SMALL, num_key_value_heads=1, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", **SMALL, num_key_value_heads=2, head_dim=32),
    "qwen3-bias": dict(model_type="qwen3", **SMALL, head_dim=16, attention_bias=True),
    # fields a config.json leaves out take each family's own default (qwen2/qwen3: 32 kv heads,
    # qwen3: head_dim 128, mistral: 8 kv heads)
    "qwen2-absent-kv": dict(model_type="qwen2", **{**SMALL, "num_attention_heads": 32, "hidden_size": 128}),
    "qwen3-absent": dict(model_type="qwen3", **{**SMALL, "num_attention_heads": 32, "hidden_size": 128}),
    "mistral-absent-kv": dict(model_type="mistral", **{**SMALL, "num_attention_heads": 16}),
    # the real sizes the docs work through
    "Qwen2.5-7B": dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False),
    "Llama-3-8B": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, vocab_size=128256),
    "Mistral-7B": dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, vocab_size=32000),
}
KNOWN = {"Qwen2.5-7B": 7_615_616_512, "Llama-3-8B": 8_030_261_248, "Mistral-7B": 7_241_732_096}


def _transformers_count(cfg: dict) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in cfg.items() if k != "model_type"}
    config = AutoConfig.for_model(cfg["model_type"], **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_count_matches_transformers(name):
    shape = ModelShape.from_config(CASES[name], name)
    assert shape.exact
    assert shape.parameters() == _transformers_count(CASES[name])
    if name in KNOWN:
        assert shape.parameters() == KNOWN[name]


def test_tiny_shape_matches_the_built_policy(tmp_path):
    from transformers import AutoModelForCausalLM

    from bstar.models.tiny import build_tiny_policy, count_parameters

    path = build_tiny_policy(tmp_path / "tiny", hidden=64, layers=2, heads=2)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert count_parameters(model) == tiny_shape(64, 2, 2).parameters() == 186_944
