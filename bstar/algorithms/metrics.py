"""Evaluation metrics (DESIGN.md §1): Pass@k, Pass@K-S, Reward@K-S, equation diversity, accuracy.

Usage::

    from bstar.algorithms import sample_metrics, greedy_pass_at_1, pass_at_k, pass_at_k_s
    rows = sample_metrics(scored, ks=[1, 4, 8, 16], ss=[1, 2, 4])   # split, name, k, s, value
    greedy = greedy_pass_at_1(greedy_scored)                        # split, name, k, s, value

Estimators. Every "@K" metric is the expectation over a uniformly random K-subset of the n samples
of a query (n >= K), which is unbiased for "draw exactly K samples"; with n == K it is the plain
indicator on the K samples.

* ``pass@k``: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), product form.
* ``pass@k-s`` (Pass@K-S): probability that the K-subset contains >= S *distinct* correct responses
  (texts compared after stripping surrounding whitespace). Exact: a dynamic program over the
  groups of identical correct responses counts the K-subsets by how many groups they hit.
* ``reward@k-s`` (Reward@K-S): probability that the S best samples of the K-subset, ranked by reward
  (higher first, ties by lower ``sample_idx``, null reward last), are all correct. S=1 is Best-of-K.
  Exact: the samples are put in that rank order once; a subset succeeds iff its first incorrect
  member (in rank order) comes after >= S correct members of the subset, which is counted in closed
  form per incorrect position.
* ``diversity``: distinct equations among correct responses (Wu et al. 2024), per query unique /
  all, averaged over queries that have any equation.

Counts are float64 binomials (exact up to 2**53, relative error ~1e-16 beyond); n is limited to
1000 samples per query so that C(n, k) stays finite.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
import polars as pl

from .balance import response_key

__all__ = [
    "METRIC_SCHEMA",
    "distinct_equation_ratio",
    "equations_expr",
    "extract_equations",
    "greedy_pass_at_1",
    "pass_at_k",
    "pass_at_k_array",
    "pass_at_k_s",
    "reward_at_k_s",
    "sample_metrics",
]

METRIC_SCHEMA = {
    "split": pl.String,
    "name": pl.String,
    "k": pl.Int64,
    "s": pl.Int64,
    "value": pl.Float64,
}
_MAX_N = 1000


# ---------------------------------------------------------------------------------------- pass@k
def _check_nck(n: int, c: int, k: int) -> None:
    if n < 0 or c < 0 or c > n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k from n samples with c correct: ``1 - C(n-c, k) / C(n, k)``.

    Product form ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (no large binomials). Raises ValueError
    when k > n (or k < 1, or c outside [0, n]).
    """
    n, c, k = int(n), int(c), int(k)
    _check_nck(n, c, k)
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_array(n, c, k) -> np.ndarray:
    """Vectorised :func:`pass_at_k` over broadcast arrays of n, c, k (same values, same errors)."""
    n, c, k = np.broadcast_arrays(
        np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64), np.asarray(k, dtype=np.int64)
    )
    if n.size == 0:
        return np.zeros(n.shape)
    triples = np.stack([n.ravel(), c.ravel(), k.ravel()], axis=1)
    # n, c, k are small integers: few distinct triples, each computed once
    unique, inverse = np.unique(triples, axis=0, return_inverse=True)
    values = np.array([pass_at_k(*t) for t in unique.tolist()])
    return values[inverse.ravel()].reshape(n.shape)


# ------------------------------------------------------------------------------- binomial table
@lru_cache(maxsize=8)
def _comb_table(n_max: int) -> np.ndarray:
    """float64 table ``T[a, b] = C(a, b)`` for 0 <= a, b <= n_max (0 where b > a)."""
    if n_max > _MAX_N:
        raise ValueError(f"at most {_MAX_N} samples per query are supported, got {n_max}")
    table = np.zeros((n_max + 1, n_max + 1))
    row = [1]
    for a in range(n_max + 1):
        table[a, : a + 1] = [float(x) for x in row]  # exact ints, rounded once
        row = [1] + [row[i] + row[i + 1] for i in range(len(row) - 1)] + [1]
    return table


def _comb(n_max: int) -> np.ndarray:
    # share one table between calls with slightly different n
    size = 64
    while size < n_max:
        size *= 2
    return _comb_table(min(size, _MAX_N) if n_max <= _MAX_N else n_max)


