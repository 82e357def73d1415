import json
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import arith_pairs


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def assert_same_weights(a, b, atol=1e-6):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), k


def assert_different_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert any(not torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def state(path):
    return json.loads((Path(path) / "trainer_state.json").read_text())


@pytest.fixture(scope="module")
def rounds_data():
    _, pairs = arith_pairs(96, seed=11)
    return pairs[:48], pairs[48:]


def test_prompt_tokens_are_masked(micro_policy):
    import torch.nn.functional as F

    from bstar.models.loading import load_policy
    from bstar.models.trainer import IGNORE, collate, response_token_loss, tokenize_examples

    model, tok = load_policy(micro_policy, device="cpu")
    pairs = [("Q: 1+2=? A: ", "1+2=3. #### 3"), ("Q: 10-4+1=? A: ", "10-4=6; 6+1=7. #### 7")]
    data = tokenize_examples(tok, pairs)
    assert all(ids.dtype == labels.dtype == np.int32 for ids, labels in data)  # 4 bytes a token
    for (p, r), (ids, labels) in zip(pairs, [(i.tolist(), lab.tolist()) for i, lab in data]):
        n_prompt = len(p) + 1  # BOS + one token per character
        assert labels[:n_prompt] == [IGNORE] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[n_prompt:-1]) == r
    ids, labels = collate(data, tok.pad_token_id, "cpu")
    with torch.no_grad():
        loss = response_token_loss(model, ids, labels)
        logits = model(input_ids=ids).logits
    manual = 0.0
    for b, ((p, r), _) in enumerate(zip(pairs, data)):
        start, end = len(p) + 1, len(p) + 1 + len(r) + 1  # response + EOS
        manual += F.cross_entropy(logits[b, start - 1 : end - 1], ids[b, start:end], reduction="sum")
    assert torch.allclose(loss, manual, atol=1e-4)


def test_short_sft_learns(trained_micro):
    log = state(trained_micro)["log"]
    first, last = log[0]["loss"], log[-1]["loss"]
    assert state(trained_micro)["step"] == 60
    assert first > 4.0 and last < 0.5 * first, (first, last)  # from ~ln(100) to well below


def test_lr_schedule_shape():
    from bstar.models.trainer import lr_factor

    f = [lr_factor(i, 4, 20) for i in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[3:], f[4:]))
    assert lr_factor(20, 4, 20) == pytest.approx(0.0) and lr_factor(30, 4, 20, 0.1) == pytest.approx(0.1)


def test_online_continues_one_schedule_iterative_starts_fresh(tmp_path, micro_policy, rounds_data):
    from bstar.models.trainer import lr_factor, train_sft

    d1, d2 = rounds_data
    kw = dict(batch_size=16, lr=1e-3, warmup_steps=2, log_every=1, progress=False)
    r1 = train_sft(d1, micro_policy, tmp_path / "r1", mode="online", max_steps=4, total_rounds=2, **kw)
    assert r1.step == 4
    s1 = state(r1.path)
    assert (s1["schedule_start"], s1["schedule_steps"], s1["warmup_steps"]) == (0, 8, 2)
    assert (Path(r1.path) / "optimizer" / ".metadata").exists()  # AdamW shards (torch.distributed.checkpoint)
    on = train_sft(d2, r1.path, tmp_path / "on2", mode="online", max_steps=4, **{**kw, "lr": 5.0})
    s = state(on.path)
    assert on.step == 8 and s["schedule_start"] == 0 and s["lr"] == 1e-3  # lr of round 2 ignored
    assert [e["lr"] for e in s["log"]] == pytest.approx([1e-3 * lr_factor(i, 2, 8) for i in range(5, 9)])
    assert s["log"][-1]["lr"] == pytest.approx(0.0)
    it = train_sft(d2, r1.path, tmp_path / "it2", mode="iterative", max_steps=4, **kw)
    s = state(it.path)
    assert it.step == 8 and (s["schedule_start"], s["schedule_steps"]) == (4, 4)  # lineage step, fresh schedule
    assert [e["lr"] for e in s["log"]] == pytest.approx([1e-3 * lr_factor(i, 2, 4) for i in range(1, 5)])
    assert_different_weights(on.path, it.path)
    # an online lineage starting from a warm-up (non-online) checkpoint gets a fresh schedule
    first = train_sft(d2, it.path, tmp_path / "on_after_warmup", mode="online", max_steps=2, total_rounds=3, **kw)
    s = state(first.path)
    assert (s["schedule_start"], s["schedule_steps"], s["step"]) == (8, 6, 10)
    assert s["log"][0]["lr"] == pytest.approx(1e-3 * lr_factor(1, 2, 6))


