"""Evaluation metrics (DESIGN.md §1): Pass@k, Pass@K-S, Reward@K-S, equation diversity, accuracy.

Usage::

    from bstar.algorithms import sample_metrics, greedy_pass_at_1, pass_at_k, pass_at_k_s
    rows = sample_metrics(scored, ks=[1, 4, 8, 16], ss=[1, 2, 4])   # split, name, k, s, value
    greedy = greedy_pass_at_1(greedy_scored)                        # split, name, k, s, value

Estimators. Every "@K" metric is the expectation over a uniformly random K-subset of the n samples
of a query (n >= K), which is unbiased for "draw exactly K samples"; with n == K it is the plain
indicator on the K samples. "Distinct" always means response texts compared after stripping
surrounding whitespace (:func:`~bstar.algorithms.balance.response_key`).

* ``pass@k``: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), product form.
* ``pass@k-s`` (Pass@K-S): probability that the K-subset contains >= S *distinct* correct responses.
  Exact: a dynamic program over the groups of identical correct responses counts the K-subsets by
  how many groups they hit.
* ``reward@k-s`` (Reward@K-S, B-STaR paper): probability that the S best *distinct* responses of
  the K-subset, ranked by reward, are all correct; a subset with fewer than S distinct responses
  fails. S=1 is Best-of-K. Each distinct text has one rank key over all n samples of the query:
  the best reward of its copies (higher first; a text whose copies all have a null/NaN reward
  last), ties broken by the smallest ``sample_idx`` of its copies; it is correct when any copy is
  (``balance.py``'s rule; in practice reward and correctness are functions of the text, so this
  is what ranking the subset's own copies gives). The texts are thus in one fixed rank order, and
  a subset succeeds iff it hits >= S correct texts before the first incorrect text it hits.
  Exact: a dynamic program over the texts in rank order counts the K-subsets by samples taken and
  correct texts hit (capped at S) until an incorrect text is hit; from there a binomial counts
  the rest of the subset. Under answer-only reward (1 correct / 0 incorrect) it equals Pass@K-S.
* ``diversity``: distinct equations among correct responses (Wu et al. 2024), per query unique /
  all, averaged over queries that have any equation. What counts as an equation is set out at
  :func:`equations_expr`.

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
@lru_cache(maxsize=256)
def _gap(size: int) -> np.ndarray:
    """``gap[K, t] = K - t`` for 0 <= K, t < size (how many samples a step adds to a subset)."""
    return np.subtract.outer(np.arange(size), np.arange(size))


@lru_cache(maxsize=1024)
def _take_some(m: int, size: int) -> np.ndarray:
    """``T[K, t] = C(m, K - t)`` for K - t >= 1: ways to go from t to K samples by taking at least
    one of the m copies of one text (a matrix, so one group is one matmul whatever m is)."""
    gap = _gap(size)
    table = _comb(max(m, size - 1))
    return np.where(gap >= 1, table[m, np.clip(gap, 0, None)], 0.0)


@lru_cache(maxsize=4096)
def _hit_first(total: int, rest: int, size: int) -> np.ndarray:
    """``W[K, t] = C(total, K - t) - C(rest, K - t)``: ways to add the K - t members from an
    incorrect text and the ``rest`` samples ranked after it, at least one from the text."""
    gap = _gap(size)
    pick = np.clip(gap, 0, None)
    table = _comb(max(total, size - 1))
    return np.where(gap >= 0, table[total, pick] - table[rest, pick], 0.0)


@lru_cache(maxsize=4096)
def _first_wrong_counts(ranked: tuple[int, ...], k_max: int, s_max: int) -> np.ndarray:
    """``out[K, h]`` (K <= k_max) = number of K-subsets that hit exactly h correct texts (h capped
    at s_max: the last column is ">= s_max") before the first incorrect text they hit (or at
    all, when they hit none). Reward@K-S = ``out[K, S:].sum() / C(n, K)``.

    ``ranked``: the distinct texts in rank order as signed copy counts, +m for a correct text and
    -m for an incorrect one (adjacent incorrect texts may be merged: a subset hitting any of them
    stops there alike). Read-only: the array is shared through the cache.
    """
    size = k_max + 1
    dp = np.zeros((size, s_max + 1))  # dp[t, h]: t samples so far, h correct texts, none wrong
    dp[0, 0] = 1.0
    out = np.zeros_like(dp)
    rest = sum(abs(m) for m in ranked)  # samples of the texts after the current one
    for m in ranked:
        rest -= abs(m)
        if m == 1:  # the usual case: a text sampled once (a shift, cheaper than the matmul)
            took = np.zeros_like(dp)
            took[1:] = dp[:-1]
        elif m > 1:
            took = _take_some(m, size) @ dp
        else:
            # the subset hits this incorrect text first: its other K - t members come from this
            # text (at least one) and the later texts, freely; success then depends on h only
            out += _hit_first(rest - m, rest, size) @ dp
            continue
        dp = dp.copy()  # subsets that hit this correct text: one more correct text hit
        dp[:, 1:] += took[:, :-1]
        dp[:, s_max] += took[:, s_max]
    out += dp  # subsets of exactly K samples that hit no incorrect text
    out.setflags(write=False)
    return out


def _ranked_texts(base: pl.LazyFrame) -> pl.LazyFrame:
    """Per (split, query_id): ``ranked``, the query's distinct texts in rank order as signed copy
    counts (the :func:`_first_wrong_counts` key). ``base`` has ``split, query_id, key,
    sample_idx, correct`` (bool, no nulls) and ``reward`` (NaN already null)."""
    query = ("split", "query_id")
    return (
        base.group_by(*query, "key")
        .agg(
            pl.len().cast(pl.Int64).alias("m"),  # signed below
            pl.col("correct").any(),
            pl.col("reward").max(),
            pl.col("sample_idx").min(),
        )
        .sort(
            [*query, "reward", "sample_idx", "key"],  # key: determinism on duplicate sample_idx
            descending=[False, False, True, False, False],
            nulls_last=True,
        )
        # a run of adjacent incorrect texts is one stop for the DP: merging them makes the cache
        # key shorter and shared by more queries
        .with_columns(
            (pl.col("correct") | pl.col("correct").shift(1).fill_null(True))
            .cum_sum()
            .over(*query)
            .alias("run")
        )
        .group_by(*query, "run", maintain_order=True)
        .agg(pl.col("m").sum(), pl.col("correct").first())
        .group_by(*query, maintain_order=True)
        .agg(pl.when(pl.col("correct")).then(pl.col("m")).otherwise(-pl.col("m")).alias("ranked"))
    )


def _ranked_texts_array(keys: np.ndarray, rewards, correct, sample_idx) -> tuple[int, ...]:
    """:func:`_ranked_texts` for one query in numpy (a per-query call stays cheap)."""
    _, text = np.unique(keys, return_inverse=True)  # text ids in key order (the last tie-break)
    text = text.ravel()
    n_texts = int(text.max()) + 1 if len(text) else 0
    m = np.bincount(text, minlength=n_texts)
    ok = np.bincount(text, weights=correct, minlength=n_texts) > 0
    best = np.full(n_texts, -np.inf)
    np.fmax.at(best, text, rewards)  # NaN copies ignored...
    seen = np.zeros(n_texts, dtype=np.bool_)
    seen[text[~np.isnan(rewards)]] = True
    first = np.full(n_texts, np.iinfo(np.int64).max)
    np.minimum.at(first, text, sample_idx)
    # higher best reward first, all-NaN texts last, then smallest sample_idx, then key order
    order = np.lexsort((np.arange(n_texts), first, np.where(seen, -best, 0.0), ~seen))
    ok, m = ok[order], m[order]
    # merge runs of adjacent incorrect texts, as _ranked_texts does
    starts = np.flatnonzero(ok | np.concatenate(([True], ok[:-1])))
    return tuple(int(v) for v in np.where(ok[starts], 1, -1) * np.add.reduceat(m, starts))


def reward_at_k_s(rewards, correct, k: int, s: int, sample_idx=None, responses=None) -> float:
    """Reward@K-S for one query: probability that, for K samples drawn without replacement from the
    n given, the S best distinct responses are all correct (fewer than S distinct: not).

    Ranking as in the module docstring: per distinct response text its best reward (NaN last),
    ties by its smallest ``sample_idx``; correct if any copy is. ``sample_idx`` defaults to the
    position in the arrays. ``responses=None`` makes every sample its own distinct response (the
    S best samples must be correct); otherwise texts are compared after stripping surrounding
    whitespace. S=1 is Best-of-K.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.bool_)
    n, k, s = len(rewards), int(k), int(s)
    idx = np.arange(n) if sample_idx is None else np.asarray(sample_idx, dtype=np.int64)
    if responses is None:
        keys = np.arange(n)
    else:
        # integer ids in the order of the keys, a null response last (as polars sorts them)
        frame = pl.DataFrame({"response": list(responses)}, schema={"response": pl.String})
        keys = frame.select(response_key().rank("dense").fill_null(n + 1)).to_series().to_numpy()
    if not (len(correct) == len(idx) == len(keys) == n):
        raise ValueError("rewards, correct, sample_idx and responses must have the same length")
    _check_nck(n, int(correct.sum()), k)
    if not 1 <= s <= k:
        raise ValueError(f"need 1 <= s <= k, got s={s}, k={k}")
    ranked = _ranked_texts_array(keys, rewards, correct, idx)
    return float(_first_wrong_counts(ranked, k, s)[k, s:].sum() / _comb(n)[n, k])


