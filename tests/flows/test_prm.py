"""PRM flows on a tiny configuration. Default (fast): Math-Shepherd annotation, PRM training and
scoring stored candidates with reward = 1[correct] + prm, resume of the annotation stage.
Slow: `prm_run` end to end (warm-up, annotate, train, evaluate the PRM, one B-STaR round)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[2]


def tiny_prm_config(root) -> dict:
    return {
        "name": "prm-test",
        "method": "bstar",
        "iterations": 1,
        "model": {"name_or_path": "tiny", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        "data": {
            "train": {"name": "arith", "split": "train", "limit": 60, "max_ops": 2},
            "test": [{"name": "arith", "split": "test", "limit": 8, "max_ops": 2}],
        },
        "sampling": {"k": 2, "temperature": 0.8, "max_new_tokens": 24},
        "search": {"queries": 6, "temperatures": [0.8], "thresholds": [-0.5, 0.0, 0.5]},
        "reward": {
            "kind": "answer+prm",
            "prm_train": {"queries": 10, "samples": 2, "rollouts": 2, "chunk_queries": 6, "steps": 4,
                          "batch_size": 8, "eval_queries": 6, "eval_k": 2},
        },
        "selection": {"n_target": 20, "queries_per_round": 10},
        "training": {"batch_size": 8, "max_steps": 2, "warmup": {"examples": 60, "steps": 4, "batch_size": 16}},
        "eval": {"k": 2, "ks": [1, 2], "ss": [1]},
        "storage": {"root": str(root)},
    }


@pytest.fixture(scope="module")
def stages(prefect_harness, tmp_path_factory):
    """record -> (untrained tiny policy) -> annotate_steps -> train_prm -> score with arith+prm."""
    from bstar import code_version
    from bstar.config import parse_config
    from bstar.flows.prm import annotate_steps, train_prm
    from bstar.models.tiny import build_tiny_policy
    from bstar.tasks.common import result_storage
    from bstar.tasks.data import record_run
    from bstar.tasks.prm import prm_checkpoint_dir
    from bstar.tasks.scoring import score_candidates, verifier_of

    root = tmp_path_factory.mktemp("prm-stages")
    raw = tiny_prm_config(root)
    raw["reward"]["prm_train"].update(queries=6, chunk_queries=4)
    cfg = parse_config(raw)
    cfg.reward.prm = prm_checkpoint_dir(cfg, "stages")
    cfg_json, cached = cfg.to_json(), result_storage(cfg, "stages")
    record_run("stages", cfg_json, code_version())
    policy = build_tiny_policy(root / "policy", hidden=32, layers=1, heads=2)
    annotated = annotate_steps.with_options(result_storage=cached)("stages", 0, str(policy), cfg_json)
    trained = train_prm.with_options(result_storage=cached)("stages", 0, str(policy), cfg_json)
    scorer = verifier_of(cfg)
    scored = score_candidates.with_options(result_storage=cached)("stages", 0, "annotate", scorer, cfg_json)
    return dict(root=str(root), cfg_json=cfg_json, cached=cached, policy=str(policy), annotated=annotated,
                trained=trained, scored=scored, scorer=scorer)


def test_stage_annotations(stages):
    from bstar.storage.lake import Lake

    lake = Lake(stages["root"])
    ann = lake.read("annotations", "stages", 0, "annotate")
    cands = lake.read("candidates", "stages", 0, "annotate")
    assert cands.height == 6 * 2 and len(lake.parts("annotations")) == 2  # two chunks, one part each
    assert ann.select("query_id", "sample_idx").unique().height == cands.height
    assert (ann["hard_label"] == (ann["n_correct"] > 0)).all()
    assert stages["annotated"]["steps"] == ann.height


def test_stage_prm_checkpoint_and_scores(stages):
    from bstar.storage.lake import Lake

    assert stages["scorer"] == "arith+prm"
    cfg = json.loads(Path(stages["trained"]["prm"], "prm_config.json").read_text())
    assert cfg["format"] == "bstar-scalar" and cfg["step_delimiter"] == "; "
    rw = Lake(stages["root"]).read("rewards", "stages", 0, "annotate")
    assert sorted(set(rw["scorer"])) == ["arith", "arith+prm"]
    both = rw.filter(pl.col("scorer") == "arith+prm")
    assert both["prm"].is_between(-1, 1).all() and both["step_scores"].null_count() == 0
    ok = both.filter(pl.col("correct").is_not_null())
    assert ((ok["reward"] - (ok["correct"].cast(pl.Float64) + ok["prm"])).abs() < 1e-12).all()
    assert ((ok["prm"] - (2 * ok["step_scores"].list.min() - 1)).abs() < 1e-9).all()
    assert stages["scored"]["scorer"] == "arith+prm"


def test_stage_annotation_resumes_from_cache(stages):
    from bstar.flows.prm import annotate_steps
    from bstar.storage.lake import Lake

    lake = Lake(stages["root"])
    before = {p: Path(p).stat().st_mtime_ns for p in lake.parts("annotations")}
    again = annotate_steps.with_options(result_storage=stages["cached"])("stages", 0, stages["policy"],
                                                                          stages["cfg_json"])
    assert again == stages["annotated"]
    assert before == {p: Path(p).stat().st_mtime_ns for p in lake.parts("annotations")}


@pytest.fixture(scope="module")
def prm_result(prefect_harness, tmp_path_factory):
    from bstar.flows.prm import prm_run

    root = tmp_path_factory.mktemp("prm-lake")
    return prm_run(config=tiny_prm_config(root), run_id="prm-test"), str(root)


@pytest.mark.slow
def test_annotations_are_math_shepherd_labels(prm_result):
    from bstar.storage.lake import Lake

    result, root = prm_result
    lake = Lake(root)
    ann = lake.read("annotations", "prm-test", 0, "annotate")
    cands = lake.read("candidates", "prm-test", 0, "annotate")
    assert ann.height >= cands.height == 10 * 2  # at least one step per sampled solution
    assert ann.select("query_id", "sample_idx").unique().height == cands.height
    assert set(lake.read("annotations", "prm-test").get_column("stage").unique()) == {"annotate"}
    # soft = fraction of rollouts that reach the answer, hard = any; the last step: final correctness
    assert (ann["soft_label"] == ann["n_correct"] / ann["n_rollouts"].replace(0, 1)).all()
    assert (ann["hard_label"] == (ann["n_correct"] > 0)).all()
    last = ann.filter(pl.col("step") == pl.col("n_steps") - 1)
    assert (last["hard_label"] == last["final_correct"]).all() and (last["n_rollouts"] == 0).all()
    inner = ann.filter(pl.col("step") < pl.col("n_steps") - 1)
    assert (inner["n_rollouts"] == 2).all()
    assert result["annotation"]["steps"] == ann.height


@pytest.mark.slow
def test_prm_checkpoint_and_quality_metrics(prm_result):
    from bstar.storage.lake import Lake

    result, root = prm_result
    prm = result["prm"]
    cfg = json.loads(Path(prm, "prm_config.json").read_text())
    assert cfg["format"] == "bstar-scalar" and cfg["step_delimiter"] == "; "
    assert cfg["extra"]["run_id"] == "prm-test" and cfg["extra"]["annotations"] == "math-shepherd"
    lake = Lake(root)
    ck = lake.read("checkpoints", "prm-test", 0, "prm")
    assert ck["path"].to_list() == [prm] and ck["mode"].to_list() == ["prm"]
    m = lake.read("metrics", "prm-test", 0, "prm")
    names = set(m["name"])
    assert {"reward@k-s[prm]", "reward@k-s[answer]", "accuracy", "pass@k", "prm_scoring_responses_per_s"} <= names
    q = result["quality"]
    assert q["prm_scoring_responses_per_s"] > 0


@pytest.mark.slow
def test_rewards_combine_answer_and_prm(prm_result):
    from bstar.storage.lake import Lake

    result, root = prm_result
    rw = Lake(root).read("rewards", "prm-test")
    assert {"arith", "arith+prm"} <= set(rw["scorer"])
    both = rw.filter(pl.col("scorer") == "arith+prm")
    assert set(both["stage"]) >= {"greedy", "eval", "train"}
    assert both["prm"].null_count() == 0 and both["prm"].is_between(-1, 1).all()
    ok = both.filter(pl.col("correct").is_not_null())
    assert ((ok["reward"] - (ok["correct"].cast(pl.Float64) + ok["prm"])).abs() < 1e-12).all()
    # prm = 2 * min(step probabilities) - 1
    mins = ok["step_scores"].list.min()
    assert ((ok["prm"] - (2 * mins - 1)).abs() < 1e-9).all()
    answer = rw.filter(pl.col("scorer") == "arith")
    assert answer.height == both.height and answer["prm"].null_count() == answer.height


@pytest.mark.slow
def test_round_reports_prm_and_answer_rankings_side_by_side(prm_result):
    from bstar.storage.lake import Lake

    result, root = prm_result
    assert len(result["rounds"]) == 1
    r1 = result["rounds"][0]
    assert r1["threshold"] in (-0.5, 0.0, 0.5)  # searched over the threshold grid
    m = Lake(root).read("metrics", "prm-test", 1, "prm-compare")
    tags = set(m["name"])
    assert {"reward@k-s[answer]", "reward@k-s[answer+prm]", "reward@k-s[prm]", "pass@k", "accuracy"} <= tags
    assert set(r1["ranking"]["best_of_k"]) == {"reward@k-s[answer]", "reward@k-s[answer+prm]", "reward@k-s[prm]"}
    grid = Lake(root).read("search", "prm-test", 1)
    assert sorted(grid["threshold"]) == [-0.5, 0.0, 0.5]


@pytest.mark.slow
def test_rerun_reuses_every_stage(prm_result):
    from bstar.flows.prm import prm_run
    from bstar.storage.lake import Lake

    result, root = prm_result
    lake = Lake(root)
    before = {p: Path(p).stat().st_mtime_ns for p in lake.parts("annotations") + lake.parts("rewards")}
    again = prm_run(config=tiny_prm_config(root), run_id="prm-test")
    assert again["prm"] == result["prm"] and again["annotation"] == result["annotation"]
    after = {p: Path(p).stat().st_mtime_ns for p in lake.parts("annotations") + lake.parts("rewards")}
    assert before == after  # nothing re-annotated, nothing re-scored
