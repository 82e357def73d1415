"""Multi-process PRM training (bstar.models.prm_train via bstar.models.launch): 2 processes on CPU
(DDP over gloo) follow the 1-process loss trajectory and save the same, loadable PRM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bstar.models.prm import load_prm

from .test_prm import _labelled_arith


def _tensors(path):
    from safetensors.torch import load_file

    return {**load_file(str(Path(path) / "model.safetensors")),
            **{f"head.{k}": v for k, v in load_file(str(Path(path) / "prm_head.safetensors")).items()}}


def test_shards_cover_the_global_batch_once():
    from bstar.models.prm_train import shard

    batch = list(range(7))
    parts = [shard(batch, r, 2) for r in range(2)]
    assert parts == [[0, 2, 4, 6], [1, 3, 5]]
    assert sorted(sum(parts, [])) == batch
    assert shard(batch, 0, 1) == batch


def test_arguments_are_checked_before_launching(micro_policy, tmp_path):
    from bstar.models.prm_train import train_prm

    ex = _labelled_arith(3)
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        train_prm(ex, micro_policy, tmp_path / "x", num_processes=4, progress=False)
    with pytest.raises(ValueError, match="ddp"):
        train_prm(ex, micro_policy, tmp_path / "x", num_processes=2, distributed="zero3", progress=False)
    with pytest.raises(ValueError, match="one label per step"):
        train_prm([{"prompt": "q", "steps": ["a"], "labels": []}], micro_policy, tmp_path / "x", num_processes=2)
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.launch").exists()


def test_two_processes_follow_the_one_process_loss_trajectory(micro_policy, tmp_path):
    """Same seed and global batch (7 examples: uneven shards of 4 and 3, and unequal step-label
    counts, so a per-process mean, a wrong shard or unsynchronised gradients all show)."""
    import torch

    from bstar.models.prm_train import train_prm

    ex = _labelled_arith(24, seed=3)
    kw = dict(step_delimiter="; ", max_steps=4, batch_size=7, lr=3e-3, progress=False, seed=1)
    one = train_prm(ex, micro_policy, tmp_path / "one", **kw)
    two = train_prm(ex, micro_policy, tmp_path / "two", num_processes=2, **kw)
    assert (two.path, two.steps, two.num_processes, one.num_processes) == (str(tmp_path / "two"), 4, 2, 1)
    assert (two.examples, two.step_labels, two.positive_rate) == (one.examples, one.step_labels, one.positive_rate)
    assert max(one.losses) - min(one.losses) > 0.01  # training moves: the comparison below means something
    assert two.losses == pytest.approx(one.losses, abs=1e-4)
    w1, w2 = _tensors(one.path), _tensors(two.path)
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-4, rtol=0), k
    assert not torch.all(w2["head.weight"] == 0)  # the head trained
    cfg = json.loads(Path(two.path, "prm_config.json").read_text())
    assert cfg["format"] == "bstar-scalar" and cfg["extra"]["num_processes"] == 2
    assert not (tmp_path / ".two.launch").exists()
    prompts, responses = [e["prompt"] for e in ex[:4]], ["; ".join(e["steps"]) for e in ex[:4]]
    got = load_prm(two.path, device="cpu").score(prompts, responses, progress=False)
    want = load_prm(one.path, device="cpu").score(prompts, responses, progress=False)
    assert [r.prm for r in got] == pytest.approx([r.prm for r in want], abs=1e-4)
    assert all(-1 <= r.prm <= 1 and len(r.step_scores) >= 1 for r in got)


def test_a_failed_launch_raises_with_the_processes_output(micro_policy, tmp_path):
    from bstar.models.prm_train import train_prm

    # the processes' own exception comes first, then the command and the tail of their output
    with pytest.raises(RuntimeError, match=r"^training launch failed \(exit \d+\): \w+Error: .*no-such-policy"):
        train_prm(_labelled_arith(4), tmp_path / "no-such-policy", tmp_path / "prm", num_processes=2, max_steps=1,
                  batch_size=4, progress=False)


def test_worker_error_picks_the_processes_last_exception():
    from bstar.models.launch import worker_error

    err = ("[rank1]: Traceback (most recent call last):\n[rank1]:   File \"x.py\", line 1\n"
           "[rank1]: KeyError: 'a'\n[rank1]: The above exception was the direct cause of the following exception:\n"
           "[rank1]: ValueError: bad init\nE1123 torch/distributed/elastic: failed\n"
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n")
    assert worker_error(err) == "ValueError: bad init"
    assert worker_error("all fine\n") is None
