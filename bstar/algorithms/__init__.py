"""Pure B-STaR algorithms: balance score and config search, training-data selection, metrics.

No torch, no Prefect: plain functions over polars frames and numpy arrays, tested with pytest.

    from bstar.algorithms import balance_grid, choose_config, n_star, select_training_data
    grid = balance_grid(search_scored, threshold_grid(-1.0, 1.0, 0.01), n_star(N, M))
    config = choose_config(grid)                       # {"temperature": .., "threshold": .., ...}
    train = select_training_data(train_scored, config["threshold"])
"""

from .balance import (
    GRID_COLUMNS,
    balance_grid,
    balance_grid_of_distinct,
    choose_config,
    distinct_responses,
    mark_chosen,
    merge_distinct,
    n_star,
    response_key,
    threshold_grid,
)
from .metrics import (
    METRIC_SCHEMA,
    distinct_equation_ratio,
    equations_expr,
    extract_equations,
    greedy_pass_at_1,
    pass_at_k,
    pass_at_k_array,
    pass_at_k_s,
    reward_at_k_s,
    sample_metrics,
)
from .selection import select_training_data

__all__ = [
    "GRID_COLUMNS",
    "METRIC_SCHEMA",
    "balance_grid",
    "balance_grid_of_distinct",
    "choose_config",
    "distinct_responses",
    "distinct_equation_ratio",
    "equations_expr",
    "extract_equations",
    "greedy_pass_at_1",
    "mark_chosen",
    "merge_distinct",
    "n_star",
    "pass_at_k",
    "pass_at_k_array",
    "pass_at_k_s",
    "response_key",
    "reward_at_k_s",
    "sample_metrics",
    "select_training_data",
    "threshold_grid",
]
