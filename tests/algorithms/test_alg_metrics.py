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


def brute_reward_at_k_s(rewards, correct, k, s, texts=None, sample_idx=None):
    """Fraction of k-subsets whose s best distinct texts are all correct, straight from the
    definition: per text (surrounding whitespace stripped) its best reward over all samples (NaN
    last), ties by its smallest sample_idx; correct if any copy is; < s distinct texts: fail."""
    n = len(rewards)
    texts = list(range(n)) if texts is None else [t.strip() for t in texts]
    idx = list(range(n)) if sample_idx is None else list(sample_idx)
    best, first, ok = {}, {}, {}
    for t, r, i, c in zip(texts, rewards, idx, correct):
        if not math.isnan(r):
            best[t] = max(best.get(t, -math.inf), r)
        first[t] = min(first.get(t, math.inf), i)
        ok[t] = ok.get(t, False) or bool(c)

    def rank_key(t):
        return (0, -best[t], first[t]) if t in best else (1, 0.0, first[t])

    subsets = list(itertools.combinations(range(n), k))
    hit = 0
    for sub in subsets:
        top = sorted({texts[i] for i in sub}, key=rank_key)[:s]
        hit += len(top) == s and all(ok[t] for t in top)
    return hit / len(subsets)


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
    with pytest.raises(ValueError):
        reward_at_k_s([0.1, 0.2], [True, True], 1, 1, responses=["a"])


def test_reward_at_k_s_counts_distinct_responses():
    # A (correct, 1.0) twice, B (wrong, 0.5), C (correct, 0.9): the top 2 distinct are A, C.
    texts = ["A", " A\n", "B", "C"]  # surrounding whitespace does not make a new response
    rewards = [1.0, 1.0, 0.5, 0.9]
    assert reward_at_k_s(rewards, [True, True, False, True], 4, 2, responses=texts) == 1.0
    # with C wrong the top 2 distinct are A, C -> 0 (per sample, A's copies fill the top 2 -> 1)
    assert reward_at_k_s(rewards, [True, True, False, False], 4, 2, responses=texts) == 0.0
    assert reward_at_k_s(rewards, [True, True, False, False], 4, 2) == 1.0  # responses=None
    # K=3: of the 4 subsets only {A, A, B} fails (its 2 distinct are A, B); per sample none does
    assert reward_at_k_s(rewards, [True, True, False, True], 3, 2, responses=texts) == 0.75
    assert reward_at_k_s(rewards, [True, True, False, True], 3, 2) == 1.0
    # fewer than S distinct responses fail
    assert reward_at_k_s([1.0, 1.0], [True, True], 2, 2, responses=["A", "A"]) == 0.0
    # a text ranks by its best copy over the query, ties by its smallest sample_idx: A (idx 0, 2)
    # ties B (idx 1) at 0.5 and ranks first in every pair, also in {A2, B}
    assert reward_at_k_s([0.5] * 3, [False, True, False], 2, 1, responses=["A", "B", "A"]) == 0.0
    # sample_idx 5, 1, 9: now B ranks first; pairs {A, B} succeed, {A, A} does not -> 2/3
    assert reward_at_k_s(
        [0.5] * 3, [False, True, False], 2, 1, responses=["A", "B", "A"], sample_idx=[5, 1, 9]
    ) == pytest.approx(2 / 3)
    # NaN copies do not lower a text's rank; a text with only NaN copies ranks last
    nan = float("nan")
    assert reward_at_k_s([nan, 0.2, 0.3], [True, True, False], 3, 1, responses="AAB") == 0.0
    assert reward_at_k_s([nan, nan, 0.3], [True, True, False], 3, 1, responses="AAB") == 0.0
    assert reward_at_k_s([nan, nan, 0.3], [False, False, True], 3, 1, responses="AAB") == 1.0


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


def test_reward_at_k_s_distinct_matches_brute_force():
    rng = np.random.default_rng(11)
    for _ in range(120):
        n = int(rng.integers(1, 10))
        texts = [f"{rng.choice(['', ' '])}t{v}" for v in rng.integers(0, 4, n)]  # duplicates
        rewards = np.round(rng.uniform(-1, 1, n), 1)  # one decimal: ties happen
        rewards[rng.random(n) < 0.15] = np.nan
        if rng.random() < 0.5:  # mostly rewards and correctness are functions of the text...
            by_text = {t: (round(float(rng.uniform(-1, 1)), 1), rng.random() < 0.6) for t in texts}
            rewards = np.array([by_text[t.strip()][0] if t.strip() in by_text else r
                                for t, r in zip(texts, rewards)])
            correct = np.array([rng.random() < 0.6 for _ in texts])
            per_text = {t.strip(): c for t, c in zip(texts, correct)}
            correct = np.array([per_text[t.strip()] for t in texts])
        else:  # ...but copies may disagree (a verifier timeout, a noisy reward)
            correct = rng.random(n) < 0.6
        idx = rng.permutation(20)[:n]
        for k in range(1, n + 1):
            for s in range(1, k + 1):
                got = reward_at_k_s(rewards, correct, k, s, sample_idx=idx, responses=texts)
                want = brute_reward_at_k_s(list(rewards), list(correct), k, s, texts, idx)
                assert got == pytest.approx(want, abs=1e-12), (texts, rewards, correct, k, s)


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