# ------------------------------------------------------------------------------------ Pass@K-S
@lru_cache(maxsize=4096)
def _distinct_hits(n: int, groups: tuple[int, ...], k_max: int, s_max: int) -> np.ndarray:
    """``out[K, h]`` = number of K-subsets (K <= k_max) of the n samples hitting h groups of
    identical correct responses (h capped at s_max: the last column is ">= s_max")."""
    comb = _comb(n)
    dp = np.zeros((k_max + 1, s_max + 1))
    dp[0, 0] = 1.0
    for m in groups:
        new = dp.copy()  # subsets taking nothing from this group
        for a in range(1, min(m, k_max) + 1):  # taking a >= 1 copies of it: one more group hit
            src = comb[m, a] * dp[: k_max + 1 - a]
            new[a:, 1:] += src[:, :-1]
            new[a:, s_max] += src[:, s_max]
        dp = new
    wrong = n - sum(groups)
    new = dp.copy()
    for a in range(1, min(wrong, k_max) + 1):  # incorrect samples hit no group
        new[a:] += comb[wrong, a] * dp[: k_max + 1 - a]
    return new


def _groups(correct_counts: Iterable[int], n: int) -> tuple[int, ...]:
    groups = tuple(sorted(int(m) for m in correct_counts if int(m) > 0))
    if sum(groups) > n:
        raise ValueError(f"correct copies ({sum(groups)}) exceed the number of samples n={n}")
    return groups


def pass_at_k_s(n: int, correct_counts: Sequence[int], k: int, s: int) -> float:
    """Pass@K-S: probability that K samples drawn without replacement from the n contain at least
    S distinct correct responses.

    ``correct_counts`` lists, for each distinct correct response, how many of the n samples are
    copies of it (e.g. samples ``[A, A, B, wrong]`` -> ``n=4, correct_counts=[2, 1]``).
    With S=1 this equals :func:`pass_at_k` with c = sum(correct_counts).
    """
    n, k, s = int(n), int(k), int(s)
    groups = _groups(correct_counts, n)
    _check_nck(n, sum(groups), k)
    if not 1 <= s <= k:
        raise ValueError(f"need 1 <= s <= k, got s={s}, k={k}")
    if len(groups) < s:
        return 0.0
    table = _distinct_hits(n, groups, k, s)
    return float(table[k, s:].sum() / _comb(n)[n, k])


# ----------------------------------------------------------------------------------- Reward@K-S
@lru_cache(maxsize=4096)
def _top_s_all_correct(labels: bytes, k: int) -> np.ndarray:
    """``out[S]`` (0 <= S <= k) = number of K-subsets whose S best-ranked members are all correct;
    ``labels`` are the correctness flags in rank order (best first)."""
    flags = np.frombuffer(labels, dtype=np.bool_)
    n = len(flags)
    comb = _comb(n)
    out = np.full(k + 1, comb[int(flags.sum()), k])  # subsets with no incorrect member
    bad = np.flatnonzero(~flags)
    if len(bad):
        good_before = bad - np.arange(len(bad))
        after = n - 1 - bad
        j = np.arange(k)  # correct members ranked before the first incorrect member
        ways = comb[good_before[:, None], j[None, :]] * comb[after[:, None], (k - 1 - j)[None, :]]
        per_j = ways.sum(axis=0)
        out[:k] += np.cumsum(per_j[::-1])[::-1]  # success needs j >= S
    return out


def _rank_labels(rewards, correct, sample_idx) -> np.ndarray:
    rewards = np.asarray(rewards, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.bool_)
    idx = np.arange(len(rewards)) if sample_idx is None else np.asarray(sample_idx)
    # higher reward first, NaN (null) last, then lower sample index
    order = np.lexsort((idx, np.where(np.isnan(rewards), np.inf, -rewards)))
    return correct[order]


def reward_at_k_s(rewards, correct, k: int, s: int, sample_idx=None) -> float:
    """Reward@K-S for one query: probability that, for K samples drawn without replacement from the
    n given, the S highest-reward ones (ties: lower ``sample_idx`` first, NaN reward last) are all
    correct. ``sample_idx`` defaults to the position in the arrays. S=1 is Best-of-K.
    """
    labels = _rank_labels(rewards, correct, sample_idx)
    n, k, s = len(labels), int(k), int(s)
    _check_nck(n, int(labels.sum()), k)
    if not 1 <= s <= k:
        raise ValueError(f"need 1 <= s <= k, got s={s}, k={k}")
    return float(_top_s_all_correct(labels.tobytes(), k)[s] / _comb(n)[n, k])


