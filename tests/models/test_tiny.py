import pytest
import torch


def test_char_tokenizer_round_trip_and_reload(tmp_path):
    from transformers import AutoTokenizer

    from bstar.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for t in (tok, loaded):
        text = "Q: 23+45-12=? A: 23+45=68; 68-12=56. #### 56"
        ids = t(text)["input_ids"]
        assert ids[0] == t.bos_token_id
        assert len(ids) == len(text) + 1  # one token per character, plus BOS
        assert t.decode(ids, skip_special_tokens=True) == text
        assert t.decode(t(text, add_special_tokens=False)["input_ids"]) == text
        assert t.convert_ids_to_tokens(t("é", add_special_tokens=False)["input_ids"]) == ["<unk>"]
        assert t.pad_token_id == 0 and t.eos_token_id is not None and t.padding_side == "left"
    assert loaded("  a b")["input_ids"] == tok("  a b")["input_ids"]


def test_tiny_policy_saves_and_loads_like_a_hub_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bstar.models.tiny import build_tiny_policy, count_parameters

    path = build_tiny_policy(tmp_path / "tiny", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert 0.5e6 < count_parameters(model) < 1.5e6  # ~1M
    assert model.config.vocab_size == len(tok)
    x = tok(["Q: 1+2=? A: "], return_tensors="pt")["input_ids"]
    again = build_tiny_policy(tmp_path / "tiny2", seed=3)
    model2 = AutoModelForCausalLM.from_pretrained(again)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model2(x).logits)  # seeded init
    other = AutoModelForCausalLM.from_pretrained(build_tiny_policy(tmp_path / "tiny3", seed=4))
    with torch.no_grad():
        assert not torch.equal(model(x).logits, other(x).logits)


def test_tiny_policy_sizes(tmp_path):
    from transformers import AutoModelForCausalLM

    from bstar.models.tiny import build_tiny_policy

    m = AutoModelForCausalLM.from_pretrained(build_tiny_policy(tmp_path / "t", hidden=32, layers=1, heads=2))
    assert (m.config.hidden_size, m.config.num_hidden_layers, m.config.num_attention_heads) == (32, 1, 2)
    with pytest.raises(ValueError):
        build_tiny_policy(tmp_path / "bad", hidden=30, heads=4)


def test_load_policy_and_prompt_encoding(micro_policy):
    from bstar.models.loading import encode_prompts, load_policy

    model, tok = load_policy(micro_policy, device="cpu")
    assert model.dtype == torch.float32 and not model.training
    ids = encode_prompts(tok, ["ab", "<s>ab"])
    assert ids[0] == ids[1]  # BOS not doubled when a template already starts with it
