"""Metrics: pass@k, Pass@K-S, Reward@K-S vs brute-force subset enumeration; diversity; frames."""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pytest

from bstar.algorithms import (
    distinct_equation_ratio,
    extract_equations,
    greedy_pass_at_1,
    pass_at_k,
    pass_at_k_array,
    pass_at_k_s,
    reward_at_k_s,
    sample_metrics,
)


# ------------------------------------------------------------------------------- brute force
def brute_pass_at_k(n, c, k):
    labels = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(labels[i] for i in s) for s in subsets) / len(subsets)


def brute_pass_at_k_s(texts, correct, k, s):
    """texts/correct per sample; fraction of k-subsets with >= s distinct correct texts."""
    subsets = list(itertools.combinations(range(len(texts)), k))
    hit = sum(len({texts[i] for i in sub if correct[i]}) >= s for sub in subsets)
    return hit / len(subsets)


def brute_reward_at_k_s(rewards, correct, k, s):
    n = len(rewards)

    def rank_key(i):
        r = rewards[i]
        return (1 if math.isnan(r) else 0, -r if not math.isnan(r) else 0.0, i)

    subsets = list(itertools.combinations(range(n), k))
    ok = sum(all(correct[i] for i in sorted(sub, key=rank_key)[:s]) for sub in subsets)
    return ok / len(subsets)


# ------------------------------------------------------------------------------------ pass@k
def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)


def test_pass_at_k_errors():
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 0)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k_array([3, 5], [1, 1], 4)


def test_pass_at_k_matches_brute_force_and_array():
    triples = [(n, c, k) for n in range(1, 9) for c in range(n + 1) for k in range(1, n + 1)]
    for n, c, k in triples:
        assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)
    n, c, k = (np.array(v) for v in zip(*triples))
    expected = np.array([pass_at_k(*t) for t in triples])
    assert np.array_equal(pass_at_k_array(n, c, k), expected)
    assert pass_at_k_array(np.array([[4, 4]]), np.array([[0, 4]]), 2).tolist() == [[0.0, 1.0]]


# ----------------------------------------------------------------------------------- Pass@K-S
def test_pass_at_k_s_hand_cases():
    # samples A, A, B, wrong: K=2 subsets (6): >=2 distinct correct = {A1B, A2B} -> 2/6
    assert pass_at_k_s(4, [2, 1], 2, 2) == pytest.approx(2 / 6)
    assert pass_at_k_s(4, [2, 1], 2, 1) == pytest.approx(1 - 0)  # every pair has a correct one
    assert pass_at_k_s(4, [2, 1], 3, 2) == pytest.approx(3 / 4)  # only {A1, A2, W} fails
    # n == K: the indicator
    assert pass_at_k_s(3, [1, 1], 3, 2) == 1.0
    assert pass_at_k_s(3, [2], 3, 2) == 0.0
    assert pass_at_k_s(5, [], 2, 1) == 0.0
    with pytest.raises(ValueError):
        pass_at_k_s(3, [1], 2, 3)  # s > k
    with pytest.raises(ValueError):
        pass_at_k_s(3, [1], 4, 1)  # k > n
    with pytest.raises(ValueError):
        pass_at_k_s(3, [2, 2], 2, 1)  # more correct copies than samples


def test_pass_at_k_s_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(1, 9))
        texts = [f"t{v}" for v in rng.integers(0, 4, n)]
        correct = [t in ("t0", "t1", "t2") and rng.random() < 0.9 for t in texts]
        # correctness per text (a copy marked wrong is a different, wrong response here)
        texts = [t if ok else f"w{i}" for i, (t, ok) in enumerate(zip(texts, correct))]
        groups = {}
        for t, ok in zip(texts, correct):
            if ok:
                groups[t] = groups.get(t, 0) + 1
        for k in range(1, n + 1):
            for s in range(1, k + 1):
                got = pass_at_k_s(n, list(groups.values()), k, s)
                assert got == pytest.approx(brute_pass_at_k_s(texts, correct, k, s), abs=1e-12)
            assert pass_at_k_s(n, list(groups.values()), k, 1) == pytest.approx(
                pass_at_k(n, sum(groups.values()), k), abs=1e-12
            )