# ------------------------------------------------------------------------------------ diversity
# GSM8K calculator notes: <<48/2=24>>. When a response has notes, the text outside math is read
# only for its notes (the surrounding "48/2 = <<48/2=24>>24" would otherwise count twice).
_NOTE = r"<<[^<>]*=[^<>]*>>"
# Plain text: an expression with at least one operator, "=", one result term: 23+45=68, a*b=c,
# 1,000*3 = 3,000, $5+$6=$11 (terms may carry currency and percent signs).
_TERM = r"[\w.,$%()]+"
_EQUATION = rf"{_TERM}(?:\s*[-+*/×÷^]\s*{_TERM})+\s*=\s*-?{_TERM}"

# Private-use characters stand in for "$" signs whose role the position already decides (the
# regex engine has no look-around); they are removed from the input first, so none is genuine.
_PRIVATE = "[\ue000-\ue00f]"
_OPEN_ONLY = "\ue000"   # "$" before a digit: "$5" or "$2x=4$"; never closes ("$x$5" is not math)
_CLOSE_ONLY = "\ue002"  # "$" after a digit: "x=4$" or the postfix price "5$"; never opens
_NEITHER = "\ue004"     # "$" between digits
_ESCAPED = "\ue003"     # LaTeX "\$", a literal dollar: never a delimiter
_SPLIT = "\ue001"       # boundary between two independent pieces of math
_DOLLARS = f"${_OPEN_ONLY}{_CLOSE_ONLY}{_NEITHER}"
# Display math: $$...$$, \[...\], \(...\) and bare align/equation/gather environments, across
# lines; read from the text before inline "$" (the \begin/\end go with the layout below).
_ENVIRONMENT = r"\{(?:align|aligned|equation|gather|eqnarray)\*?\}"
_DISPLAY = (
    r"(?s)\$\$(?:[^$]|\\\$)+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)"
    rf"|\\begin{_ENVIRONMENT}.+?\\end{_ENVIRONMENT}"
)
_DISPLAY_INNER = r"(?s)^(?:\$\$|\\\[|\\\()(.*)(?:\$\$|\\\]|\\\))$"
# Inline $...$ vs prices (GSM8K is full of "$5"): pandoc's rule (no space after the opening "$",
# none before the closing one, no digit right after the closing one), plus: no digit right
# before the opening one (postfix "5$"), both on one line, no other "$" between, and an "=" with
# something on both sides inside (math without "=" holds no equation, and prose between two
# prices rarely passes all of this).
_INLINE = (
    f"[${_OPEN_ONLY}][^\\s{_DOLLARS}][^{_DOLLARS}\\n]*=[^{_DOLLARS}\\n]*[^\\s{_DOLLARS}]"
    f"[${_CLOSE_ONLY}]"
)
# Inside math: "\\ &= c" (an aligned continuation line) carries the chain on; line breaks,
# \quad, "\implies"-like arrows and \text{and} separate independent equations...
_CONTINUATION = r"\\\\\s*&?\s*="
_MATH_SEPARATORS = (
    r"\\\\|\\q?quad|\\(?:implies|iff|therefore|Rightarrow|Longrightarrow)"
    r"|\\text\{\s*(?:and|or|so|then|thus|hence)\s*\}"
)
# ...layout is dropped (spacing commands, \left/\right, alignment, environments)...
_MATH_LAYOUT = (
    r"\\[,;:! ]|\\(?:left|right|displaystyle|textstyle)\b|\\(?:begin|end)\{[^{}]*\}|&"
)
# ...and once "\," and "\;" are gone, ", ", ". " and ";" separate equations too ("x = 2, y = 3").
_MATH_PUNCTUATION = r"[.,]\s|;"
_MATH_PAIR = f"[^={_SPLIT}]+=[^={_SPLIT}]+"
_MATH_FIRST_SIDE = f"(^|{_SPLIT})[^={_SPLIT}]*="