# ------------------------------------------------------------------------------------ diversity
# GSM8K calculator notes: <<48/2=24>>. When a response has notes, only the notes are read (the
# surrounding "48/2 = <<48/2=24>>24" would otherwise count the same equation twice).
_NOTE = r"<<[^<>]*=[^<>]*>>"
# An expression with at least one operator, "=", one result term: 23+45=68, a*b=c, 1,000*3 = 3,000.
_TERM = r"[\w.,$%()]+"
_EQUATION = rf"{_TERM}(?:\s*[-+*/×÷^]\s*{_TERM})+\s*=\s*-?{_TERM}"


def equations_expr(column: str = "response") -> pl.Expr:
    """List of normalised equations in each response (whitespace removed, trailing ".," dropped)."""
    text = pl.col(column)
    found = (
        pl.when(text.str.contains("<<", literal=True))
        .then(text.str.extract_all(_NOTE))
        .otherwise(text.str.extract_all(_EQUATION))
    )
    return found.list.eval(
        pl.element().str.replace_all(r"[\s<>]", "").str.strip_chars_end(".,")
    )


def extract_equations(response: str) -> list[str]:
    """The normalised equations :func:`distinct_equation_ratio` sees in one response."""
    frame = pl.DataFrame({"response": [response]}, schema={"response": pl.String})
    return frame.select(equations_expr())["response"][0].to_list()


def distinct_equation_ratio(responses: Iterable[str]) -> float | None:
    """Unique equations / all equations over the (correct) responses of one query; None if none."""
    frame = pl.DataFrame({"response": list(responses)}, schema={"response": pl.String})
    eqs = frame.select(equations_expr().alias("eq")).explode("eq").drop_nulls()
    if eqs.height == 0:
        return None
    return eqs["eq"].n_unique() / eqs.height


# -------------------------------------------------------------------------------- frame metrics
def _empty_metrics() -> pl.DataFrame:
    return pl.DataFrame(schema=METRIC_SCHEMA)


def sample_metrics(scored: pl.DataFrame, ks: Sequence[int], ss: Sequence[int]) -> pl.DataFrame:
    """Sampled-decoding metrics per split, as rows ``split, name, k, s, value``.

    ``scored``: one row per sample with ``split, query_id, sample_idx, response, correct, reward``.
    Rows produced for each split (n = the smallest number of samples of any query in the split):

    * ``accuracy`` (k, s null): mean of ``correct`` over all samples;
    * ``pass@k`` (s null) for each k in ``ks`` with k <= n;
    * ``pass@k-s`` and ``reward@k-s`` for each K in ``ks``, S in ``ss`` with S <= K <= n;
    * ``<name>_se`` beside each Pass@k / Pass@K-S / Reward@K-S row: its standard error over
      queries (sample standard deviation / sqrt(number of queries));
    * ``diversity`` (k, s null): mean over queries with at least one equation in a correct
      response of unique/all equations; no row when no query has one.

    Values are means over queries; null ``correct`` counts as incorrect.
    """
    needed = ("split", "query_id", "sample_idx", "response", "correct", "reward")
    missing = [c for c in needed if c not in scored.columns]
    if missing:
        raise ValueError(f"sample_metrics: missing column(s) {missing}; got {scored.columns}")
    if any(int(k) < 1 for k in ks) or any(int(s) < 1 for s in ss):
        raise ValueError(f"ks and ss must be >= 1, got ks={list(ks)}, ss={list(ss)}")
    ks = sorted({int(k) for k in ks})
    ss = sorted({int(s) for s in ss})
    if scored.height == 0:
        return _empty_metrics()

    reward = pl.col("reward").cast(pl.Float64)
    base = scored.lazy().select(
        pl.col("split").cast(pl.String),
        "query_id",
        "sample_idx",
        "response",
        response_key().alias("key"),
        pl.col("correct").cast(pl.Boolean).fill_null(False),
        pl.when(reward.is_nan()).then(None).otherwise(reward).alias("reward"),
    )
    per_query = base.group_by("split", "query_id").agg(
        pl.len().alias("n"), pl.col("correct").sum().alias("c")
    )
    groups = (
        base.filter("correct")
        .group_by("split", "query_id", "key")
        .agg(pl.len().alias("m"))
        .group_by("split", "query_id")
        .agg(pl.col("m").sort())
    )
    ranked = (
        base.sort(
            ["split", "query_id", "reward", "sample_idx"],
            descending=[False, False, True, False],
            nulls_last=True,
        )
        .group_by("split", "query_id", maintain_order=True)
        .agg(pl.col("correct").alias("labels"))
    )
    queries = (
        per_query.join(groups, on=["split", "query_id"], how="left", nulls_equal=True)
        .join(ranked, on=["split", "query_id"], how="left", nulls_equal=True)
        .sort("split", "query_id")
        .collect()
    )
    accuracy = base.group_by("split").agg(pl.col("correct").mean()).collect()
    diversity = (
        base.filter("correct")
        .select("split", "query_id", equations_expr().alias("eq"))
        .explode("eq")
        .drop_nulls("eq")
        .group_by("split", "query_id")
        .agg((pl.col("eq").n_unique() / pl.len()).alias("ratio"))
        .group_by("split")
        .agg(pl.col("ratio").mean())
        .collect()
    )

    rows: list[tuple] = []
    for split in sorted(queries["split"].unique().to_list(), key=lambda x: (x is None, x)):
        q = queries.filter(pl.col("split").eq_missing(split))
        n = q["n"].to_numpy()
        c = q["c"].to_numpy()
        n_min = int(n.min())
        acc = accuracy.filter(pl.col("split").eq_missing(split))["correct"][0]
        rows.append((split, "accuracy", None, None, float(acc)))
        valid_k = [k for k in ks if k <= n_min]
        for k in valid_k:
            rows.extend(_mean_and_se(split, "pass@k", k, None, pass_at_k_array(n, c, k)))
        pairs = [(k, s) for k in valid_k for s in ss if s <= k]
        if pairs:
            rows.extend(_subset_metrics(split, q, pairs))
        div = diversity.filter(pl.col("split").eq_missing(split))
        if div.height and div["ratio"][0] is not None:
            rows.append((split, "diversity", None, None, float(div["ratio"][0])))
    return pl.DataFrame(rows, schema=METRIC_SCHEMA, orient="row")


