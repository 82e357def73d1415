"""PRM scorer and trainer (bstar.models.prm, bstar.models.prm_train): step splitting, aggregation,
mapping to [-1, 1], both checkpoint formats, clear errors for unreadable ones."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bstar.models.prm import (
    aggregate,
    default_delimiter,
    load_prm,
    read_prm_spec,
    roc_auc,
    split_steps,
    to_unit,
)

from .conftest import PLAIN


# ------------------------------------------------------------------------------ pure pieces
def test_split_steps_arith_and_math():
    assert split_steps("23+45=68; 68-12=56. #### 56", "; ") == ["23+45=68", "68-12=56. #### 56"]
    assert split_steps("a\n\nb\n\n\n\nc", "\n\n") == ["a", "b", "c"]
    assert split_steps("", "; ") == [""]  # every response gets a score
    assert default_delimiter("arith") == "; " and default_delimiter("gsm8k") == "\n\n"
    with pytest.raises(ValueError):
        split_steps("x", "")


def test_aggregate_and_mapping():
    assert aggregate([0.9, 0.2, 0.7], "min") == 0.2
    assert aggregate([0.9, 0.2, 0.7], "mean") == pytest.approx(0.6)
    assert aggregate([0.9, 0.2, 0.7], "last") == 0.7
    with pytest.raises(ValueError):
        aggregate([0.5], "max")
    assert to_unit(0.75, "probability") == pytest.approx(0.5)
    assert to_unit(0.0, "probability") == -1.0 and to_unit(1.0, "probability") == 1.0
    assert to_unit(3.0, "logit", scale=4.0) == pytest.approx(0.75)
    assert to_unit(-9.0, "logit", scale=4.0) == -1.0 and to_unit(9.0, "logit", scale=4.0) == 1.0


def test_roc_auc_matches_pair_counting():
    rng = random.Random(0)
    ys = [rng.random() < 0.4 for _ in range(200)]
    ss = [round(rng.random() * 5) / 5 + (0.3 if y else 0) for y in ys]  # ties on purpose
    pos = [s for s, y in zip(ss, ys) if y]
    neg = [s for s, y in zip(ss, ys) if not y]
    brute = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert roc_auc(ys, ss) == pytest.approx(brute)
    assert roc_auc([True, True], [0.1, 0.2]) is None


# ------------------------------------------------------------------------------ formats
def test_unreadable_dir_names_what_it_found(micro_policy, tmp_path):
    with pytest.raises(ValueError, match=r"no prm_config.json.*model_type='llama'.*math-shepherd"):
        read_prm_spec(micro_policy)
    bad = tmp_path / "weird"
    bad.mkdir()
    (bad / "prm_config.json").write_text(json.dumps({"format": "orm-v2"}))
    with pytest.raises(ValueError, match="unknown PRM format 'orm-v2'"):
        read_prm_spec(bad)
    (bad / "prm_config.json").write_text(json.dumps({"format": "bstar-scalar"}))
    with pytest.raises(ValueError, match="prm_head.safetensors is missing"):
        read_prm_spec(bad)
    with pytest.raises(ValueError, match="not a local directory"):
        read_prm_spec(tmp_path / "nothing-here")


def _labelled_arith(n: int, seed: int = 0):
    """Gold solutions, half with one corrupted step; labels from the arith step checker."""
    from bstar.datasets.arith import generate
    from bstar.verifiers.arith import check_steps

    rng = random.Random(seed)
    out = []
    for r in generate(n, seed=seed):
        steps = r["meta"]["solution"].split("; ")
        if rng.random() < 0.5:
            i = rng.randrange(len(steps))
            steps[i] = steps[i].replace("=", "=1", 1)
        labels = [float(x) for x in check_steps("; ".join(steps), r["prompt"], cumulative=True)]
        out.append({"prompt": PLAIN.format(prompt=r["prompt"]), "steps": steps, "labels": labels})
    return out


@pytest.fixture(scope="module")
def small_prm(micro_policy, tmp_path_factory):
    from bstar.models.prm_train import train_prm

    ex = _labelled_arith(64)
    out = tmp_path_factory.mktemp("prm") / "prm"
    info = train_prm(ex, micro_policy, out, step_delimiter="; ", max_steps=6, batch_size=16, lr=3e-3, progress=False)
    return info, ex


def test_bstar_scalar_checkpoint_round_trip(small_prm, micro_policy):
    info, _ = small_prm
    cfg = json.loads(Path(info.path, "prm_config.json").read_text())
    assert cfg["format"] == "bstar-scalar" and cfg["step_delimiter"] == "; " and cfg["step_token"] == "<step>"
    assert Path(info.path, "prm_head.safetensors").is_file() and Path(info.path, "config.json").is_file()
    assert cfg["extra"]["examples"] == 64 and cfg["base_model"] == str(micro_policy)
    spec = read_prm_spec(info.path)
    assert spec.format == "bstar-scalar" and spec.step_token_id == cfg["step_token_id"]
    with pytest.raises(ValueError, match="format 'math-shepherd' was asked for"):
        read_prm_spec(info.path, "math-shepherd")
    assert len(info.losses) == 6 and info.step_labels == sum(len(e["steps"]) for e in _labelled_arith(64))


def test_bstar_scalar_scores_are_the_head_at_step_tokens(small_prm):
    """One score per step = sigmoid(head(hidden state at the <step> token)); batching changes nothing."""
    import torch

    from bstar.models.prm import step_inputs

    info, ex = small_prm
    prm = load_prm(info.path, batch_size=3, device="cpu")
    prompts = [e["prompt"] for e in ex[:7]]
    responses = ["; ".join(e["steps"]) for e in ex[:7]]
    got = prm.step_scores(prompts, responses, progress=False)
    ids, pos, cut = step_inputs(prm.tokenizer, prm.spec, prompts[2], ex[2]["steps"])
    assert cut == 0
    assert [ids[p] for p in pos] == [prm.spec.step_token_id] * len(ex[2]["steps"])
    with torch.no_grad():
        h = prm.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        want = torch.sigmoid(prm.head(h[pos]).squeeze(-1)).tolist()
    assert got[2] == pytest.approx(want, abs=1e-5)
    assert [len(g) for g in got] == [len(e["steps"]) for e in ex[:7]]
    one_by_one = load_prm(info.path, batch_size=1, device="cpu").step_scores(prompts, responses, progress=False)
    for a, b in zip(got, one_by_one):
        assert a == pytest.approx(b, abs=1e-5)
    # aggregate then map
    res = prm.score(prompts, responses, progress=False)
    for r, g in zip(res, got):
        assert r.prm == pytest.approx(2 * min(g) - 1, abs=1e-6) and -1 <= r.prm <= 1
    mean = load_prm(info.path, aggregation="mean", device="cpu").score(prompts, responses, progress=False)
    assert mean[0].prm == pytest.approx(2 * sum(got[0]) / len(got[0]) - 1, abs=1e-5)
    logit = load_prm(info.path, score="logit", scale=0.5, device="cpu").score(prompts, responses, progress=False)
    import math

    p = min(got[0])
    assert logit[0].prm == pytest.approx(max(-1, min(1, math.log(p / (1 - p)) / 0.5)), abs=1e-4)


# ------------------------------------------------------------------------------ left truncation
LONG_PROMPT = PLAIN.format(prompt="12+34+5-7+10-3+2=?")
LONG_STEPS = ["12+34=46", "46+5=51", "51-7=44", "44+10=54", "54-3=51", "51+2=53. #### 53"]
SHORT_PROMPT, SHORT_STEPS = PLAIN.format(prompt="1+2=?"), ["1+2=3. #### 3"]


def test_step_inputs_left_truncation_leaves_cut_steps_out(small_prm):
    """Steps whose step-end token is cut off get no position (never position 0) and are counted."""
    from bstar.models.prm import step_inputs

    info, _ = small_prm
    prm = load_prm(info.path, device="cpu")
    tok, spec, step_id = prm.tokenizer, prm.spec, prm.spec.step_token_id
    full = step_inputs(tok, spec, LONG_PROMPT, LONG_STEPS)
    assert full.truncated == 0 and len(full.positions) == 6
    assert step_inputs(tok, spec, LONG_PROMPT, LONG_STEPS, len(full.ids)) == full  # it fits: nothing cut
    cut = full.positions[2] + 1  # the step-end tokens of the first three steps fall in the cut
    t = step_inputs(tok, spec, LONG_PROMPT, LONG_STEPS, len(full.ids) - cut)
    assert t.truncated == 3 and t.ids == full.ids[cut:] and len(t.ids) == len(full.ids) - cut
    assert t.positions == [p - cut for p in full.positions[3:]]  # the last three steps, where they were
    assert [t.ids[p] for p in t.positions] == [step_id] * 3 and 0 not in t.positions
    # a step-end token that is the first kept token survives (at position 0, as the step token)
    t = step_inputs(tok, spec, LONG_PROMPT, LONG_STEPS, len(full.ids) - full.positions[2])
    assert t.truncated == 2 and t.positions[0] == 0 and t.ids[0] == step_id
    # the last step always survives; a max_length below 1 is an error, not garbage
    assert step_inputs(tok, spec, LONG_PROMPT, LONG_STEPS, 1) == ([step_id], [0], 5)
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        step_inputs(tok, spec, LONG_PROMPT, LONG_STEPS, 0)


def test_scorer_leaves_truncated_steps_out_of_scores_and_aggregate(small_prm):
    """A PRMScorer with a short max_length: the cut steps are neither scored nor aggregated; the
    scores are the head at the surviving step tokens of the truncated input, and are counted."""
    import torch

    from bstar.models.prm import step_inputs

    info, _ = small_prm
    prm = load_prm(info.path, batch_size=4, device="cpu")
    prompts, responses = [LONG_PROMPT, SHORT_PROMPT], ["; ".join(LONG_STEPS), "; ".join(SHORT_STEPS)]
    whole = prm.score(prompts, responses, progress=False)
    assert [(r.n_steps, len(r.step_scores)) for r in whole] == [(6, 6), (1, 1)]

    ids, pos = step_inputs(prm.tokenizer, prm.spec, LONG_PROMPT, LONG_STEPS)[:2]
    prm.max_length = len(ids) - pos[2] - 1  # the first three step ends are cut off
    cut = pos[2] + 1
    ids, kept = ids[cut:], [p - cut for p in pos[3:]]  # the truncated input, its surviving step tokens
    with torch.no_grad():
        h = prm.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        at = torch.sigmoid(prm.head(h).squeeze(-1).float()).tolist()  # what the head says at every position
    want = [at[p] for p in kept]

    res = prm.score(prompts, responses, progress=False)  # batched with a short response that fits
    r = res[0]
    assert r.step_scores == pytest.approx(want, abs=1e-5)  # the last three steps, in order
    assert not any(s == pytest.approx(at[0], abs=1e-7) for s in r.step_scores)  # nothing read at position 0
    assert r.prm == pytest.approx(2 * min(want) - 1, abs=1e-5)  # min over the scored steps only
    assert (r.n_steps, r.n_truncated) == (6, 3)
    assert (res[1].n_steps, res[1].n_truncated) == (1, 0)
    assert res[1].step_scores == pytest.approx(whole[1].step_scores, abs=1e-5)

    scores, cut = prm.step_scores(prompts, responses, progress=False, return_truncated=True)
    assert cut == [3, 0] and scores[0] == pytest.approx(want, abs=1e-5)
    assert prm.step_scores(prompts, responses, progress=False)[0] == pytest.approx(want, abs=1e-5)
    prm.aggregation = "mean"
    assert prm.score(prompts, responses, progress=False)[0].prm == pytest.approx(2 * sum(want) / 3 - 1, abs=1e-5)
    prm.aggregation = "last"
    assert prm.score(prompts, responses, progress=False)[0].prm == pytest.approx(2 * want[-1] - 1, abs=1e-5)


def test_train_prm_drops_labels_whose_step_end_is_cut(tmp_path, caplog):
    """Training on examples longer than the backbone's context: the labels of the cut steps are
    dropped (and counted), the others train at their step tokens."""
    import math

    from bstar.models.prm import step_inputs
    from bstar.models.prm_train import train_prm
    from bstar.models.tiny import build_tiny_policy

    init = build_tiny_policy(tmp_path / "init", hidden=32, layers=1, heads=2, max_positions=48, seed=0)
    ex = [{"prompt": LONG_PROMPT, "steps": LONG_STEPS, "labels": [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]},
          {"prompt": SHORT_PROMPT, "steps": SHORT_STEPS, "labels": [1.0]}]
    with caplog.at_level("WARNING", logger="bstar.models.prm_train"):
        info = train_prm(ex, init, tmp_path / "prm", step_delimiter="; ", max_steps=2, batch_size=2, progress=False)
    prm = load_prm(info.path, device="cpu")
    assert prm.max_length == 48
    cut = step_inputs(prm.tokenizer, prm.spec, LONG_PROMPT, LONG_STEPS, 48).truncated
    assert 0 < cut < 6 and step_inputs(prm.tokenizer, prm.spec, SHORT_PROMPT, SHORT_STEPS, 48).truncated == 0
    assert info.truncated_labels == cut and info.step_labels == 7 - cut
    assert info.positive_rate == pytest.approx((sum(ex[0]["labels"][cut:]) + 1) / (7 - cut))
    assert json.loads(Path(info.path, "prm_config.json").read_text())["extra"]["truncated_step_labels"] == cut
    assert all(math.isfinite(x) for x in info.losses)
    assert any("step labels" in m and "left truncation" in m for m in caplog.messages)


@pytest.mark.slow
def test_bstar_scalar_learns_arith_step_truth(micro_policy, tmp_path):
    from bstar.models.prm_train import train_prm

    info = train_prm(_labelled_arith(600), micro_policy, tmp_path / "prm", max_steps=150, batch_size=32, lr=3e-3,
                     progress=False)
    test = _labelled_arith(200, seed=5)
    prm = load_prm(info.path, device="cpu")
    scores = prm.step_scores([e["prompt"] for e in test], steps=[e["steps"] for e in test], progress=False)
    ys = [y > 0.5 for e in test for y in e["labels"]]
    assert roc_auc(ys, [s for row in scores for s in row]) > 0.7  # measured 0.77 from a random-init backbone


# ------------------------------------------------------------------------------ Math-Shepherd
TAG = "ки"


@pytest.fixture(scope="module")
def shepherd_dir(tmp_path_factory):
    """A tiny random causal LM whose tokenizer knows the step tag, saved under a Math-Shepherd name."""
    import torch
    from transformers import LlamaForCausalLM

    from bstar.models.tiny import build_char_tokenizer, tiny_config

    tok = build_char_tokenizer()
    tok.add_tokens([TAG])
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(len(tok), hidden=32, layers=1, heads=2))
    out = tmp_path_factory.mktemp("hub") / "math-shepherd-tiny-prm"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_math_shepherd_probability_of_plus_against_minus(shepherd_dir):
    import torch

    prm = load_prm(shepherd_dir, device="cpu")  # recognised by its name, no prm_config.json
    assert prm.spec.format == "math-shepherd"
    prompt, steps = "Q: 2+3-1=? A:", ["2+3=5", "5-1=4. #### 4"]
    got = prm.step_scores([prompt], steps=[steps], progress=False)[0]
    # the model's own input: question, then every step followed by " ки", steps joined by "\n"
    text = prompt + " " + "\n".join(f"{s} {TAG}" for s in steps)
    ids = prm.tokenizer(text)["input_ids"]
    tag_id = prm.tokenizer.convert_tokens_to_ids(TAG)
    pos = [i for i, t in enumerate(ids) if t == tag_id]
    assert len(pos) == 2
    with torch.no_grad():
        logits = prm.model(input_ids=torch.tensor([ids])).logits[0, pos]
    plus, minus = prm.tokenizer.convert_tokens_to_ids("+"), prm.tokenizer.convert_tokens_to_ids("-")
    want = torch.softmax(logits[:, [plus, minus]], dim=-1)[:, 0].tolist()
    assert got == pytest.approx(want, abs=1e-5)


def test_math_shepherd_truncation_keeps_the_last_tag(shepherd_dir):
    """Math-Shepherd format: cut steps are counted, kept positions hold the tag; tokens after the
    last tag (an EOS here) are dropped before cutting, so the last step survives max_length=1."""
    from bstar.models.prm import step_inputs

    prm = load_prm(shepherd_dir, device="cpu")
    tag_id = prm.tokenizer.convert_tokens_to_ids(TAG)
    full = step_inputs(prm.tokenizer, prm.spec, LONG_PROMPT, LONG_STEPS)
    assert full.truncated == 0 and len(full.positions) == 6
    cut = full.positions[1] + 1
    t = step_inputs(prm.tokenizer, prm.spec, LONG_PROMPT, LONG_STEPS, len(full.ids) - cut)
    assert t.truncated == 2 and t.positions == [p - cut for p in full.positions[2:]]
    assert [t.ids[p] for p in t.positions] == [tag_id] * 4

    class WithEos:  # a tokenizer that appends EOS after the text, as many do
        def __init__(self, tok):
            self._tok = tok

        def __getattr__(self, name):
            return getattr(self._tok, name)

        def __call__(self, text, add_special_tokens=True, **kw):
            out = dict(self._tok(text, add_special_tokens=add_special_tokens, **kw))
            if add_special_tokens:
                ids = out["input_ids"]
                out["input_ids"] = [x + [self._tok.eos_token_id] for x in ids] if isinstance(text, list) else ids + [self._tok.eos_token_id]
            return out

    tok = WithEos(prm.tokenizer)
    full = step_inputs(tok, prm.spec, LONG_PROMPT, LONG_STEPS)
    assert full.ids[-1] == tok.eos_token_id and full.ids[full.positions[-1]] == tag_id
    assert step_inputs(tok, prm.spec, LONG_PROMPT, LONG_STEPS, 1) == ([tag_id], [0], 5)


def test_math_shepherd_hand_constructed_logits(shepherd_dir):
    """logit(+) - logit(-) = log 3 at every tag -> P(+ | {+,-}) = 0.75 whatever the other tokens say."""
    import math

    import torch

    prm = load_prm(shepherd_dir, device="cpu", aggregation="min")
    plus, minus = prm.good_id, prm.bad_id
    vocab = prm.model.config.vocab_size

    class Fixed(torch.nn.Module):
        config = prm.model.config

        def forward(self, input_ids, attention_mask=None):
            z = torch.zeros(*input_ids.shape, vocab)
            z[..., 5] = 50.0  # a huge logit elsewhere: renormalising over {+, -} ignores it
            z[..., plus] = math.log(3.0)
            z[..., minus] = 0.0

            class Out:
                logits = z

            return Out()

    prm.model = Fixed()
    res = prm.score(["Q: 1+1=? A:"], ["1+1=2\n\n#### 2"], delimiter="\n\n", progress=False)[0]
    assert res.step_scores == pytest.approx([0.75, 0.75]) and res.prm == pytest.approx(0.5)
    prm.score_kind = "logit"
    assert prm.step_scores(["q"], ["a"], progress=False)[0] == pytest.approx([math.log(3.0)])


def test_math_shepherd_format_needs_the_tag_token(micro_policy):
    with pytest.raises(ValueError, match="not a single token"):
        load_prm(micro_policy, format="math-shepherd", device="cpu")
