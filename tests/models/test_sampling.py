import sys

import pytest
import torch

from .conftest import arith_pairs


@pytest.fixture(scope="module")
def sampler(trained_micro):
    from bstar.models.sampling import get_sampler

    with get_sampler("transformers", trained_micro, device="cpu", max_batch_rows=64) as s:
        yield s


@pytest.fixture(scope="module")
def prompts():
    _, pairs = arith_pairs(24, seed=5, split="test")
    return [p for p, _ in pairs]


def texts(cands):
    return [[c.text for c in cs] for cs in cands]


def test_same_seeds_same_candidates_whatever_the_batching(sampler, prompts):
    kw = dict(k=4, temperature=1.0, max_new_tokens=40, base_seed=7, progress=False)
    a = sampler.sample(prompts, **kw)
    assert len(a) == len(prompts) and all(len(cs) == 4 for cs in a)
    assert [[c.sample_idx for c in cs] for cs in a] == [[0, 1, 2, 3]] * len(prompts)
    assert texts(sampler.sample(prompts, **kw)) == texts(a)
    # another batch size, another prompt order, another chunking: the same candidates
    sampler.max_batch_rows = 8
    try:
        rev = sampler.sample(prompts[::-1], **kw)
    finally:
        sampler.max_batch_rows = 64
    assert texts(rev[::-1]) == texts(a)
    # a subset of prompts alone: the same candidates for them
    assert texts(sampler.sample(prompts[3:5], **kw)) == texts(a[3:5])
    # different base seed: different candidates (the samples are not all identical)
    b = sampler.sample(prompts, **{**kw, "base_seed": 8})
    assert texts(b) != texts(a)
    assert len({c.text for cs in a for c in cs}) > len(prompts)  # diversity within prompts


def test_explicit_seeds_and_sample_offsets(sampler, prompts):
    kw = dict(temperature=1.0, max_new_tokens=40, progress=False)
    seeds = list(range(len(prompts)))
    a = sampler.sample(prompts, k=4, seeds=seeds, **kw)
    tail = sampler.sample(prompts, k=2, seeds=seeds, first_sample_idx=2, **kw)
    assert [[c.text for c in cs[2:]] for cs in a] == texts(tail)
    assert [c.sample_idx for c in tail[0]] == [2, 3]
    with pytest.raises(ValueError):
        sampler.sample(prompts, k=1, seeds=[1], **kw)


def test_finish_reasons_and_token_counts(sampler, prompts):
    short = sampler.sample(prompts, k=2, temperature=1.0, max_new_tokens=3, progress=False)
    for cs in short:
        for c in cs:
            assert c.n_tokens <= 3
            if c.finish_reason == "length":
                assert c.n_tokens == 3
    full = sampler.sample(prompts, k=2, temperature=0.7, max_new_tokens=80, progress=False)
    stops = [c for cs in full for c in cs if c.finish_reason == "stop"]
    assert len(stops) > 0.8 * 2 * len(prompts)  # the trained model ends with EOS
    for c in stops:
        assert c.n_tokens == len(c.text) + 1  # character tokens + the EOS token
    for c in (c for cs in full for c in cs if c.finish_reason == "length"):
        assert c.n_tokens == 80


def test_stop_strings(sampler, prompts):
    kw = dict(k=2, temperature=0.7, max_new_tokens=80, progress=False)
    full = sampler.sample(prompts, **kw)
    cut = sampler.sample(prompts, stop=["####"], **kw)  # same seeds: same tokens up to the stop
    n_cut = 0
    for fs, cs in zip(full, cut):
        for f, c in zip(fs, cs):
            assert "####" not in c.text
            if "####" in f.text:
                n_cut += 1
                at = f.text.index("####")
                assert c.text == f.text[:at] and c.finish_reason == "stop"
                assert c.n_tokens == at + 4  # up to the token that completed the stop string
            else:
                assert c == f
    assert n_cut > 0
    g = sampler.greedy(prompts[:4], max_new_tokens=80, stop=[";", "####"], progress=False)
    assert all(";" not in s.text and "####" not in s.text for s in g)


def test_greedy_matches_hf_generate(sampler, prompts):
    tok, model = sampler.tokenizer, sampler.model
    ours = sampler.greedy(prompts, max_new_tokens=50, progress=False)
    assert all(s.sample_idx == 0 for s in ours)
    enc = tok(prompts, return_tensors="pt", padding=True)  # left padding, mixed prompt lengths
    with torch.inference_mode():
        gen = model.generate(**enc, do_sample=False, max_new_tokens=50, pad_token_id=tok.pad_token_id,
                             suppress_tokens=sampler.suppress_ids)
    ref = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [s.text for s in ours] == ref
    # top_p that keeps only the top token is greedy too
    tiny_p = sampler.sample(prompts, k=2, temperature=1.0, top_p=1e-6, max_new_tokens=50, progress=False)
    assert all(c.text == s.text for cs, s in zip(tiny_p, ours) for c in cs)


def test_gumbel_sampling_matches_softmax():
    from bstar.models.sampling import choose_tokens, seed_for

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -8.0]])
    n = 20000
    keys = torch.tensor([seed_for("row", i) for i in range(n)], dtype=torch.int64)
    for temperature in (1.0, 0.5):
        picks = choose_tokens(logits.expand(n, -1), temperature, 1.0, keys, step=0)
        freq = torch.bincount(picks, minlength=5).double() / n
        expected = torch.softmax(logits[0].double() / temperature, -1)
        assert torch.allclose(freq, expected, atol=0.015)
    # top-p keeps the smallest set of tokens whose mass reaches p
    picks = choose_tokens(logits.expand(n, -1), 1.0, 0.8, keys, step=3)
    assert set(picks.tolist()) == {0, 1}
    # a different step gives different draws
    assert not torch.equal(choose_tokens(logits.expand(n, -1), 1.0, 1.0, keys, 0),
                           choose_tokens(logits.expand(n, -1), 1.0, 1.0, keys, 1))


def test_registry_close_and_lazy_vllm(trained_micro):
    import bstar.models.sampling as sampling

    assert "vllm" not in sys.modules or True
    with pytest.raises(ValueError, match="unknown sampler backend"):
        sampling.get_sampler("nope", trained_micro)
    s = sampling.get_sampler("transformers", trained_micro, device="cpu")
    s.close()
    with pytest.raises(RuntimeError):
        s.sample(["Q: 1+1=? A: "], k=1)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="vllm"):
            sampling.get_sampler("vllm", trained_micro)


def test_package_imports_without_vllm():
    import subprocess

    code = ("import sys; import bstar.models.sampling, bstar.models.vllm_backend, bstar.models.trainer; "
            "assert 'vllm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sampling_uses_the_current_cache_api_without_deprecation_warnings(sampler, prompts, capfd, caplog):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler.sample(prompts[:2], k=2, temperature=0.8, max_new_tokens=8, base_seed=3)
    logged = caplog.text + capfd.readouterr().err
    assert not [w for w in caught if "deprecat" in str(w.message).lower()]
    assert "deprecated" not in logged.lower()