def test_extract_equations_latex():
    assert extract_equations("so $2x=4$, hence x = 2") == ["2x=4"]  # implicit product in math
    assert extract_equations(r"\[\frac12+\frac13=\frac56\]") == [r"\frac12+\frac13=\frac56"]
    assert extract_equations(r"Adding, \(3+4=7\).") == ["3+4=7"]
    assert extract_equations("Pythagoras: $$a^2 + b^2 = c^2$$") == ["a^2+b^2=c^2"]
    assert extract_equations("$$\n  a^2 + b^2\n  = c^2.\n$$") == ["a^2+b^2=c^2"]  # across lines
    # chains give their neighbouring pairs; "\\ &=" continues one
    assert sorted(extract_equations(r"\[ x = 10 - 4 = 6 \]")) == ["10-4=6", "x=10-4"]
    aligned = r"\begin{align*} a &= b + c \\ &= d \end{align*}"
    assert sorted(extract_equations(aligned)) == ["a=b+c", "b+c=d"]
    assert extract_equations(r"\[\begin{aligned} 2x+3 &= 7 \\ x &= 2 \end{aligned}\]") == [
        "2x+3=7", "x=2"
    ]
    # normalisation: whitespace, \left/\right, spacing commands, \dfrac; separators ", " and ";"
    assert extract_equations(r"$\left( 1+2 \right) \cdot 3 = 9$") == [r"(1+2)\cdot3=9"]
    assert extract_equations(r"$\dfrac{1}{2}\,+\,\tfrac13 = \frac{5}{6}$") == [
        r"\frac{1}{2}+\frac13=\frac{5}{6}"
    ]
    assert extract_equations("$x = 2, y = 3$ and $z=1$; $a==b$") == ["x=2", "y=3", "z=1"]
    assert extract_equations(r"$3 \times \$5 = \$15$") == [r"3\times\$5=\$15"]  # escaped dollars
    # calculator notes and LaTeX in one response: both are read
    assert extract_equations("$2x=48$, so x = <<48/2=24>>24.") == ["2x=48", "48/2=24"]


def test_extract_equations_no_double_counting():
    # prose before the math is read by the plain rule, the math only as math
    mixed = r"First 2+3=5, then $5\times 2 = 10$ and \[ 10 - 4 = 6. \]"
    assert sorted(extract_equations(mixed)) == sorted(["2+3=5", r"5\times2=10", "10-4=6"])
    # "$2+3=5$ = 5" must not become the plain equation "$2+3=5$=5" too
    assert extract_equations("so $2+3=5$ = 5") == ["2+3=5"]
    # the same equation written twice is two occurrences, not a double count
    assert extract_equations("$2+3=5$ and again 2+3=5") == ["2+3=5", "2+3=5"]


def test_extract_equations_dollar_amounts_are_not_math():
    assert extract_equations("It costs $5 and $6") == []
    assert extract_equations("He paid $5 + $6 = $11 for both.") == ["$5+$6=$11"]  # plain rule
    assert extract_equations("Shirts are $5 each and hats $6 = a bargain at $11") == []
    assert extract_equations("$10 - $2 = $8 left, and $3 more") == ["$10-$2=$8"]
    assert extract_equations("$10-$2=$8") == ["$10-$2=$8"]
    assert extract_equations("It costs 5$, and 2*5 = 10$.") == ["2*5=10$"]  # postfix prices
    assert extract_equations("Pay $5, x=3 and y = 4, so $9 in all") == []  # prose between prices
    # GSM8K money + notes: "$<<...>>" must not open math that swallows the notes
    gsm = "He earns $10*8 = $<<10*8=80>>80, $<<80+5=85>>85, and $<<2*2=4>>4 tips."
    assert extract_equations(gsm) == ["10*8=80", "80+5=85", "2*2=4"]
    # a price before real inline math on the same line
    assert extract_equations("It costs $5, so $x=5$ and $6 more.") == ["x=5"]
    assert extract_equations("$x=5$5") == []  # a digit after the closing "$": a price
    assert extract_equations("Let $x =\n 8$ be") == []  # inline math is on one line