def _subset_metrics(split, q: pl.DataFrame, pairs: list[tuple[int, int]]) -> list[tuple]:
    """Pass@K-S and Reward@K-S rows: per-query exact combinatorics, averaged over queries."""
    k_max = max(k for k, _ in pairs)
    s_max = max(s for _, s in pairs)
    ks = sorted({k for k, _ in pairs})
    pass_q = np.zeros((len(pairs), q.height))
    reward_q = np.zeros((len(pairs), q.height))
    for i, (n, group_list, labels) in enumerate(q.select("n", "m", "labels").iter_rows()):
        comb = _comb(n)
        groups = _groups(group_list or (), n)
        hits = _distinct_hits(n, groups, k_max, s_max) if groups else None
        flags = np.asarray(labels, dtype=np.bool_).tobytes()
        top = {k: _top_s_all_correct(flags, k) for k in ks}
        for j, (k, s) in enumerate(pairs):
            total = comb[n, k]
            if hits is not None:
                pass_q[j, i] = hits[k, s:].sum() / total
            reward_q[j, i] = top[k][s] / total
    rows = []
    for name, values in (("pass@k-s", pass_q), ("reward@k-s", reward_q)):
        for j, (k, s) in enumerate(pairs):
            rows.extend(_mean_and_se(split, name, k, s, values[j]))
    return rows


def _mean_and_se(split, name: str, k, s, per_query: np.ndarray) -> list[tuple]:
    """The mean over queries and its standard error (`<name>_se`: sample std / sqrt(queries))."""
    n = per_query.size
    se = float(per_query.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return [(split, name, k, s, float(per_query.mean())), (split, f"{name}_se", k, s, se)]


def greedy_pass_at_1(frame: pl.DataFrame) -> pl.DataFrame:
    """Greedy Pass@1 per split: mean over queries of ``correct`` of the greedy response(s).

    ``frame``: ``split, query_id, correct`` (one row per query; several rows per query are averaged
    within the query first). Returns rows ``split, name="greedy_pass@1", k=1, s=null, value``.
    """
    missing = [c for c in ("split", "query_id", "correct") if c not in frame.columns]
    if missing:
        raise ValueError(f"greedy_pass_at_1: missing column(s) {missing}; got {frame.columns}")
    if frame.height == 0:
        return _empty_metrics()
    return (
        frame.lazy()
        .group_by("split", "query_id")
        .agg(pl.col("correct").cast(pl.Boolean).fill_null(False).mean())
        .group_by("split")
        .agg(pl.col("correct").mean().alias("value"))
        .select(
            pl.col("split").cast(pl.String),
            pl.lit("greedy_pass@1").alias("name"),
            pl.lit(1, dtype=pl.Int64).alias("k"),
            pl.lit(None, dtype=pl.Int64).alias("s"),
            pl.col("value").cast(pl.Float64),
        )
        .sort("split")
        .collect()
    )