def _mark_dollars(text: pl.Expr) -> pl.Expr:
    """Replace "$" signs that cannot open or cannot close inline math by the markers above."""
    return (
        text.str.replace_all(r"\\\$", _ESCAPED)
        .str.replace_all(r"\$(\d)", _OPEN_ONLY + "${1}")
        .str.replace_all(r"(\d)\$", "${1}" + _CLOSE_ONLY)
        .str.replace_all(rf"(\d){_OPEN_ONLY}", "${1}" + _NEITHER)
    )


def _unmark_dollars(text: pl.Expr) -> pl.Expr:
    # "$$" is the replacement syntax for one literal "$"
    return text.str.replace_all(f"[{_OPEN_ONLY}{_CLOSE_ONLY}{_NEITHER}]", "$$").str.replace_all(
        _ESCAPED, r"\$", literal=True
    )


def _math_equations(contents: pl.Expr) -> pl.Expr:
    """The equations in a list of math contents (delimiters removed): every "=" of a chain
    ``a = b = c`` gives one equation of its neighbours (``a=b``, ``b=c``), both sides non-empty."""
    s = (
        contents.list.join(_SPLIT)
        .str.replace_all(_CONTINUATION, "=")
        .str.replace_all(_MATH_SEPARATORS, _SPLIT)
        .str.replace_all(_MATH_LAYOUT, "")
        .str.replace_all(_MATH_PUNCTUATION, _SPLIT)
        .str.replace_all(r"\\[dt]frac", r"\frac", literal=False)
        .str.replace_all(r"\s+", "")
        # "a==b" is a comparison, and "=b" has no left side: neither links a chain
        .str.replace_all("={2,}", _SPLIT)
        .str.replace_all(f"(^|{_SPLIT})=+", "${1}")
    )
    # Neighbouring pairs overlap (b is in a=b and b=c), which one extract_all cannot return:
    # the pairs starting at an even position, then those at an odd one (first side removed).
    even = s.str.extract_all(_MATH_PAIR)
    odd = s.str.replace_all(_MATH_FIRST_SIDE, "${1}").str.extract_all(_MATH_PAIR)
    pairs = pl.concat_list(even, odd).list.eval(pl.element().str.strip_chars_end(".,"))
    return pairs.list.eval(pl.element().filter(pl.element().str.contains("^[^=]+=[^=]+$")))


