"""Training-data selection (DESIGN.md §1 step 3): reward threshold, per-query dedupe, optional cap.

Usage::

    from bstar.algorithms import select_training_data
    train = select_training_data(scored, threshold=0.0, max_per_query=4)

`scored` needs ``query_id, response, reward``; ``sample_idx`` is used when present. All input
columns are kept; the result is sorted by ``query_id`` (then ``sample_idx``).
"""

from __future__ import annotations

import polars as pl

from .balance import response_key

__all__ = ["select_training_data"]


def select_training_data(
    scored: pl.DataFrame,
    threshold: float,
    max_per_query: int | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """Keep candidates with ``reward > threshold`` and drop duplicate responses per query.

    * strict ``>``; a null or NaN reward is never kept;
    * duplicates: same ``query_id`` and the same text after stripping surrounding whitespace (the
      same rule as :func:`balance_grid`); the copy kept is the first by ``sample_idx`` (input
      order when there is no ``sample_idx``) among the copies that pass the threshold. The set of
      kept texts is therefore exactly the set ``balance_grid`` counts as ``n_q`` at this threshold;
    * ``max_per_query``: keep at most that many per query, highest reward first, ties by
      ``sample_idx`` then input order. Deterministic: ``seed`` is accepted for API stability and
      does not change the result.
    """
    del seed  # the cap is deterministic by design (see docstring)
    missing = [c for c in ("query_id", "response", "reward") if c not in scored.columns]
    if missing:
        raise ValueError(f"select_training_data: missing column(s) {missing}; got {scored.columns}")
    if max_per_query is not None and max_per_query < 0:
        raise ValueError(f"max_per_query must be >= 0 or None, got {max_per_query}")

    columns = scored.columns
    row = "__bstar_row"  # input position: the last tie-breaker
    tiebreak = ["sample_idx", row] if "sample_idx" in columns else [row]
    reward = pl.col("reward").cast(pl.Float64)
    kept = (
        scored.lazy()
        .with_row_index(row)
        .filter(reward.is_not_null() & reward.is_not_nan() & (reward > float(threshold)))
        .with_columns(response_key().alias("__bstar_key"))
        .sort(["query_id", *tiebreak])
        .unique(subset=["query_id", "__bstar_key"], keep="first", maintain_order=True)
    )
    if max_per_query is not None:
        kept = (
            kept.sort(
                ["query_id", "reward", *tiebreak],
                descending=[False, True] + [False] * len(tiebreak),
            )
            .filter(pl.int_range(pl.len()).over("query_id") < max_per_query)
            .sort(["query_id", *tiebreak])
        )
    return kept.select(columns).collect()
