"""The warm-up trains with its own lr, batch size and weight decay; the rounds keep theirs."""

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