def test_restart_starts_every_round_from_the_initial_checkpoint(tmp_path, micro_policy, rounds_data):
    from bstar.models.trainer import SFTRecipe, round_init_checkpoint, train_sft

    d1, d2 = rounds_data
    kw = dict(batch_size=16, lr=1e-3, progress=False)
    assert round_init_checkpoint("restart", "init", "prev") == "init"
    assert round_init_checkpoint("iterative", "init", "prev") == "prev"
    assert round_init_checkpoint("online", "init", None) == "init"
    r1 = train_sft(d1, round_init_checkpoint("restart", micro_policy, None), tmp_path / "r1", mode="restart",
                   max_steps=3, **kw)
    r2 = train_sft(d2, round_init_checkpoint("restart", micro_policy, r1.path), tmp_path / "r2", mode="restart",
                   max_steps=3, **kw)
    alone = train_sft(d2, micro_policy, tmp_path / "alone", mode="restart", max_steps=3, **kw)
    assert_same_weights(r2.path, alone.path, atol=0)  # round 2 does not depend on round 1 at all
    # in memory, a restart recipe reloads the initial weights each round: same result
    rec = SFTRecipe(micro_policy, mode="restart", batch_size=16, lr=1e-3, progress=False)
    rec.train_round(d1, max_steps=3)
    rec.train_round(d2, max_steps=3)
    rec.save(tmp_path / "mem")
    assert_same_weights(tmp_path / "mem", r2.path)


@pytest.mark.parametrize("mode", ["online", "iterative"])
def test_two_rounds_in_one_go_equal_save_load_resume(tmp_path, micro_policy, rounds_data, mode):
    from bstar.models.trainer import SFTRecipe, train_sft

    d1, d2 = rounds_data
    kw = dict(batch_size=16, lr=2e-3, warmup_steps=1, weight_decay=0.01, progress=False)
    rec = SFTRecipe(micro_policy, mode=mode, **kw)
    rec.train_round(d1, max_steps=3, schedule_steps=6)
    rec.train_round(d2, max_steps=3)
    rec.save(tmp_path / "one_go")
    r1 = train_sft(d1, micro_policy, tmp_path / "r1", mode=mode, max_steps=3, schedule_steps=6, **kw)
    r2 = train_sft(d2, r1.path, tmp_path / "r2", mode=mode, max_steps=3, **kw)
    assert_same_weights(tmp_path / "one_go", r2.path)
    assert state(r2.path)["step"] == 6


def test_resume_an_interrupted_round_bit_for_bit(tmp_path, micro_policy, rounds_data):
    from bstar.models.trainer import SFTRecipe, train_sft

    d1, _ = rounds_data
    kw = dict(batch_size=16, lr=2e-3, progress=False)
    straight = train_sft(d1, micro_policy, tmp_path / "straight", epochs=2, **kw)  # 48 ex, bs 16: 6 steps
    assert straight.step == 6
    rec = SFTRecipe(micro_policy, **kw)
    rec.train_round(d1, epochs=2, stop_after=4)
    rec.save(tmp_path / "interrupted")
    assert state(tmp_path / "interrupted")["step"] == 4
    resumed = train_sft(d1, micro_policy, tmp_path / "resumed", resume_from=tmp_path / "interrupted", **kw)
    assert resumed.step == 6
    assert_same_weights(straight.path, resumed.path)
    with pytest.raises(ValueError, match="examples differ"):
        train_sft(d1[:-1], micro_policy, tmp_path / "bad", resume_from=tmp_path / "interrupted", **kw)


def test_grad_accum_matches_one_big_batch(tmp_path, micro_policy, rounds_data):
    from bstar.models.trainer import train_sft

    d1, _ = rounds_data
    kw = dict(batch_size=16, lr=2e-3, max_steps=3, progress=False)
    a = train_sft(d1, micro_policy, tmp_path / "a", **kw)
    b = train_sft(d1, micro_policy, tmp_path / "b", grad_accum=4, **kw)
    assert a.losses == pytest.approx(b.losses, abs=1e-5)
    assert_same_weights(a.path, b.path, atol=1e-5)


