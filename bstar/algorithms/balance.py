"""Balance score over a (temperature, threshold) grid and the B-STaR configuration choice.

Usage::

    from bstar.algorithms import balance_grid, choose_config, mark_chosen, n_star, threshold_grid

    grid = balance_grid(scored, threshold_grid(-1.0, 1.0, 0.01), n_star(67_500, 11_500))
    best = choose_config(grid)          # argmax; ablations: temperature=... or threshold=...
    stored = mark_chosen(grid, best)    # adds the bool `chosen` column for the `search` table

`scored` has one row per sampled candidate with columns
``query_id, temperature, response, correct, reward`` (extra columns are ignored).

Semantics (DESIGN.md §1), for query q sampled at temperature t and threshold τ:

* a candidate is selected when ``reward > τ`` (strict); a null or NaN reward is never selected;
* responses are compared after stripping surrounding whitespace (``str.strip_chars()``, i.e.
  Unicode whitespace as Rust's ``char::is_whitespace`` defines it);
* ``n_q`` = number of distinct response texts with at least one selected copy;
* ``n'_q`` = number of distinct response texts with at least one selected copy that is correct.
  (Correctness is a function of the text in practice; if copies disagree — e.g. a verifier
  timeout on one copy — the text counts as correct when a correct copy passes τ. This is exactly
  what "filter by reward, then put the texts in a set" computes.) A null ``correct`` is False;
* ``bs_q = min(n'_q / n*, 1) * n'_q / n_q`` (0 when ``n_q = 0``); the score of (t, τ) is the mean
  of ``bs_q`` over all queries sampled at t, including those with nothing selected.

How it is fast: the candidates are reduced once to distinct (t, q, text) rows carrying the best
reward of any copy and the best reward of a correct copy. A distinct text passes exactly the
thresholds below that reward, so a sorted search gives, for each row, how many thresholds it passes;
counting rows per (t, q, that index) and taking a reverse cumulative sum over the index yields
``n_q`` and ``n'_q`` for every threshold at once (no per-threshold filtering, no Python loops over
candidates).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import polars as pl

__all__ = [
    "GRID_COLUMNS",
    "balance_grid",
    "balance_grid_of_distinct",
    "distinct_responses",
    "merge_distinct",
    "choose_config",
    "mark_chosen",
    "n_star",
    "N_STAR_ROUNDING",
    "response_key",
    "threshold_grid",
]

GRID_COLUMNS = (
    "temperature",
    "threshold",
    "balance_score",
    "n_selected",
    "n_unique_correct",
    "n_queries",
)
_GRID_SCHEMA = {
    "temperature": pl.Float64,
    "threshold": pl.Float64,
    "balance_score": pl.Float64,
    "n_selected": pl.Int64,
    "n_unique_correct": pl.Int64,
    "n_queries": pl.Int64,
}
# Scores closer than this are ties for choose_config: the same multiset of bs_q summed in a
# different order may differ in the last bits, and that must not decide between configurations.
_TIE_TOLERANCE = 1e-12
# Matching a user-given temperature/threshold against grid values (0.3 vs 0.30000000000000004).
_MATCH_TOLERANCE = 1e-9


def response_key(column: str = "response") -> pl.Expr:
    """The text used to decide that two responses are duplicates (surrounding whitespace stripped)."""
    return pl.col(column).str.strip_chars()


N_STAR_ROUNDING = ("none", "ceil", "floor")


def n_star(N: float, M: float, rounding: str = "none") -> float:
    """Target distinct correct responses per query: ``N / M`` as the paper writes it (§3.1, "we
    simply decide n* = N/M"; 67,500 / 11,500 = 5.87). ``rounding="ceil"`` or ``"floor"`` rounds it
    to a whole number of responses, at least 1 (a deviation from the paper, named as such in the
    config)."""
    if N <= 0 or M <= 0:
        raise ValueError(f"n_star needs N > 0 and M > 0, got N={N}, M={M}")
    if rounding not in N_STAR_ROUNDING:
        raise ValueError(f"n_star rounding must be one of {N_STAR_ROUNDING}, got {rounding!r}")
    if rounding == "none":
        return N / M
    if isinstance(N, int) and isinstance(M, int):  # exact integer arithmetic, no float rounding for huge N
        return float(-(-N // M) if rounding == "ceil" else N // M) or 1.0
    return float(max(1, (math.ceil if rounding == "ceil" else math.floor)(N / M)))


def threshold_grid(start: float, stop: float, step: float, decimals: int = 6) -> np.ndarray:
    """Thresholds ``start, start+step, ..., stop`` (inclusive) as the nearest doubles to the decimals.

    ``np.arange(-1, 1.01, 0.01)`` yields values like 0.30000000000000004, and with the strict
    ``reward > τ`` a reward of 0.3 would then behave differently than at τ = 0.3. Rounding each value
    to ``decimals`` gives the same double as the literal ``0.3``.
    """
    if step <= 0:
        raise ValueError(f"threshold step must be > 0, got {step}")
    span = (stop - start) / step
    count = int(round(span))
    if count < 0 or abs(span - count) > 1e-6:
        raise ValueError(f"({stop} - {start}) is not a whole number of steps of {step}")
    values = np.round(start + step * np.arange(count + 1), decimals)
    return values + 0.0  # turns -0.0 into 0.0


def _require(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; got {frame.columns}")


def _thresholds_array(thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    thr = np.asarray(thresholds, dtype=np.float64).ravel()
    if np.isnan(thr).any():
        raise ValueError("thresholds must not contain NaN")
    return np.unique(thr)  # sorted, duplicates dropped


def _passed(rewards: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """For each reward, how many thresholds it is strictly greater than (NaN/null passes none)."""
    idx = np.searchsorted(thr, rewards, side="left")  # count of thresholds < reward
    return np.where(np.isnan(rewards), 0, idx)


def balance_grid(
    scored: pl.DataFrame,
    thresholds: Sequence[float] | np.ndarray,
    n_star: float,
) -> pl.DataFrame:
    """Balance score of every (temperature, threshold) cell.

    Returns one row per (temperature, threshold), sorted by both, with columns
    ``temperature, threshold, balance_score, n_selected, n_unique_correct, n_queries``:

    * ``balance_score`` — mean of ``bs_q`` over all queries sampled at that temperature;
    * ``n_selected`` — number of distinct (query, response text) pairs selected (sum of ``n_q``);
    * ``n_unique_correct`` — number of distinct correct (query, response text) pairs selected
      (sum of ``n'_q``);
    * ``n_queries`` — number of distinct queries sampled at that temperature.

    Thresholds are deduplicated and sorted; they are used exactly as given (use
    :func:`threshold_grid` to avoid float-step surprises). ``n_star`` must be > 0.
    """
    return balance_grid_of_distinct(distinct_responses(scored), thresholds, n_star)


_KEY_SEEDS = (0x6B5F_3A21, 0x1D2C_9E47)


def distinct_responses(scored: pl.DataFrame, *, hashed: bool = False) -> pl.DataFrame:
    """The candidates reduced to one row per distinct (temperature, query, response text): the best
    reward of any copy (``r_any``) and of a correct copy (``r_ok``, null when no copy is correct).

    ``hashed=True`` keys each text by two independent 64-bit hashes (``k1``, ``k2``) instead of
    the text itself, so a stage that reads its candidates chunk by chunk keeps 16 bytes per
    distinct response between chunks, not the response (:func:`merge_distinct`; two different
    texts of one query collide with probability about 2^-128)."""
    _require(scored, ("query_id", "temperature", "response", "correct", "reward"), "balance_grid")
    if scored["temperature"].null_count():
        raise ValueError("balance_grid: column 'temperature' has null values")
    reward = pl.col("reward").cast(pl.Float64)
    reward = pl.when(reward.is_nan()).then(None).otherwise(reward)
    correct = pl.col("correct").cast(pl.Boolean).fill_null(False)
    keys = [response_key().hash(seed).alias(f"k{i + 1}") for i, seed in enumerate(_KEY_SEEDS)] if hashed else [
        response_key().alias("key")]
    return (
        scored.lazy()
        .select(
            pl.col("temperature").cast(pl.Float64),
            pl.col("query_id").cast(pl.String),
            *keys,
            reward.alias("r_any"),
            # the reward of a correct copy, null for an incorrect one (cheaper than filter-in-agg)
            pl.when(correct).then(reward).alias("r_ok"),
        )
        .group_by("temperature", "query_id", *[k.meta.output_name() for k in keys])
        .agg(pl.col("r_any").max(), pl.col("r_ok").max())
        .collect()
    )


def merge_distinct(parts: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """`distinct_responses(..., hashed=True)` of several chunks of one stage, as one: a text seen
    in two chunks is one distinct response, with the best rewards of both."""
    if not parts:
        return pl.DataFrame(schema={"temperature": pl.Float64, "query_id": pl.String, "k1": pl.UInt64,
                                    "k2": pl.UInt64, "r_any": pl.Float64, "r_ok": pl.Float64})
    return (
        pl.concat(parts)
        .group_by("temperature", "query_id", "k1", "k2")
        .agg(pl.col("r_any").max(), pl.col("r_ok").max())
    )


def balance_grid_of_distinct(
    distinct: pl.DataFrame,
    thresholds: Sequence[float] | np.ndarray,
    n_star: float,
) -> pl.DataFrame:
    """:func:`balance_grid` from :func:`distinct_responses` (or :func:`merge_distinct`) rows."""
    if not n_star > 0:
        raise ValueError(f"n_star must be > 0, got {n_star}")
    thr = _thresholds_array(thresholds)
    n_thr = len(thr)
    if distinct.height == 0 or n_thr == 0:
        return pl.DataFrame(schema=_GRID_SCHEMA)
    distinct = distinct.sort("temperature", "query_id").select(
        "temperature",
        pl.struct("temperature", "query_id").rle_id().alias("g"),
        "r_any",
        "r_ok",
    )

    g = distinct["g"].to_numpy().astype(np.int64)
    n_groups = int(g[-1]) + 1
    width = n_thr + 1
    r_any = distinct["r_any"].to_numpy(allow_copy=True).astype(np.float64)
    r_ok = distinct["r_ok"].to_numpy(allow_copy=True).astype(np.float64)

    def per_threshold_counts(rewards: np.ndarray) -> np.ndarray:
        # counts[g, i] = distinct texts of query g that pass exactly the first i thresholds;
        # texts passing threshold j are those with i > j: a reverse cumulative sum over i.
        counts = np.bincount(g * width + _passed(rewards, thr), minlength=n_groups * width)
        counts = counts.reshape(n_groups, width)
        return np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]

    n_q = per_threshold_counts(r_any)  # (queries, thresholds)
    n_ok = per_threshold_counts(r_ok)
    ratio = np.divide(n_ok, n_q, out=np.zeros(n_q.shape), where=n_q > 0)
    bs = np.minimum(n_ok / n_star, 1.0) * ratio

    # rows of each temperature are contiguous (sorted by temperature, query_id)
    first_row = np.flatnonzero(np.diff(g, prepend=-1))
    temps_of_group = distinct["temperature"].to_numpy()[first_row]
    temps, starts, n_queries = np.unique(temps_of_group, return_index=True, return_counts=True)
    score = np.add.reduceat(bs, starts, axis=0) / n_queries[:, None]
    n_sel = np.add.reduceat(n_q, starts, axis=0)
    n_cor = np.add.reduceat(n_ok, starts, axis=0)

    n_t = len(temps)
    return pl.DataFrame(
        {
            "temperature": np.repeat(temps, n_thr),
            "threshold": np.tile(thr, n_t),
            "balance_score": score.ravel(),
            "n_selected": n_sel.ravel().astype(np.int64),
            "n_unique_correct": n_cor.ravel().astype(np.int64),
            "n_queries": np.repeat(n_queries, n_thr).astype(np.int64),
        },
        schema=_GRID_SCHEMA,
    )


def _restrict(grid: pl.DataFrame, temperature: float | None, threshold: float | None) -> pl.DataFrame:
    out = grid
    for column, value in (("temperature", temperature), ("threshold", threshold)):
        if value is None:
            continue
        out = out.filter((pl.col(column) - float(value)).abs() <= _MATCH_TOLERANCE)
        if out.height == 0:
            available = grid[column].unique().sort().to_list()
            raise ValueError(f"choose_config: no grid row with {column}={value}; grid has {available}")
    return out


def choose_config(
    grid: pl.DataFrame,
    temperature: float | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The grid row with the highest balance score, as a dict of the grid's columns.

    Ties (scores within 1e-12): the smaller temperature, then the larger threshold.
    Ablations: ``temperature=`` fixes the temperature (B-STaR threshold-only search),
    ``threshold=`` fixes the threshold (temperature-only search); values are matched within 1e-9.
    """
    _require(grid, ("temperature", "threshold", "balance_score"), "choose_config")
    if grid.height == 0:
        raise ValueError("choose_config: the grid is empty")
    rows = _restrict(grid, temperature, threshold).filter(pl.col("balance_score").is_not_nan())
    if rows.height == 0:
        raise ValueError("choose_config: no grid row has a balance score")
    best = rows["balance_score"].max()
    winner = (
        rows.filter(pl.col("balance_score") >= best - _TIE_TOLERANCE)
        .sort(["temperature", "threshold"], descending=[False, True])
        .row(0, named=True)
    )
    return {k: winner[k] for k in GRID_COLUMNS if k in winner}


def mark_chosen(grid: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """The grid with a bool ``chosen`` column, true on the row of ``config`` (from choose_config)."""
    chosen = (pl.col("temperature") == config["temperature"]) & (
        pl.col("threshold") == config["threshold"]
    )
    out = grid.with_columns(chosen.fill_null(False).alias("chosen"))
    if out["chosen"].sum() != 1:
        raise ValueError(f"mark_chosen: config {config} matches {out['chosen'].sum()} grid rows")
    return out
