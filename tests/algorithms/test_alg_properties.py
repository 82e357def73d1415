"""Property tests (hypothesis): balance_grid, Pass@K-S and Reward@K-S against straightforward
definitions."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import polars as pl
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bstar.algorithms import (  # noqa: E402
    balance_grid,
    pass_at_k_s,
    reward_at_k_s,
    sample_metrics,
    select_training_data,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works under any pytest import mode
from test_alg_balance import reference_grid  # noqa: E402
from test_alg_metrics import brute_reward_at_k_s  # noqa: E402

candidate = st.tuples(
    st.integers(0, 3),                                   # query_id
    st.sampled_from([0.2, 0.9]),                         # temperature
    st.sampled_from(["a", "b", "c"]),                    # text
    st.sampled_from(["", " ", "\n", "\t"]),              # surrounding whitespace
    st.booleans(),                                       # correct
    st.one_of(st.none(), st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5])),  # reward
)


def to_frame(rows):
    return pl.DataFrame(
        [(q, t, f"{w}{text}{w}", ok, r) for q, t, text, w, ok, r in rows],
        schema={
            "query_id": pl.Int64, "temperature": pl.Float64, "response": pl.String,
            "correct": pl.Boolean, "reward": pl.Float64,
        },
        orient="row",
    )


@settings(max_examples=80, deadline=None)
@given(st.lists(candidate, min_size=1, max_size=25), st.integers(1, 4))
def test_balance_grid_equals_reference(rows, nstar):
    scored = to_frame(rows)
    thresholds = [-1.0, -0.5, 0.0, 0.25, 0.5, 1.0]
    grid = balance_grid(scored, thresholds, nstar)
    ref = reference_grid(scored, thresholds, nstar)
    assert grid.height == len(ref)
    for row in grid.iter_rows(named=True):
        score, n_sel, n_cor, n_q = ref[(row["temperature"], row["threshold"])]
        assert (row["n_selected"], row["n_unique_correct"], row["n_queries"]) == (n_sel, n_cor, n_q)
        assert row["balance_score"] == pytest.approx(score, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(candidate, min_size=1, max_size=25), st.sampled_from([-1.0, 0.0, 0.5]))
def test_selection_keeps_one_row_per_selected_text(rows, threshold):
    scored = to_frame(rows).with_row_index("sample_idx")
    kept = select_training_data(scored, threshold)
    expected = {
        (q, text) for q, _, text, _, _, r in rows if r is not None and r > threshold
    }
    got = [(q, resp.strip()) for q, resp in kept.select("query_id", "response").iter_rows()]
    assert sorted(got) == sorted(expected)
    assert (kept["reward"] > threshold).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["A", "B", "C", "x", "y"]), min_size=1, max_size=8), st.data())
def test_pass_at_k_s_equals_subset_enumeration(texts, data):
    n = len(texts)
    k = data.draw(st.integers(1, n))
    s = data.draw(st.integers(1, k))
    correct = [t.isupper() for t in texts]
    counts = [texts.count(t) for t in sorted(set(texts)) if t.isupper()]
    subsets = list(itertools.combinations(range(n), k))
    want = sum(len({texts[i] for i in sub if correct[i]}) >= s for sub in subsets) / len(subsets)
    assert pass_at_k_s(n, counts, k, s) == pytest.approx(want, abs=1e-12)


sample = st.tuples(
    st.sampled_from(["A", "B", "C", "x", "y"]),          # text: upper case is correct
    st.sampled_from(["", " ", "\n"]),                     # surrounding whitespace
    st.one_of(st.just(float("nan")), st.sampled_from([-1.0, 0.0, 0.5, 1.0])),  # reward, ties
)


@settings(max_examples=80, deadline=None)
@given(st.lists(sample, min_size=1, max_size=8), st.data())
def test_reward_at_k_s_equals_subset_enumeration(samples, data):
    n = len(samples)
    k = data.draw(st.integers(1, n))
    s = data.draw(st.integers(1, k))
    texts = [f"{w}{t}{w}" for t, w, _ in samples]
    rewards = [r for _, _, r in samples]
    correct = [t.isupper() for t, _, _ in samples]
    want = brute_reward_at_k_s(rewards, correct, k, s, texts)
    assert reward_at_k_s(rewards, correct, k, s, responses=texts) == pytest.approx(want, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(sample, min_size=6, max_size=10), min_size=1, max_size=5))
def test_reward_equals_pass_at_k_s_under_answer_only_reward(queries):
    rows = [
        (q, i, f"{w}{t}{w}", t.isupper(), 1.0 if t.isupper() else 0.0)
        for q, samples in enumerate(queries)
        for i, (t, w, _) in enumerate(samples)
    ]
    scored = pl.DataFrame(
        rows,
        schema={"query_id": pl.Int64, "sample_idx": pl.Int64, "response": pl.String,
                "correct": pl.Boolean, "reward": pl.Float64},
        orient="row",
    ).with_columns(pl.lit("test").alias("split"))
    out = sample_metrics(scored, ks=[1, 2, 3, 6], ss=[1, 2, 3])
    got = {(r["name"], r["k"], r["s"]): r["value"] for r in out.iter_rows(named=True)}
    for (name, k, s), value in got.items():
        if name.startswith("pass@k-s"):
            assert got[(name.replace("pass", "reward"), k, s)] == pytest.approx(value, abs=1e-12)