# ---------------------------------------------------------------------------------- Reward@K-S
def test_reward_at_k_s_hand_cases():
    # n == K: the indicator on the samples themselves
    assert reward_at_k_s([0.9, 0.5, 0.1], [True, True, False], 3, 2) == 1.0
    assert reward_at_k_s([0.9, 0.5, 0.1], [True, False, True], 3, 2) == 0.0
    # tie at 0.9: the lower sample index ranks first
    assert reward_at_k_s([0.9, 0.9], [False, True], 2, 1) == 0.0
    assert reward_at_k_s([0.9, 0.9], [False, True], 2, 1, sample_idx=[7, 3]) == 1.0
    # NaN reward ranks last
    assert reward_at_k_s([float("nan"), 0.1], [False, True], 2, 1) == 1.0
    # K=2 of [0.9 wrong, 0.5 right, 0.1 right]: pairs {01,02,12}: best correct only in {12}
    assert reward_at_k_s([0.9, 0.5, 0.1], [False, True, True], 2, 1) == pytest.approx(1 / 3)
    # K=1: the fraction of correct samples
    assert reward_at_k_s([0.9, 0.5, 0.1], [False, True, True], 1, 1) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        reward_at_k_s([0.1, 0.2], [True, True], 3, 1)
    with pytest.raises(ValueError):
        reward_at_k_s([0.1, 0.2], [True, True], 2, 3)


def test_reward_at_k_s_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(1, 9))
        rewards = np.round(rng.uniform(-1, 1, n), 1)  # one decimal: ties happen
        rewards[rng.random(n) < 0.1] = np.nan
        correct = rng.random(n) < 0.6
        for k in range(1, n + 1):
            for s in range(1, k + 1):
                got = reward_at_k_s(rewards, correct, k, s)
                want = brute_reward_at_k_s(list(rewards), list(correct), k, s)
                assert got == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------------- diversity
def test_extract_equations():
    assert extract_equations("A: 23+45=68; 68 - 12 = 56. #### 56") == ["23+45=68", "68-12=56"]
    assert extract_equations("so a * b = c, and x = 5.") == ["a*b=c"]
    # calculator notes: only the notes count, not the surrounding text
    assert extract_equations("She sold 48/2 = <<48/2=24>>24 clips, <<48+24=72>>72 in all.") == [
        "48/2=24",
        "48+24=72",
    ]
    assert extract_equations("1,000 * 3 = 3,000.") == ["1,000*3=3,000"]
    assert extract_equations("The answer is 7") == []


def test_distinct_equation_ratio():
    assert distinct_equation_ratio(["2+2=4; 4*3=12", "2 + 2 = 4 then 4*3=12", "1+1=2"]) == 3 / 5
    assert distinct_equation_ratio(["2+2=4", "2+2=4"]) == 0.5
    assert distinct_equation_ratio(["no equations", "answer 4"]) is None
    assert distinct_equation_ratio([]) is None


# -------------------------------------------------------------------------------------- frames
def sampled_frame():
    rows = [
        # split, query, idx, response, correct, reward
        ("test", 1, 0, "2+2=4 #### 4", True, 1.5),
        ("test", 1, 1, " 2+2=4 #### 4", True, 1.2),
        ("test", 1, 2, "2*2=4 #### 4", True, 0.8),
        ("test", 1, 3, "2-2=0 #### 0", False, 0.9),
        ("test", 2, 0, "nothing", False, 0.5),
        ("test", 2, 1, "3+3=6 #### 6", True, 0.4),
        ("test", 2, 2, "3+3=6 #### 6", True, None),
        ("test", 2, 3, "9", False, 0.7),
        ("train", 7, 0, "x", False, 0.1),
        ("train", 7, 1, "y", True, 0.2),
    ]
    return pl.DataFrame(
        rows,
        schema={
            "split": pl.String, "query_id": pl.Int64, "sample_idx": pl.Int64,
            "response": pl.String, "correct": pl.Boolean, "reward": pl.Float64,
        },
        orient="row",
    )


