"""`bstar compare` on a tiny configuration: one shared warm-up (and PRM), arms as resumable
bstar-run sub-flows with equal budgets, the gold-only control arm, and the comparison table."""

from __future__ import annotations

import polars as pl
import pytest

from tests.flows.test_prm import tiny_prm_config


def tiny_compare_config(root) -> dict:
    base = tiny_prm_config(root)
    base["reward"]["kind"] = "answer"  # arms choose their reward; the PRM is trained for the +prm arm
    return {
        "name": "cmp-test",
        "seeds": [0],
        "arms": [
            {"method": "bstar", "reward": "answer+prm"},
            {"method": "rest-em", "set": {"selection.include_gold": True}},
            {"method": "sft", "label": "gold-only"},
        ],
        "base": base,
    }


@pytest.fixture(scope="module")
def compared(prefect_harness, tmp_path_factory):
    from bstar.flows.compare import compare

    root = tmp_path_factory.mktemp("compare-lake")
    result = compare(config=tiny_compare_config(root), compare_id="cmp")
    return result, str(root)


def frame(root: str, sql: str) -> pl.DataFrame:
    from bstar.storage.catalog import connect

    return connect(root).sql(sql).pl()


def test_arms_start_from_the_shared_warm_up_with_equal_budgets(compared):
    result, root = compared
    start = result["start"]["policy"]
    ck = frame(root, "SELECT run_id, iteration, step, path FROM checkpoints ORDER BY run_id, iteration")
    # every arm's iteration-0 checkpoint is the shared warm-up: no arm trains a warm-up of its own
    arms = ck.filter(pl.col("iteration") == 0).filter(pl.col("run_id") != "cmp-start")
    assert sorted(arms["run_id"]) == ["cmp-bstar-prm", "cmp-gold-only", "cmp-rest-em"]
    assert set(arms["path"]) == {start}
    # equal training budgets: the same number of optimizer steps in round 1 (max_steps = 2)
    warm_step = ck.filter(pl.col("run_id") == "cmp-start")["step"][0]
    round1 = ck.filter(pl.col("iteration") == 1).join(
        frame(root, "SELECT run_id, count(*) AS selected FROM selections GROUP BY run_id"), on="run_id", how="left"
    )
    # online arms continue the warm-up's step counter; restart / iterative ones count from 0;
    # an arm whose round selected nothing keeps its starting policy, at the warm-up's step
    fresh = {"cmp-rest-em"}
    for r in round1.iter_rows(named=True):
        expected = (2 if r["run_id"] in fresh else warm_step + 2) if r["selected"] else warm_step
        assert r["step"] == expected, r
    assert round1.filter(pl.col("run_id") == "cmp-gold-only")["step"][0] == warm_step + 2
    assert round1.filter(pl.col("run_id") == "cmp-rest-em")["step"][0] == 2  # the seed set is always there
    # equal sampling budgets for the self-generated arms: M queries x K samples in stage train
    train = frame(root, "SELECT run_id, count(*) AS n FROM candidates WHERE stage = 'train' GROUP BY run_id ORDER BY run_id")
    assert train.rows() == [("cmp-bstar-prm", 10 * 2), ("cmp-rest-em", 10 * 2)]
    # only the start is evaluated at iteration 0
    it0 = frame(root, "SELECT DISTINCT run_id FROM metrics WHERE iteration = 0")
    assert it0["run_id"].to_list() == ["cmp-start"]


def test_gold_only_arm_trains_on_the_warm_up_gold_solutions_and_samples_nothing(compared):
    _, root = compared
    sel = frame(root, "SELECT query_id, sample_idx, response FROM selections WHERE run_id = 'cmp-gold-only'")
    q = frame(root, "SELECT query_id, dataset, prompt, answer, meta FROM queries WHERE run_id = 'cmp-gold-only' AND split = 'train'")
    assert sel.height == 60 and set(sel["sample_idx"]) == {-1}
    assert set(sel["query_id"]) == set(q.sort("query_id").head(60)["query_id"])
    from bstar.datasets import gold_response
    from bstar.tasks.data import as_rows

    gold = {r["query_id"]: gold_response("arith", r) for r in as_rows(q)}
    assert all(r["response"] == gold[r["query_id"]] for r in sel.iter_rows(named=True))
    assert all(r["response"].endswith(f"#### {r['answer']}") for r in sel.join(q, on="query_id").iter_rows(named=True))
    n = frame(root, "SELECT count(*) AS n FROM candidates WHERE run_id = 'cmp-gold-only' AND stage IN ('search', 'train')")
    assert n["n"][0] == 0


