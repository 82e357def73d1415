"""The GPU memory estimate (bstar.models.memory) against numbers worked out by hand.

Pure arithmetic on config.json dicts: no torch, no weights. The parameter counts are checked
against transformers itself in test_memory_transformers.py; every formula is in docs/gpu-memory.md.
"""

import json
import sys

import pytest

from bstar.models.memory import (
    GIB,
    ModelShape,
    ShapeUnavailable,
    TrainingPlan,
    job,
    job_problem,
    read_shape,
    sampling_memory,
    tiny_shape,
    training_memory,
)

QWEN25_7B = dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False,
                 max_position_embeddings=131072)
LLAMA3_8B = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
                 max_position_embeddings=8192)
MISTRAL_7B = dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, intermediate_size=14336, vocab_size=32000, tie_word_embeddings=False,
                  max_position_embeddings=32768)


def shape(cfg, name="m") -> ModelShape:
    return ModelShape.from_config(cfg, name)


def test_known_model_sizes():
    # Qwen2.5-7B, per layer: q 3584*3584 + 3584 bias, k and v 3584*512 + 512 bias each (4 kv heads of 128),
    # o 3584*3584, MLP 3*3584*18944, two norms 2*3584
    layer = (3584 * 3584 + 3584) + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    assert layer == 233_057_792 == shape(QWEN25_7B).layer_parameters()
    # + embeddings and an untied head 2*152064*3584, final norm 3584
    assert 28 * layer + 2 * 152064 * 3584 + 3584 == 7_615_616_512 == shape(QWEN25_7B).parameters()
    # Llama-3-8B: no biases; k, v 4096*1024 (8 kv heads of 128)
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert 32 * layer + 2 * 128256 * 4096 + 4096 == 8_030_261_248 == shape(LLAMA3_8B).parameters()
    assert shape(MISTRAL_7B).parameters() == 7_241_732_096
    assert shape(QWEN25_7B, "Qwen2.5-7B").label() == "Qwen2.5-7B (qwen2, 7.62B params)"


def test_defaults_bias_switches_and_tying():
    base = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, vocab_size=100)
    s = shape(base)
    assert (s.num_kv_heads, s.head_dim, s.tie_word_embeddings) == (4, 16, False)  # transformers' defaults
    plain = s.parameters()
    assert plain == 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 2 * 100 * 64 + 64
    assert shape({**base, "tie_word_embeddings": True}).parameters() == plain - 100 * 64
    # Llama's attention_bias: q, k, v and o; mlp_bias: gate, up (128 each) and down (64)
    assert shape({**base, "attention_bias": True}).parameters() == plain + 2 * 4 * 64
    assert shape({**base, "mlp_bias": True}).parameters() == plain + 2 * (2 * 128 + 64)
    # Qwen2: q/k/v biased, o not, whatever attention_bias says; Mistral: never
    kv4 = {**base, "num_key_value_heads": 4}
    assert shape({**kv4, "model_type": "qwen2"}).parameters() == plain + 2 * 3 * 64
    assert shape({**kv4, "model_type": "mistral", "attention_bias": True}).parameters() == plain
    # a field left out takes the family's transformers default: Mistral 8 kv heads, Qwen2 32; null: the heads
    assert shape({**base, "model_type": "mistral"}).num_kv_heads == 8
    assert shape({**base, "model_type": "qwen2"}).num_kv_heads == 32
    assert shape({**base, "model_type": "qwen2", "num_key_value_heads": None}).num_kv_heads == 4
    # Qwen3: an explicit head_dim (wider than hidden / heads) and q/k norms of head_dim
    q3 = shape({**base, "model_type": "qwen3", "head_dim": 32, "num_key_value_heads": 2})
    attention = 64 * 128 + 2 * 64 * 64 + 128 * 64 + 2 * 32
    assert q3.layer_parameters() == attention + 3 * 64 * 128 + 2 * 64
    other = shape({**base, "model_type": "gemma"})
    assert not other.exact and "counted as Llama-shaped" in other.label() and other.parameters() == plain


def test_tiny_model_shape_follows_build_tiny_policy():
    # the character vocabulary (4 specials + 96 characters), a tied head, the `tiny` size's MLP of 384
    s = tiny_shape(64, 2, 2)
    assert (s.vocab_size, s.intermediate_size, s.tie_word_embeddings, s.max_position_embeddings) == (100, 384, True, 256)
    assert s.parameters() == 2 * (4 * 64 * 64 + 3 * 64 * 384 + 2 * 64) + 100 * 64 + 64 == 186_944