def test_distinct_equation_ratio():
    assert distinct_equation_ratio(["2+2=4; 4*3=12", "2 + 2 = 4 then 4*3=12", "1+1=2"]) == 3 / 5
    assert distinct_equation_ratio(["2+2=4", "2+2=4"]) == 0.5
    assert distinct_equation_ratio(["no equations", "answer 4"]) is None
    assert distinct_equation_ratio([]) is None
    # LaTeX counts, with the same spelling as in text after normalisation: 2+2=4 x3, x=4 x1
    latex = ["$2 + 2 = 4$", r"\(2+2=4\)", "2+2=4", "$x=4$", "costs $4 and $5"]
    assert distinct_equation_ratio(latex) == 2 / 4
    assert distinct_equation_ratio(["$5 and $6", "$7"]) is None


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
    # Reward@4-2 ranks distinct texts: q1 "2+2=4" (1.5; its copy " 2+2=4" at 1.2 is the same
    # response), then "2-2=0" (0.9, wrong) -> 0; q2 -> 0. (The old per-sample value was 0.5: the
    # two copies of 2+2=4 filled q1's top two.)
    assert t("reward@k-s", 4, 2) == 0.0
    # Reward@2-2, q1 ranks A=2+2=4 (2 copies), W=2-2=0, B=2*2=4: of the 6 pairs only {A, B} x2
    # succeed ({A, A} has one distinct text) -> 2/6; q2 -> 0. (Per sample: 3/6, mean 0.25.)
    assert t("reward@k-s", 2, 2) == pytest.approx((2 / 6 + 0) / 2)
    # Reward@2-1: q1 fails only {W, B} -> 5/6; q2 ranks 9 (0.7, wrong), nothing (0.5, wrong),
    # 3+3=6 (best copy 0.4; the null copy does not demote it): only {3+3=6 x2} -> 1/6
    assert t("reward@k-s", 2, 1) == pytest.approx((5 / 6 + 1 / 6) / 2)
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
    reward[rng.random(n_q * n) < 0.1] = np.nan
    # few texts per query, so duplicates (ranked once, by their best copy) are the common case
    responses = np.array([f"{v}+1={v + 1}" for v in text], dtype=object)
    df = pl.DataFrame(
        {
            "split": "test", "query_id": q, "sample_idx": idx,
            "response": responses, "correct": correct, "reward": reward,
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
                r += reward_at_k_s(
                    reward[m], correct[m], k, s, sample_idx=idx[m], responses=responses[m]
                )
            assert got[("pass@k-s", k, s)] == pytest.approx(p / n_q, abs=1e-12)
            assert got[("reward@k-s", k, s)] == pytest.approx(r / n_q, abs=1e-12)
        c = np.array([correct[q == qi].sum() for qi in range(n_q)])
        assert got[("pass@k", k, None)] == pytest.approx(np.mean([pass_at_k(n, ci, k) for ci in c]))


def test_reward_equals_pass_at_k_s_under_answer_only_reward():
    # B-STaR: with reward = 1[correct] (and correctness a function of the text) every correct text
    # outranks every wrong one, so "top S distinct all correct" is ">= S distinct correct".
    rng = np.random.default_rng(5)
    rows = []
    for qi in range(40):
        n = int(rng.integers(8, 13))
        alphabet = int(rng.integers(1, 6))
        right = rng.random(alphabet) < 0.5
        for i, v in enumerate(rng.integers(0, alphabet, n)):
            text = f"{rng.choice(['', ' ', chr(10)])}answer {v}"
            rows.append(("test", qi, int(i), text, bool(right[v]), 1.0 if right[v] else 0.0))
    df = pl.DataFrame(
        rows,
        schema={"split": pl.String, "query_id": pl.Int64, "sample_idx": pl.Int64,
                "response": pl.String, "correct": pl.Boolean, "reward": pl.Float64},
        orient="row",
    ).sample(fraction=1.0, shuffle=True, seed=2)
    out = sample_metrics(df, ks=[1, 2, 3, 5, 8], ss=[1, 2, 3, 4, 6])
    by = {(r["name"], r["k"], r["s"]): r["value"] for r in out.iter_rows(named=True)}
    pairs = [(k, s) for k in (1, 2, 3, 5, 8) for s in (1, 2, 3, 4, 6) if s <= k]
    for name in ("", "_se"):
        for k, s in pairs:
            assert by[(f"reward@k-s{name}", k, s)] == pytest.approx(
                by[(f"pass@k-s{name}", k, s)], abs=1e-12
            ), (name, k, s)
    assert by[("pass@k-s", 8, 2)] not in (0.0, 1.0)  # the data exercise the duplicates


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
