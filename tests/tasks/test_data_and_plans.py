"""Pure pieces of the stage layer: query subsets per round, the search plan per method, and the
greedy metrics rows."""

import math

import polars as pl
import pytest

from bstar.config import parse_config
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
    plan = cfg.search_plan()
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
    # every test query is in the denominator; a scorer failure counts as not correct (the rule of
    # every published evaluation harness), and how many misses were the scorer's is reported beside
    assert m[("test-a", "greedy_pass@1")] == pytest.approx(2 / 4)
    assert m[("test-a", "greedy_pass@1_se")] == pytest.approx(math.sqrt(1 / 2 * 1 / 2 / 4))
    assert m[("test-a", "scorer_errors")] == 1 and m[("test-b", "scorer_errors")] == 1
    assert m[("test-b", "greedy_pass@1")] == 0.5
    assert m[("test-b", "n")] == 2 and m[("test-a", "n")] == 4
    assert m[("test-a", "wrong_answers")] == 1 and m[("test-b", "wrong_answers")] == 0


def test_default_search_is_the_papers_two_knob_grid():
    cfg = parse_config({})
    assert cfg.method == "bstar" and cfg.searches_temperature and cfg.searches_threshold
    assert cfg.search.temperatures == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
    assert cfg.search.thresholds[0] == -1.0 and cfg.search.thresholds[-1] == 1.0
    assert len(cfg.search.thresholds) == 21 and 0.3 in cfg.search.thresholds and 0.0 in cfg.search.thresholds
    assert cfg.search_summary() == (
        "searches temperature (8 values 0.5..1.2) x threshold (21 values -1..1): 168 cells on 600 queries"
    )
    only_t = parse_config({"method": "bstar-temperature"})
    assert only_t.search_summary() == (
        "searches temperature (8 values 0.5..1.2) x threshold fixed at 0: 8 cells on 600 queries"
    )
    assert parse_config({"method": "online-rft"}).search_summary() == "no search: temperature 1, threshold 0 fixed"


def _metric_frame(rows):
    return pl.DataFrame(rows, schema={"split": pl.String, "name": pl.String, "k": pl.Int32, "s": pl.Int32,
                                      "value": pl.Float64}, orient="row")


def test_a_round_that_selected_nothing_says_so_in_its_artifact():
    from bstar.tasks.evaluation import round_markdown, round_notes

    cfg = parse_config({"method": "rest-em"})
    metrics = _metric_frame([("train", "selected", None, None, 0.0), ("train", "policy_kept", None, None, 1.0),
                             ("train", "balance_score", None, None, 0.0),
                             ("test-a", "queries_short_of_k", 8, None, 3.0)])
    notes = round_notes(cfg, metrics)
    assert notes[0] == "Search: no search: temperature 1, threshold 0 fixed; n* = 6."
    assert "**No candidate passed the threshold this round.**" in notes
    assert "**Nothing to train on: the round kept its starting policy, the initial checkpoint (restart mode).**" in notes
    assert "**test-a: 3 queries have fewer than K=8 samples; Pass@8 and its K-S metrics are left out.**" in notes
    text = round_markdown("r", 1, {"temperature": 1.0, "threshold": 0.0, "selected": 0}, None, metrics, notes)
    assert "- **No candidate passed the threshold this round.**" in text
    fine = round_notes(cfg, _metric_frame([("train", "selected", None, None, 12.0),
                                           ("train", "policy_kept", None, None, 0.0)]))
    assert len(fine) == 1


def test_queries_short_of_k_counts_per_split_and_k():
    from bstar.tasks.evaluation import short_of_k

    scored = pl.DataFrame({"split": ["a"] * 6 + ["b"] * 4, "query_id": ["q1"] * 4 + ["q2"] * 2 + ["q3"] * 4})
    rows = short_of_k(scored, [1, 2, 4]).rows()
    assert rows == [("a", "queries_short_of_k", 4, None, 1.0)]  # q2 has 2 < 4 samples; b is complete


def test_warmup_seed_set_is_a_seeded_random_sample_not_the_first_ids(tmp_path):
    from bstar.storage.lake import Lake
    from bstar.tasks.data import warmup_queries

    ids = [f"algebra-{i:03d}" for i in range(50)] + [f"geometry-{i:03d}" for i in range(50)]
    Lake(str(tmp_path)).write("queries", pl.DataFrame({
        "split": "train", "query_id": ids, "dataset": "math", "prompt": ids, "answer": "1", "meta": "{}"}), "r", 0)

    def seed_set(seed, run_id="r"):
        cfg = parse_config({"storage": {"root": str(tmp_path)}, "training": {"warmup": {"examples": 20}},
                            "data": {"train": {"seed": seed}}})
        return warmup_queries(cfg, run_id)["query_id"].to_list()

    a = seed_set(0)
    assert len(a) == 20 == len(set(a)) and a == sorted(a)
    assert any(q.startswith("geometry") for q in a) and any(q.startswith("algebra") for q in a)
    assert seed_set(0) == a and seed_set(1) != a