def test_7b_ddp_replicates_16_bytes_a_parameter():
    p = 7_615_616_512
    mem = training_memory(shape(QWEN25_7B), TrainingPlan("ddp", 1, 1, 1024, "bf16"))
    # fp32 weights 4 + fp32 gradients 4 + AdamW's two fp32 moments 8 = 16 B/param = 121.85e9 B: more than 80 GB
    assert (mem.weights, mem.gradients, mem.optimizer) == (4 * p, 4 * p, 8 * p)
    assert mem.states == 16 * p == 121_849_864_192 and mem.states / GIB == pytest.approx(113.48, abs=0.01)
    assert mem.buckets == 0 and mem.gathered == 2 * p  # one process: no buckets; autocast's bf16 copies
    eight = training_memory(shape(QWEN25_7B), TrainingPlan("ddp", 8, 1, 1024, "bf16"))
    assert eight.buckets == 4 * p and eight.states == 16 * p  # DDP shards nothing, buckets come on top
    # the step: states + buckets + AdamW's fp32 temporaries (4p) = 24 B/param with 8 processes
    assert eight.step_peak() == 24 * p


def test_7b_fsdp_over_8_shards_the_states():
    p = 7_615_616_512
    s = shape(QWEN25_7B)
    mem = training_memory(s, TrainingPlan("fsdp", 8, 1, 1024, "bf16", gradient_checkpointing=True))
    # 16 B/param / 8 = 2 B/param of states: 15.23e9 B per GPU
    assert mem.states == 2 * p == 15_231_233_024
    # gathered in bf16: the root (embeddings + untied head + final norm) and two decoder layers
    assert mem.gathered == 2 * (2 * 152064 * 3584 + 3584 + 2 * 233_057_792) == 3_112_227_840
    # 1024 tokens: layer inputs 28 * 1024 * 3584 * 2 B + one layer recomputed (1024 * 232_448 B), fp32 logits
    per_layer = 8 * 3584 + 2 * (7 * 3584 + 2 * 512 + 4 * 18944)
    assert per_layer == 232_448 == s.layer_activation_bytes("bf16")
    assert mem.activations_checkpointed == 28 * 1024 * 3584 * 2 + 1024 * per_layer == 443_547_648
    assert mem.logits == 1024 * 152064 * 4
    assert mem.total == 15_231_233_024 + 3_112_227_840 + 443_547_648 + 622_854_144 == 19_409_862_656
    off = training_memory(s, TrainingPlan("fsdp", 8, 1, 1024, "bf16", True, cpu_offload=True))
    assert (off.states, off.step, off.offloaded) == (0, 0, 2 * p)  # the shards and the step live in CPU memory
    assert off.total == 3_112_227_840 + 443_547_648 + 622_854_144


def test_8b_with_and_without_checkpointing():
    s = shape(LLAMA3_8B)
    p = 8_030_261_248
    plan = TrainingPlan("fsdp", 8, 4, 2048, "bf16")
    tokens = 4 * 2048
    per_layer = 8 * 4096 + 2 * (7 * 4096 + 2 * 1024 + 4 * 14336)  # 208_896 B per token per layer
    mem = training_memory(s, plan)
    assert mem.activations == 32 * tokens * per_layer == 54_760_833_024  # 51.0 GiB: all layers' activations
    # checkpointing keeps each layer's bf16 input (32 * 8192 * 4096 * 2 B) and recomputes one layer at a time
    assert mem.activations_checkpointed == 32 * tokens * 4096 * 2 + tokens * per_layer == 3_858_759_680
    fixed = 2 * p + 2 * (2 * 128256 * 4096 + 4096 + 2 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096))
    logits = tokens * 128256 * 4
    assert mem.total_for(False) == fixed + 54_760_833_024 + logits
    assert mem.total_for(True) == fixed + 3_858_759_680 + logits
    assert mem.total_for(True) == 27_095_777_280  # 25.2 GiB: fits an 80 GB card three times over
    # fp32 (no mixed precision): activations double apart from the norms' fp32 copies, gathered params double
    fp32 = training_memory(s, TrainingPlan("fsdp", 8, 4, 2048, "fp32"))
    assert fp32.activations == 32 * tokens * (8 * 4096 + 4 * (7 * 4096 + 2 * 1024 + 4 * 14336))
    assert fp32.gathered == 2 * mem.gathered


def test_ddp_checkpointed_inputs_are_fp32_under_autocast():
    s = shape(MISTRAL_7B)
    ddp = training_memory(s, TrainingPlan("ddp", 1, 1, 100, "bf16", True))
    fsdp = training_memory(s, TrainingPlan("fsdp", 1, 1, 100, "bf16", True))
    per_layer = s.layer_activation_bytes()
    # autocast leaves the residual stream fp32 (4 B), FSDP's bf16 parameters make it bf16 (2 B)
    assert ddp.activations_checkpointed == 32 * 100 * 4096 * 4 + 100 * per_layer
    assert fsdp.activations_checkpointed == 32 * 100 * 4096 * 2 + 100 * per_layer


def test_step_peak_wins_when_activations_are_small():
    mem = training_memory(shape(MISTRAL_7B), TrainingPlan("ddp", 1, 1, 16, "bf16", True))
    p = 7_241_732_096
    # 16 tokens of activations weigh less than the 2 B/param of autocast copies the step does not hold
    assert mem.backward_peak(True) < mem.step_peak() == 20 * p == mem.total