def test_batch_and_arguments_validation(tmp_path, micro_policy, rounds_data):
    from bstar.models.trainer import train_sft

    d1, _ = rounds_data
    with pytest.raises(ValueError, match="divisible"):
        train_sft(d1, micro_policy, tmp_path / "x", batch_size=10, grad_accum=3, max_steps=1, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        train_sft(d1, micro_policy, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="mode"):
        train_sft(d1, micro_policy, tmp_path / "x", mode="offline", max_steps=1)
    with pytest.raises(ValueError, match="pair"):
        train_sft([("only prompt",)], micro_policy, tmp_path / "x", max_steps=1)


def test_examples_from_jsonl_and_warmup_entry_point(tmp_path, rounds_data):
    from bstar.models.trainer import sft_warmup

    d1, _ = rounds_data
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in d1))
    info = sft_warmup(path, "tiny", tmp_path / "warm", max_steps=2, batch_size=16, progress=False)
    assert info.step == 2 and (tmp_path / "warm-init" / "config.json").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(info.path)
    AutoTokenizer.from_pretrained(info.path)


def test_two_processes_follow_the_one_process_loss_trajectory(tmp_path, micro_policy, rounds_data, caplog):
    """DDP over gloo on CPU, launched through torchrun by train_sft itself; the processes' loss
    lines reach this process's log (and so the Prefect run's) as they are printed."""
    import logging

    from bstar.models.trainer import train_sft

    d1, _ = rounds_data
    kw = dict(batch_size=16, lr=2e-3, max_steps=4, progress=False)
    one = train_sft(d1, micro_policy, tmp_path / "one", **kw)
    with caplog.at_level(logging.INFO, logger="bstar.models.launch"):
        two = train_sft(d1, micro_policy, tmp_path / "two", num_processes=2, **kw)
    relayed = [r.getMessage() for r in caplog.records if r.name == "bstar.models.launch"]
    assert [m for m in relayed if "sft[iterative] step" in m][-1].startswith("[trainer] ")
    assert sum("sft[iterative] step" in m for m in relayed) == 4  # main process only, every step of 4
    assert two.step == 4 and len(two.losses) == 4
    assert two.losses == pytest.approx(one.losses, abs=1e-4)
    assert_same_weights(one.path, two.path, atol=1e-4)


def test_online_rounds_of_different_sizes_never_train_at_lr_zero_before_the_last_round(tmp_path, micro_policy,
                                                                                     rounds_data):
    """With `training.epochs` (no max_steps) online mode takes the same steps every round (epochs
    over N), so one schedule of rounds x steps covers a round 2 six times larger than round 1;
    epochs over each round's own data fixed the schedule from round 1 and ran round 2 at LR 0."""
    from bstar.config import parse_config
    from bstar.models.trainer import train_sft
    from bstar.tasks.training import round_steps

    cfg = parse_config({"method": "online-rft", "iterations": 2, "selection": {"n_target": 48},
                        "training": {"epochs": 1, "batch_size": 16}})
    steps = round_steps(cfg)
    assert steps == {"max_steps": 3}  # ceil(1 epoch x N 48 / batch 16)
    small, big = rounds_data[0][:8], rounds_data[1]
    kw = dict(batch_size=16, lr=1e-3, warmup_steps=1, log_every=1, progress=False, total_rounds=cfg.iterations)
    r1 = train_sft(small, micro_policy, tmp_path / "r1", mode="online", **steps, **kw)
    r2 = train_sft(big, r1.path, tmp_path / "r2", mode="online", **steps, **kw)
    s = state(r2.path)
    assert (r1.step, r2.step, s["schedule_steps"]) == (3, 6, 6)
    lrs = [e["lr"] for e in state(r1.path)["log"] + s["log"]]  # the LR after each step: the next step's
    assert len(lrs) == 6 and all(lr > 0 for lr in lrs[:-1]) and lrs[-1] == pytest.approx(0.0)
    # iterative mode keeps epochs over the round's own data (a fresh schedule every round)
    assert round_steps(parse_config({"method": "iterative-rft", "training": {"epochs": 2}})) == {"epochs": 2}
