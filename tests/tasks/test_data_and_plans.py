"""Pure pieces of the stage layer: query subsets per round, the search plan per method, and the
greedy metrics rows."""

import math

import polars as pl
import pytest

from bstar.config import parse_config
from bstar.flows.search import search_plan
from bstar.tasks.data import round_subset, search_subset
from bstar.tasks.evaluation import greedy_metrics

IDS = [f"q{i:03d}" for i in range(10)]


def test_search_subset_is_fixed_and_independent_of_load_order():
    a = search_subset(IDS, 4, seed=0)
    assert len(a) == 4 and len(set(a)) == 4 and set(a) <= set(IDS)
    assert search_subset(list(reversed(IDS)), 4, seed=0) == a
    assert search_subset(IDS, 4, seed=1) != a or search_subset(IDS, 4, seed=2) != a


def test_rounds_take_consecutive_slices_and_wrap_around():
    r1, r2, r3 = (round_subset(IDS, 4, i, seed=0) for i in (1, 2, 3))
    assert len(set(r1) | set(r2)) == 8  # disjoint first two rounds
    assert set(r3) == (set(IDS) - set(r1) - set(r2)) | set(r1[:2])  # 2 left, then wraps
    assert round_subset(IDS, 50, 1, seed=0) == round_subset(IDS, 10, 1, seed=0)
    assert round_subset([], 4, 1, seed=0) == []


@pytest.mark.parametrize(
    "method, temps, thresholds, fixed",
    [
        ("bstar", [0.5, 1.0], [0.0, 0.5], {}),
        ("bstar-temperature", [0.5, 1.0], [0.2], {"threshold": 0.2}),
        ("bstar-threshold", [0.8], [0.0, 0.5], {"temperature": 0.8}),
        ("online-rft", [0.8], [0.2], {"temperature": 0.8, "threshold": 0.2}),
        ("rest-em", [0.8], [0.2], {"temperature": 0.8, "threshold": 0.2}),
    ],
)
def test_search_plan_pins_what_the_method_does_not_search(method, temps, thresholds, fixed):
    cfg = parse_config(
        {
            "method": method,
            "sampling": {"temperature": 0.8},
            "reward": {"threshold": 0.2},
            "search": {"temperatures": [1.0, 0.5], "thresholds": [0.5, 0.0]},
        }
    )
    plan = search_plan(cfg)
    assert plan == {"temperatures": temps, "thresholds": thresholds, "fixed": fixed}


def test_greedy_metrics_pass_at_1_standard_error_and_scorer_errors():
    greedy = pl.DataFrame(
        {
            "split": ["test-a"] * 4 + ["test-b"] * 2,
            "correct": [True, True, False, None, True, None],
            "status": ["ok", "ok", "ok", "timeout", "ok", "error"],
        }
    )
    m = {(r["split"], r["name"]): r["value"] for r in greedy_metrics(greedy).iter_rows(named=True)}
    assert m[("test-a", "greedy_pass@1")] == pytest.approx(2 / 3)
    assert m[("test-a", "greedy_pass@1_se")] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 3))
    assert m[("test-a", "scorer_errors")] == 1 and m[("test-b", "scorer_errors")] == 1
    assert m[("test-b", "greedy_pass@1")] == 1.0  # the failed item has no verdict, not a zero
    assert m[("test-b", "n")] == 1 and m[("test-a", "n")] == 3