def test_sample_metrics_hand_values():
    out = sample_metrics(sampled_frame(), ks=[1, 2, 4], ss=[1, 2])
    values = {(r["split"], r["name"], r["k"], r["s"]): r["value"] for r in out.iter_rows(named=True)}
    t = lambda name, k=None, s=None: values[("test", name, k, s)]  # noqa: E731
    assert t("accuracy") == 5 / 8
    assert t("pass@k", 1) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert t("pass@k", 4) == 1.0
    # Pass@4-2: q1 has 2 distinct correct (A twice, B) -> 1; q2 only "3+3=6" -> 0
    assert t("pass@k-s", 4, 2) == 0.5
    # Pass@2-2: q1 subsets with A and B: 2 of 6; q2: 0
    assert t("pass@k-s", 2, 2) == pytest.approx((2 / 6 + 0) / 2)
    # Reward@4-1: q1 best 1.5 correct -> 1; q2 ranked 0.7 wrong, 0.5, 0.4, null -> 0
    assert t("reward@k-s", 4, 1) == 0.5
    # Reward@4-2: q1 top two 1.5, 1.2 correct -> 1; q2 -> 0
    assert t("reward@k-s", 4, 2) == 0.5
    # diversity: q1 correct eqs 2+2=4 (x2), 2*2=4 -> 2/3; q2: 3+3=6 (x2) -> 1/2
    assert t("diversity") == pytest.approx((2 / 3 + 1 / 2) / 2)
    # train split has 2 samples: k=4 rows are skipped, no equations -> no diversity row
    train = out.filter(pl.col("split") == "train")
    assert sorted(set(zip(train["name"], train["k"]))) == [
        ("accuracy", None), ("pass@k", 1), ("pass@k", 2),
        ("pass@k-s", 1), ("pass@k-s", 2), ("pass@k-s_se", 1), ("pass@k-s_se", 2),
        ("pass@k_se", 1), ("pass@k_se", 2),
        ("reward@k-s", 1), ("reward@k-s", 2), ("reward@k-s_se", 1), ("reward@k-s_se", 2),
    ]
    # standard errors over the 2 test queries: per-query Pass@1 3/4 and 2/4 -> std 0.1768 / sqrt 2
    assert t("pass@k_se", 1) == pytest.approx(np.std([0.75, 0.5], ddof=1) / np.sqrt(2))
    # Reward@4-1 is 1 and 0 per query -> se 0.5; Pass@4 is 1 for both -> se 0
    assert t("reward@k-s_se", 4, 1) == pytest.approx(0.5)
    assert t("pass@k_se", 4) == 0.0
    assert out.schema == pl.Schema(
        {"split": pl.String, "name": pl.String, "k": pl.Int64, "s": pl.Int64, "value": pl.Float64}
    )


def test_sample_metrics_match_per_query_functions():
    rng = np.random.default_rng(3)
    n_q, n = 12, 8
    q = np.repeat(np.arange(n_q), n)
    idx = np.tile(np.arange(n), n_q)
    text = rng.integers(0, 4, n_q * n)
    correct = text < 2
    reward = np.round(rng.uniform(-1, 1, n_q * n), 1)
    df = pl.DataFrame(
        {
            "split": "test", "query_id": q, "sample_idx": idx,
            "response": [f"{v}+1={v + 1}" for v in text], "correct": correct, "reward": reward,
        }
    ).sample(fraction=1.0, shuffle=True, seed=1)  # input order must not matter
    out = sample_metrics(df, ks=[1, 3, 8], ss=[1, 2, 3])
    got = {(r["name"], r["k"], r["s"]): r["value"] for r in out.iter_rows(named=True)}
    for k in (1, 3, 8):
        for s in (1, 2, 3):
            if s > k:
                assert ("pass@k-s", k, s) not in got
                continue
            p = r = 0.0
            for qi in range(n_q):
                m = q == qi
                groups = np.unique(text[m & correct], return_counts=True)[1]
                p += pass_at_k_s(n, groups, k, s)
                r += reward_at_k_s(reward[m], correct[m], k, s, sample_idx=idx[m])
            assert got[("pass@k-s", k, s)] == pytest.approx(p / n_q, abs=1e-12)
            assert got[("reward@k-s", k, s)] == pytest.approx(r / n_q, abs=1e-12)
        c = np.array([correct[q == qi].sum() for qi in range(n_q)])
        assert got[("pass@k", k, None)] == pytest.approx(np.mean([pass_at_k(n, ci, k) for ci in c]))


def test_sample_metrics_errors_and_empty():
    with pytest.raises(ValueError, match="reward"):
        sample_metrics(sampled_frame().drop("reward"), [1], [1])
    with pytest.raises(ValueError):
        sample_metrics(sampled_frame(), [0], [1])
    assert sample_metrics(sampled_frame().head(0), [1], [1]).height == 0


def test_greedy_pass_at_1():
    df = pl.DataFrame(
        {"split": ["test", "test", "test", "dev"], "query_id": [1, 2, 3, 1],
         "correct": [True, False, True, None]}
    )
    out = greedy_pass_at_1(df)
    assert out.rows() == [("dev", "greedy_pass@1", 1, None, 0.0), ("test", "greedy_pass@1", 1, None, 2 / 3)]


def test_large_n_limits():
    # pass@k has no binomials: any n works
    assert pass_at_k(5000, 1, 1) == pytest.approx(1 / 5000)
    assert pass_at_k_s(1000, [1] * 10, 500, 1) == pytest.approx(pass_at_k(1000, 10, 500), abs=1e-12)
    with pytest.raises(ValueError, match="1000"):
        pass_at_k_s(1001, [1], 1, 1)
