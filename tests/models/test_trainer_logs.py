"""The SFT and PRM trainers log their loss about ten times a call and once more at the end."""

from __future__ import annotations

import logging
import re

from .conftest import arith_pairs


def test_sft_logs_the_loss_every_tenth_of_the_steps_and_the_final_loss(tmp_path, micro_policy, caplog):
    from bstar.models.trainer import loss_log_every, train_sft

    assert [loss_log_every(n) for n in (1, 9, 10, 25, 200)] == [1, 1, 1, 2, 20]
    _, pairs = arith_pairs(40, seed=5)
    with caplog.at_level(logging.INFO, logger="bstar.models.trainer"):
        info = train_sft(pairs, micro_policy, tmp_path / "out", max_steps=25, batch_size=8, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "bstar.models.trainer"]
    steps = [ln for ln in lines if re.match(r"sft\[iterative\] step \d+/25 ", ln)]
    # every 2 steps (25 // 10), and the last step
    assert [int(re.search(r"step (\d+)/", ln).group(1)) for ln in steps] == [*range(2, 25, 2), 25]
    first = steps[0]
    assert f"loss {info.losses[1]:.4f}, mean {(info.losses[0] + info.losses[1]) / 2:.4f} over the last 2 steps, lr " \
        in first, first
    assert f"(lineage step 25): loss {info.losses[-1]:.4f}, lr " in steps[-1]  # step 25 alone since step 24's line
    done = [ln for ln in lines if ln.startswith("sft[iterative] done: 25 steps, ")]
    tail = info.losses[-10:]
    assert done and f"final loss {info.losses[-1]:.4f} (mean of the last 10 steps {sum(tail) / 10:.4f})" in done[0]
    assert any(ln.startswith("sft[iterative]: 25 optimizer steps (step 0 to 25) on 40 examples") for ln in lines)


def test_prm_training_logs_its_loss(tmp_path, micro_policy, caplog):
    from bstar.models.prm_train import train_prm

    ex = [{"prompt": "Q: 1+2=? A: ", "steps": ["1+2=3", "#### 3"], "labels": [1.0, 1.0]},
          {"prompt": "Q: 5-1=? A: ", "steps": ["5-1=3", "#### 3"], "labels": [0.0, 0.0]}]
    with caplog.at_level(logging.INFO, logger="bstar.models.prm_train"):
        info = train_prm(ex, micro_policy, tmp_path / "prm", step_delimiter="; ", max_steps=3, batch_size=2,
                         progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "bstar.models.prm_train"]
    assert [ln.split(":")[0] for ln in lines if ln.startswith("prm train step")] == [
        "prm train step 1/3", "prm train step 2/3", "prm train step 3/3"]
    assert lines[-2] == f"prm train step 3/3: loss {info.losses[-1]:.4f}"  # one step a line: no mean
    assert lines[-1].startswith(f"prm train done: 3 steps, final loss {sum(info.losses) / 3:.4f} (mean of the last 3")
    assert lines[0].startswith("prm train: 3 steps on 2 examples (4 step labels, 50.0% positive)")
