"""The warm-up trains with its own lr, batch size and weight decay; the rounds keep theirs."""

import pytest

from bstar.config import parse_config
from bstar.tasks.training import _trainer_kwargs, warmup_trainer_kwargs


def _cfg(training: dict):
    return parse_config({"training": training})


def test_warmup_weight_decay_overrides_only_the_warm_up():
    cfg = _cfg({"lr": 1e-3, "batch_size": 32, "weight_decay": 0.0,
                "warmup": {"steps": 10, "lr": 2e-3, "batch_size": 64, "weight_decay": 0.1}})
    warm, rounds = warmup_trainer_kwargs(cfg), _trainer_kwargs(cfg)
    assert (warm["lr"], warm["batch_size"], warm["weight_decay"]) == (2e-3, 64, 0.1)
    assert (rounds["lr"], rounds["batch_size"], rounds["weight_decay"]) == (1e-3, 32, 0.0)


def test_unset_warmup_weight_decay_follows_the_rounds():
    cfg = _cfg({"weight_decay": 0.05, "warmup": {"steps": 10}})
    assert cfg.training.warmup.weight_decay is None
    assert warmup_trainer_kwargs(cfg)["weight_decay"] == 0.05


def test_micro_batch_size_sets_the_accumulation_for_rounds_and_warm_up():
    cfg = _cfg({"batch_size": 64, "micro_batch_size": 4, "num_processes": 8, "distributed": "fsdp",
                "gradient_checkpointing": True, "max_length": 1024, "warmup": {"steps": 1, "batch_size": 128}})
    rounds, warm = _trainer_kwargs(cfg), warmup_trainer_kwargs(cfg)
    assert (rounds["grad_accum"], warm["grad_accum"]) == (2, 4)  # 64 / (4 x 8), 128 / (4 x 8)
    assert (rounds["distributed"], rounds["gradient_checkpointing"], rounds["max_length"]) == ("fsdp", True, 1024)
    with pytest.raises(ValueError, match=r"batch_size=48 is not a multiple of micro_batch_size x num_processes = 4 x 8"):
        _cfg({"batch_size": 48, "micro_batch_size": 4, "num_processes": 8})
    with pytest.raises(ValueError, match="cpu_offload needs distributed: fsdp"):
        _cfg({"cpu_offload": True})


def test_keep_checkpoints_drops_old_rounds_optimizer_state_only(tmp_path):
    from bstar.tasks.training import prune_optimizer_states

    cfg = parse_config({"storage": {"root": str(tmp_path / "lake"), "keep_checkpoints": 2}})
    ckpts = tmp_path / "lake" / "_checkpoints" / "r"
    for name in ("warmup", "iter-1", "iter-2", "iter-3", "iter-4"):
        (ckpts / name / "optimizer").mkdir(parents=True)
        (ckpts / name / "optimizer" / "__0_0.distcp").write_bytes(b"adam")
        (ckpts / name / "model.safetensors").write_bytes(b"w")
    prune_optimizer_states(cfg, "r", 4)
    left = sorted(p.parent.name for p in ckpts.glob("*/optimizer"))
    assert left == ["iter-3", "iter-4", "warmup"]  # the last 2 rounds; the warm-up is never pruned
    assert len(list(ckpts.glob("*/model.safetensors"))) == 5  # every round's weights stay
    prune_optimizer_states(cfg, "r", 4)  # a rerun of the stage finds nothing more to do
    assert sorted(p.parent.name for p in ckpts.glob("*/optimizer")) == left