def equations_expr(column: str = "response") -> pl.Expr:
    """List of normalised equations in each response: those in LaTeX math first (not in text
    order), then the rest. A null response gives null.

    * Math: ``$$...$$``, ``\\[...\\]``, ``\\(...\\)``, bare ``\\begin{align}``-like environments
      (all may span lines) and inline ``$...$``. Inline math must not be a price (GSM8K is full of
      "$5"): both dollars on one line with no "$" between, no space right after the opening one or
      right before the closing one, no digit right after the closing one or right before the
      opening one, and an "=" inside with something on both sides; ``\\$`` is a literal dollar.
      In math any ``lhs=rhs`` with non-empty sides is an equation (``$2x=4$``: implicit products
      are normal there; ``a==b`` is not); a chain ``a=b=c`` gives its neighbouring pairs ``a=b``,
      ``b=c``; LaTeX line breaks ``\\\\``, ``;``, ", ", ". ", ``\\quad``, ``\\implies``,
      ``\\text{and}`` separate equations, while ``\\\\ &= c`` continues a chain. Normalised by
      removing whitespace, spacing commands (``\\,`` ...), ``\\left``/``\\right``, ``&`` and
      ``\\begin``/``\\end``, mapping ``\\dfrac``/``\\tfrac`` to ``\\frac`` and dropping a
      trailing ".,"; ``\\frac{1}{2}`` and ``\\frac12`` stay different (spelling is compared).
    * Outside math (math spans are cut out first, so nothing counts twice): the calculator notes
      ``<<48/2=24>>`` when the response has any ``<<``, else plain ``a op b = c`` chains (at least
      one operator on the left); whitespace and "<>" removed, trailing ".," dropped.
    """
    text = pl.col(column).str.replace_all(_PRIVATE, "")
    notes = text.str.extract_all(_NOTE)
    rest = text.str.replace_all(_NOTE, " ")  # a note is never math as well
    display = rest.str.extract_all(_DISPLAY).list.eval(
        pl.element().str.replace(_DISPLAY_INNER, "${1}")
    )
    rest = _mark_dollars(rest.str.replace_all(_DISPLAY, " "))
    inline = rest.str.extract_all(_INLINE).list.eval(
        _unmark_dollars(pl.element().str.replace(r"(?s)^.(.*).$", "${1}"))
    )
    rest = _unmark_dollars(rest.str.replace_all(_INLINE, " "))
    outside = (
        pl.when(text.str.contains("<<", literal=True))
        .then(notes)
        .otherwise(rest.str.extract_all(_EQUATION))
        .list.eval(pl.element().str.replace_all(r"[\s<>]", "").str.strip_chars_end(".,"))
    )
    return pl.concat_list(_math_equations(pl.concat_list(display, inline)), outside)


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
    * ``pass@k-s`` and ``reward@k-s`` for each K in ``ks``, S in ``ss`` with S <= K <= n, both over
      distinct ``response`` texts (module docstring);
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
    ranked = _ranked_texts(base)
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
    pass_q = np.zeros((len(pairs), q.height))
    reward_q = np.zeros((len(pairs), q.height))
    for i, (n, group_list, ranked) in enumerate(q.select("n", "m", "ranked").iter_rows()):
        comb = _comb(n)
        groups = _groups(group_list or (), n)
        hits = _distinct_hits(n, groups, k_max, s_max) if groups else None
        top = _first_wrong_counts(tuple(ranked), k_max, s_max)
        for j, (k, s) in enumerate(pairs):
            total = comb[n, k]
            if hits is not None:
                pass_q[j, i] = hits[k, s:].sum() / total
            reward_q[j, i] = top[k, s:].sum() / total
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
