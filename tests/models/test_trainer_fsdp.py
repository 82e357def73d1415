"""FSDP2 training on CPU (gloo): the sharded trainers follow the unsharded ones, their gathered
checkpoints load with plain transformers, an online lineage killed mid-round and rerun equals the
uninterrupted one, and the PRM trains under FSDP too. Multi-process cases are `slow` (each
launch starts two Python processes that import torch and transformers)."""

import json
from pathlib import Path

import pytest
import torch

from .conftest import arith_pairs
from .test_trainer import assert_same_weights, state

# fp32 on CPU; sharded reductions sum in another order than one process does
TOL = 2e-4


def weights(path):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out |= load_file(str(f))
    return out


@pytest.fixture(scope="module")
def pairs():
    return arith_pairs(64, seed=5)[1]


@pytest.fixture(scope="module")
def llama_gqa(tmp_path_factory) -> str:
    """A randomly initialised Llama-shaped model: grouped-query attention, untied LM head, 3 layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bstar.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("gqa") / "init"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_decay_groups_come_from_names_and_every_layer_is_sharded(micro_policy):
    from bstar.models import distributed as D
    from bstar.models.loading import load_policy

    model, _ = load_policy(micro_policy, device="cpu", for_training=True)
    names = D.no_decay_names(model)
    assert names == {n for n, _ in model.named_parameters() if "norm" in n}  # Llama: norms only (no biases)
    layers = D.decoder_layers(model)
    assert [type(m).__name__ for m in layers] == ["LlamaDecoderLayer"] * 2
    procs = D.init_processes("cpu", "fsdp")
    try:
        wrapped = D.wrap(model, procs, "fsdp")
        groups = D.decay_groups(wrapped, names, 0.1)
        assert len(groups[1]["params"]) == len(names) and groups[0]["weight_decay"] == 0.1
        assert all(type(p).__name__ == "DTensor" for g in groups for p in g["params"])
        assert all(hasattr(m, "set_requires_gradient_sync") for m in layers)  # each layer its own FSDP unit
    finally:
        D.close_processes(procs)


def test_one_process_fsdp_equals_plain_training_and_saves_a_standard_checkpoint(tmp_path, llama_gqa, pairs):
    from transformers import AutoModelForCausalLM

    from bstar.models.trainer import train_sft

    kw = dict(batch_size=16, lr=2e-3, max_steps=3, progress=False, mode="online", total_rounds=2,
              gradient_checkpointing=True)
    plain = train_sft(pairs, llama_gqa, tmp_path / "plain", **kw)
    fsdp = train_sft(pairs, llama_gqa, tmp_path / "fsdp", distributed="fsdp", **kw)
    assert fsdp.losses == pytest.approx(plain.losses, abs=TOL)
    assert_same_weights(plain.path, fsdp.path, atol=TOL)
    assert not torch.distributed.is_initialized()  # the private 1-process group is gone again
    model = AutoModelForCausalLM.from_pretrained(fsdp.path)
    assert model.config.num_key_value_heads == 2 and not model.config.tie_word_embeddings
    for k, v in weights(fsdp.path).items():
        assert torch.equal(model.state_dict()[k], v), k
    # online: the optimizer shards are there for the next round, which continues under DDP as well
    assert (Path(fsdp.path) / "optimizer" / ".metadata").is_file()
    nxt = train_sft(pairs[:32], fsdp.path, tmp_path / "next", **{**kw, "distributed": "ddp"})
    ref = train_sft(pairs[:32], plain.path, tmp_path / "ref", **kw)
    assert nxt.losses == pytest.approx(ref.losses, abs=TOL) and state(nxt.path)["step"] == 6


def test_iterative_rounds_save_no_optimizer_when_asked(tmp_path, micro_policy, pairs):
    from bstar.models.trainer import train_sft

    info = train_sft(pairs, micro_policy, tmp_path / "it", max_steps=1, batch_size=16, progress=False,
                     save_optimizer=False)
    assert not (Path(info.path) / "optimizer").exists() and (Path(info.path) / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["micro_policy", "llama_gqa"])
def test_two_process_fsdp_follows_ddp_and_one_process(tmp_path, request, model, pairs):
    from bstar.models.trainer import train_sft

    init = request.getfixturevalue(model)
    kw = dict(batch_size=16, lr=2e-3, max_steps=4, progress=False)
    one = train_sft(pairs, init, tmp_path / "one", **kw)
    ddp = train_sft(pairs, init, tmp_path / "ddp", num_processes=2, **kw)
    fsdp = train_sft(pairs, init, tmp_path / "fsdp", num_processes=2, distributed="fsdp", grad_accum=2, **kw)
    assert max(one.losses) - min(one.losses) > 0.01  # training moves: the comparison means something
    assert ddp.losses == pytest.approx(one.losses, abs=TOL)
    assert fsdp.losses == pytest.approx(one.losses, abs=TOL)
    assert_same_weights(one.path, fsdp.path, atol=TOL)


@pytest.mark.slow
def test_fsdp_online_round_killed_and_rerun_equals_the_uninterrupted_round(tmp_path, micro_policy, pairs,
                                                                          monkeypatch):
    from bstar import faults
    from bstar.models.trainer import train_sft

    kw = dict(batch_size=16, lr=2e-3, max_steps=3, progress=False, mode="online", total_rounds=2,
              num_processes=2, distributed="fsdp")
    r1 = train_sft(pairs, micro_policy, tmp_path / "r1", **kw)
    straight = train_sft(pairs[:32], r1.path, tmp_path / "straight", **kw)
    monkeypatch.setenv(faults.KILL_ENV, "fine-tune@2:step:2")
    with faults.stage("fine-tune", {"iteration": 2}), pytest.raises(RuntimeError, match="training launch failed"):
        train_sft(pairs[:32], r1.path, tmp_path / "r2", **kw)
    assert not (tmp_path / "r2" / "trainer_state.json").exists()  # nothing of the killed round looks complete
    monkeypatch.delenv(faults.KILL_ENV)
    rerun = train_sft(pairs[:32], r1.path, tmp_path / "r2", **kw)
    assert rerun.losses == pytest.approx(straight.losses, abs=1e-6)
    assert_same_weights(straight.path, rerun.path, atol=1e-6)
    assert state(rerun.path)["step"] == 6


@pytest.mark.slow
def test_prm_training_under_fsdp_follows_one_process(tmp_path, micro_policy):
    from bstar.models.prm_train import train_prm

    from .test_prm_train_ddp import _labelled_arith, _tensors

    ex = _labelled_arith(24, seed=3)
    kw = dict(step_delimiter="; ", max_steps=4, batch_size=8, lr=3e-3, progress=False, seed=1)
    one = train_prm(ex, micro_policy, tmp_path / "one", **kw)
    two = train_prm(ex, micro_policy, tmp_path / "two", num_processes=2, distributed="fsdp", micro_batch_size=2,
                    gradient_checkpointing=True, **kw)
    assert two.losses == pytest.approx(one.losses, abs=TOL)
    w1, w2 = _tensors(one.path), _tensors(two.path)
    assert w1.keys() == w2.keys()
    # relative, not per element: the head starts at zero, so the backbone's first gradients are
    # ~1e-8, where AdamW's normalised update (eps 1e-8) turns summation-order rounding into
    # element-wise differences of up to lr; the tensors as a whole agree
    for k in w1:
        assert float((w1[k] - w2[k]).norm() / w1[k].norm().clamp_min(1e-12)) < 1e-3, k
    assert json.loads(Path(two.path, "prm_config.json").read_text())["extra"]["num_processes"] == 2


def test_bf16_training_saves_bf16_weights_and_says_so(tmp_path, micro_policy, pairs):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from bstar.models.trainer import train_sft

    info = train_sft(pairs[:16], micro_policy, tmp_path / "bf16", max_steps=1, batch_size=16, precision="bf16",
                     distributed="fsdp", progress=False, save_optimizer=False)
    with safe_open(str(Path(info.path) / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert AutoConfig.from_pretrained(info.path).dtype == torch.bfloat16  # what dtype="auto" loads
    assert AutoModelForCausalLM.from_pretrained(info.path, dtype="auto").dtype == torch.bfloat16