def test_prm_trains_the_backbone_and_a_scalar_head():
    s = shape(QWEN25_7B)
    lm_head = 152064 * 3584
    plan = TrainingPlan("fsdp", 8, 2, 1024, "bf16", logits=False, extra_parameters=3584 + 1 - lm_head,
                        resident_parameters=lm_head)
    trained = 7_615_616_512 - 544_997_376 + 3585  # backbone + head, no lm_head
    prm = training_memory(s, plan)
    assert prm.logits == 0 and prm.weights == -(-4 * trained // 8) == 3_535_311_361
    # FSDP gathers the backbone's root (embeddings, final norm) + the head, and two layers
    assert prm.gathered == 2 * (152064 * 3584 + 3584 + 3585 + 2 * 233_057_792)
    # DDP keeps the causal LM's untrained lm_head on the GPU in fp32 beside the trained weights
    ddp = training_memory(s, TrainingPlan("ddp", 8, 2, 1024, "bf16", logits=False,
                                          extra_parameters=3584 + 1 - lm_head, resident_parameters=lm_head))
    assert ddp.weights == 4 * trained + 4 * lm_head and ddp.gradients == 4 * trained


def test_sampling_weights_and_kv_cache():
    s = shape(QWEN25_7B)
    # K and V: 2 * 28 layers * 4 kv heads * 128 * 2 B = 57_344 B per token
    assert s.kv_bytes_per_token("bf16") == 57_344
    mem = sampling_memory(s, backend="transformers", rows=256, seq_len=1024)
    assert mem.weights == 2 * 7_615_616_512 and mem.kv_cache == 57_344 * 256 * 1024
    assert mem.total / GIB == pytest.approx(28.2, abs=0.05)
    tp = sampling_memory(s, backend="vllm", rows=256, seq_len=1024, tensor_parallel=2)
    assert (tp.weights, tp.kv_per_token) == (7_615_616_512, 28_672)  # both split over the tensor-parallel GPUs


def test_refusal_names_the_field_and_what_fits():
    s = shape(QWEN25_7B, "Qwen2.5-7B")
    gpu = 80 * GIB
    ddp = job("training", "training", s, TrainingPlan("ddp", 8, 8, 1024, "bf16"))
    where, message = job_problem(ddp, s, gpu)
    # 8192 tokens: 16p states + 4p buckets + 2p copies + 28 * 8192 * 232_448 activations + 8192 * 152064 * 4 logits
    p = 7_615_616_512
    assert ddp.current.total == 22 * p + 28 * 8192 * 232_448 + 8192 * 152064 * 4 == 225_844_388_864  # 210.3 GiB
    assert where == "training.distributed"
    assert message.startswith("ddp needs 210.3 GiB per GPU for Qwen2.5-7B (qwen2, 7.62B params; 8 process(es), "
                              "micro-batch 8 x 1024 tokens, bf16) but each GPU has 80.0 GiB; use fsdp (71.4 GiB)")
    assert "\n" not in message
    # fsdp without checkpointing fits; with it, a quarter of the GPU
    assert job_problem(job("training", "training", s, TrainingPlan("fsdp", 8, 8, 1024, "bf16")), s, gpu) is None
    # the same job on 40 GiB cards: fsdp alone does not fit, checkpointing is the setting to change
    where, message = job_problem(job("training", "training", s, TrainingPlan("fsdp", 8, 8, 1024, "bf16")), s, 40 * GIB)
    assert where == "training.gradient_checkpointing" and "use training.gradient_checkpointing (25.0 GiB)" in message
    # a PRM on one 24 GiB card: states alone are too big for ddp and fsdp over 1; nothing of the job fits
    prm = job("PRM training", "reward.prm_train", s, TrainingPlan("ddp", 1, 1, 1024, "bf16", True, logits=False))
    where, message = job_problem(prm, s, 24 * GIB)
    assert where == "reward.prm_train.distributed" and message.endswith("use more or larger GPUs")


def test_read_shape_from_a_directory_or_the_hub_cache(tmp_path, monkeypatch):
    d = tmp_path / "Qwen2.5-7B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(QWEN25_7B))
    assert read_shape(d).label() == "Qwen2.5-7B (qwen2, 7.62B params)"
    assert read_shape(d / "config.json").parameters() == 7_615_616_512
    with pytest.raises(ShapeUnavailable, match="holds no config.json"):
        read_shape(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ShapeUnavailable) as e:
        read_shape("someorg/no-such-model-7b")
    assert "not in the hub cache" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ShapeUnavailable, match="lacks hidden_size"):
        ModelShape.from_config({"model_type": "t5", "vocab_size": 10})


def test_module_needs_no_torch():
    assert "bstar.models.memory" in sys.modules
    code = "import sys, bstar.models.memory as m; m.tiny_shape(64, 2, 2); assert 'torch' not in sys.modules"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)