def test_include_gold_trains_on_the_seed_set_plus_the_selected_samples(compared):
    _, root = compared
    sel = frame(root, "SELECT sample_idx, reward, response FROM selections WHERE run_id = 'cmp-rest-em'")
    gold = frame(root, "SELECT response FROM selections WHERE run_id = 'cmp-gold-only'")
    assert sorted(sel.filter(pl.col("sample_idx") == -1)["response"]) == sorted(gold["response"])
    own = sel.filter(pl.col("sample_idx") >= 0)
    assert own.height == frame(root, "SELECT count(*) AS n FROM selections WHERE run_id = 'cmp-rest-em' AND reward > 0")["n"][0]
    # the gold rows give the round something to train on: the same 2 steps as the control arm
    # (restart counts from 0, the online control continues the warm-up's counter)
    steps = dict(frame(root, "SELECT run_id, step FROM checkpoints WHERE (iteration = 1 AND run_id IN "
                             "('cmp-rest-em', 'cmp-gold-only')) OR run_id = 'cmp-start'").rows())
    assert steps["cmp-rest-em"] == 2 and steps["cmp-gold-only"] == steps["cmp-start"] + 2


def test_prm_arm_scores_with_the_shared_prm_and_searches_the_threshold(compared):
    result, root = compared
    assert result["start"]["prm"].startswith(root)
    scorers = frame(root, "SELECT DISTINCT run_id, scorer FROM rewards WHERE stage = 'train' ORDER BY run_id, scorer")
    assert scorers.filter(pl.col("run_id") == "cmp-bstar-prm")["scorer"].to_list() == ["arith", "arith+prm"]
    assert scorers.filter(pl.col("run_id") == "cmp-rest-em")["scorer"].to_list() == ["arith"]
    grid = frame(root, "SELECT DISTINCT threshold FROM search WHERE run_id = 'cmp-bstar-prm' ORDER BY 1")
    assert grid["threshold"].to_list() == [-0.5, 0.0, 0.5]


def test_table_rows_match_the_stored_metrics(compared):
    result, root = compared
    table = pl.DataFrame(result["table"])
    assert table["arm"].to_list() == ["start", "bstar-prm", "rest-em", "gold-only"]
    m = frame(root, "SELECT run_id, name, value FROM metrics WHERE iteration = 1 OR run_id = 'cmp-start'")
    value = {(r["run_id"], r["name"]): r["value"] for r in m.iter_rows(named=True) if r["name"].startswith("greedy")}
    start = value[("cmp-start", "greedy_pass@1")]
    for arm, run in [("rest-em", "cmp-rest-em"), ("gold-only", "cmp-gold-only")]:
        row = table.filter(pl.col("arm") == arm).row(0, named=True)
        assert row["Pass@1"] == value[(run, "greedy_pass@1")]
        assert row["Pass@1 se"] == value[(run, "greedy_pass@1_se")]
        assert row["gain"] == pytest.approx(value[(run, "greedy_pass@1")] - start)
        assert row["rounds"] == 1
    assert [t["arm"] for t in result["trajectories"] if t["temperature"] is not None] == ["bstar-prm"]


def test_one_arm_reruns_alone_from_the_cache(compared, prefect_harness):
    from bstar.flows.compare import compare

    result, root = compared
    before = frame(root, "SELECT count(*) AS n FROM candidates")["n"][0]
    again = compare(config=tiny_compare_config(root), compare_id="cmp", only=["rest-em"])
    assert again["table"] == result["table"]
    assert frame(root, "SELECT count(*) AS n FROM candidates")["n"][0] == before
