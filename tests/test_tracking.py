"""Per-round metrics mirrored to MLflow and TensorBoard (bstar.tracking, bstar.tasks.tracking).

The values are those of a smoke run (deployments/configs/smoke.yaml, seed 0): its start
evaluation and two rounds. MLflow is a real `mlflow server` on a free port (tests/mlflow_server.py),
read back through MlflowClient; TensorBoard's event files are read back with its own
EventAccumulator.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_tracking.py
"""

from __future__ import annotations

import logging
import re
import sys

import pytest

pytest.importorskip("mlflow", reason="needs the tracking extra: pip install 'bstar[tracking]'")
pytest.importorskip("tensorboard", reason="needs the tracking extra: pip install 'bstar[tracking]'")

import polars as pl  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.validation import _validate_metric_name  # noqa: E402
from prefect import flow  # noqa: E402

from bstar import tracking  # noqa: E402
from bstar.config import TrackingConfig, load_config  # noqa: E402
from bstar.storage.lake import Lake  # noqa: E402
from bstar.tasks import tracking as tracking_task  # noqa: E402
from bstar.tasks.tracking import track_round_task  # noqa: E402
from tests.mlflow_server import mlflow_server  # noqa: E402
from tests.prefect_server import free_port  # noqa: E402

SMOKE = "deployments/configs/smoke.yaml"
RUN = "smoke-trk"

# What the smoke run's flows returned: the start evaluation (iteration 0) and rounds 1 and 2.
START = {"iteration": 0, "pass@1": {"test-arith": 0.02}, "n_metrics": 26}
ROUND_1 = {"temperature": 1.0, "threshold": 0.0, "balance_score": 0.03472222222222222, "n_selected": 5,
           "n_unique_correct": 5, "n_queries": 48, "selected": 7, "policy": "/lake/_checkpoints/smoke-trk/iter-1",
           "iteration": 1, "pass@1": {"test-arith": 0.01}, "n_metrics": 32}
ROUND_2 = {"temperature": 0.6, "threshold": 0.0, "balance_score": 0.04861111111111111, "n_selected": 7,
           "n_unique_correct": 7, "n_queries": 48, "selected": 9, "policy": "/lake/_checkpoints/smoke-trk/iter-2",
           "iteration": 2, "pass@1": {"test-arith": 0.02}, "n_metrics": 32}
SUMMARIES = {0: START, 1: ROUND_1, 2: ROUND_2}

# Round 1's rows of the lake's `metrics` table: (split, name, k, s, value).
ROUND_1_ROWS = [
    ("test-arith", "accuracy", None, None, 0.0125),
    ("test-arith", "diversity", None, None, 1.0),
    ("test-arith", "greedy_pass@1", 1, None, 0.01),
    ("test-arith", "greedy_pass@1_se", 1, None, 0.0099498743710662),
    ("test-arith", "n", None, None, 100.0),
    ("test-arith", "pass@k", 1, None, 0.0125),
    ("test-arith", "pass@k", 4, None, 0.05),
    ("test-arith", "pass@k-s", 1, 1, 0.0125),
    ("test-arith", "pass@k-s", 4, 1, 0.05),
    ("test-arith", "pass@k-s", 4, 2, 0.0),
    ("test-arith", "pass@k-s_se", 1, 1, 0.005476072838939758),
    ("test-arith", "pass@k-s_se", 4, 1, 0.021904291355759033),
    ("test-arith", "pass@k-s_se", 4, 2, 0.0),
    ("test-arith", "pass@k_se", 1, None, 0.005476072838939758),
    ("test-arith", "pass@k_se", 4, None, 0.021904291355759033),
    ("test-arith", "reward@k-s", 1, 1, 0.0125),
    ("test-arith", "reward@k-s", 4, 1, 0.05),
    ("test-arith", "reward@k-s", 4, 2, 0.0),
    ("test-arith", "reward@k-s_se", 1, 1, 0.005476072838939758),
    ("test-arith", "reward@k-s_se", 4, 1, 0.021904291355759033),
    ("test-arith", "reward@k-s_se", 4, 2, 0.0),
    ("test-arith", "sampled_n", None, None, 400.0),
    ("test-arith", "sampled_scorer_errors", None, None, 0.0),
    ("test-arith", "sampled_wrong_answers", None, None, 395.0),
    ("test-arith", "scorer_errors", None, None, 0.0),
    ("test-arith", "wrong_answers", None, None, 99.0),
    ("train", "balance_score", None, None, 0.029166666666666664),
    ("train", "gold_examples", None, None, 0.0),
    ("train", "policy_kept", None, None, 0.0),
    ("train", "search_balance_score", None, None, 0.03472222222222222),
    ("train", "selected", None, None, 7.0),
    ("train", "selected_queries", None, None, 7.0),
]
ROWS = [dict(zip(("split", "name", "k", "s", "value"), r)) for r in ROUND_1_ROWS]

ROUND_1_METRICS = {
    "search/temperature": 1.0,
    "search/threshold": 0.0,
    "search/balance_score": 0.03472222222222222,
    "search/n_selected": 5.0,
    "search/n_unique_correct": 5.0,
    "search/n_queries": 48.0,
    "selected": 7.0,
    "test-arith/pass_at_1": 0.01,
}
ROUND_1_LAKE_METRICS = {
    **ROUND_1_METRICS,
    "test-arith/accuracy": 0.0125,
    "test-arith/diversity": 1.0,
    "test-arith/n": 100.0,
    "test-arith/pass_at_1_se": 0.0099498743710662,
    "test-arith/sampled_pass_at_1": 0.0125,
    "test-arith/sampled_pass_at_1_se": 0.005476072838939758,
    "test-arith/pass_at_4": 0.05,
    "test-arith/pass_at_4_se": 0.021904291355759033,
    "test-arith/pass_at_1-1": 0.0125,
    "test-arith/pass_at_4-1": 0.05,
    "test-arith/pass_at_4-2": 0.0,
    "test-arith/pass_at_1-1_se": 0.005476072838939758,
    "test-arith/pass_at_4-1_se": 0.021904291355759033,
    "test-arith/pass_at_4-2_se": 0.0,
    "test-arith/reward_at_1-1": 0.0125,
    "test-arith/reward_at_4-1": 0.05,
    "test-arith/reward_at_4-2": 0.0,
    "test-arith/reward_at_1-1_se": 0.005476072838939758,
    "test-arith/reward_at_4-1_se": 0.021904291355759033,
    "test-arith/reward_at_4-2_se": 0.0,
    "test-arith/sampled_n": 400.0,
    "test-arith/sampled_scorer_errors": 0.0,
    "test-arith/sampled_wrong_answers": 395.0,
    "test-arith/scorer_errors": 0.0,
    "test-arith/wrong_answers": 99.0,
    "train/balance_score": 0.029166666666666664,
    "train/gold_examples": 0.0,
    "train/policy_kept": 0.0,
    "train/search_balance_score": 0.03472222222222222,
    "train/selected": 7.0,
    "train/selected_queries": 7.0,
}


def smoke_cfg(*overrides: str):
    return load_config(SMOKE, overrides=list(overrides))


def send_rounds(track: TrackingConfig, run_id: str = RUN, params: dict | None = None) -> None:
    """Rounds 0, 1, 2, then round 2 again as a retried task would."""
    for i in (0, 1, 2, 2):
        tracking.track_round(track, run_id, i, SUMMARIES[i], params=params, final=i == 2)


# -- names and values --------------------------------------------------------------------------


def test_round_metrics_of_a_smoke_round():
    assert tracking.round_metrics(ROUND_1) == ROUND_1_METRICS
    assert tracking.round_metrics(START) == {"test-arith/pass_at_1": 0.02}


def test_round_metrics_with_the_rounds_lake_rows():
    got = tracking.round_metrics({**ROUND_1, "metrics": ROWS})
    assert got == ROUND_1_LAKE_METRICS
    for name in got:  # MLflow's own validator, and the documented character set
        _validate_metric_name(name)
        assert re.fullmatch(r"[A-Za-z0-9_\-./ ]+", name), name


def test_round_metrics_skips_what_is_not_a_number():
    # a method that does not search has no balance score; NaN and strings cannot be plotted
    summary = {"temperature": 0.8, "threshold": 0.0, "balance_score": None, "selected": 3, "policy": "ckpt",
               "pass@1": {"test-arith": float("nan"), "test-gsm8k": 0.5}, "note": "x"}
    assert tracking.round_metrics(summary) == {"search/temperature": 0.8, "search/threshold": 0.0, "selected": 3.0,
                                               "test-gsm8k/pass_at_1": 0.5}


def test_row_names_fill_in_k_and_s_and_keep_the_ranking_tag():
    assert tracking.row_name({"split": "test-gsm8k", "name": "reward@k-s[prm]", "k": 8, "s": 2}) == \
        "test-gsm8k/reward_at_8-2_prm"
    assert tracking.row_name({"split": "test-gsm8k", "name": "reward@k-s[answer+prm]", "k": 8, "s": 2}) == \
        "test-gsm8k/reward_at_8-2_answer_prm"
    assert tracking.row_name({"split": "test-gsm8k", "name": "queries_short_of_k", "k": 8, "s": None}) == \
        "test-gsm8k/queries_short_of_k_at_8"
    assert tracking.row_name({"split": "test-gsm8k", "name": "pass@k", "k": 8, "s": None}) == "test-gsm8k/pass_at_8"


def test_config_params_are_flat_masked_and_cut_to_mlflows_limit():
    cfg = smoke_cfg("storage.key=AKIAEXAMPLE", "storage.secret=hunter2-secret", "data.train.template=" + "x" * 7000)
    params = tracking.config_params(cfg)
    assert params["method"] == "bstar"
    assert params["iterations"] == "2"
    assert params["search.temperatures"] == "[0.6,1.0]"
    assert params["data.test.0.limit"] == "100"
    assert params["tracking.experiment"] == "bstar"
    assert params["data.train.template"] == "x" * tracking.MAX_PARAM_VALUE
    assert not any(k.startswith(("storage.key", "storage.secret")) for k in params)
    assert not any("hunter2" in v or "AKIAEXAMPLE" in v for v in params.values())


# -- MLflow ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def runs_tagged(client: MlflowClient, experiment: str, run_id: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`bstar.run_id` = '{run_id}'")


def history(client: MlflowClient, mlflow_run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(mlflow_run_id, key))


def test_mlflow_one_run_per_bstar_run_and_no_duplicate_points(mlflow_uri):
    track = TrackingConfig(mlflow_uri=mlflow_uri, experiment="smoke-rounds")
    params = tracking.config_params(smoke_cfg())
    send_rounds(track, params=params)
    tracking.track_round(track, "other-run", 1, ROUND_2, params=params)  # another bstar run, same experiment

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = runs_tagged(client, "smoke-rounds", RUN)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == RUN
    assert run.info.status == "FINISHED"  # the last round was sent with final=True
    mid = run.info.run_id
    assert history(client, mid, "search/temperature") == [(1, 1.0), (2, 0.6)]
    assert history(client, mid, "search/balance_score") == [(1, 0.03472222222222222), (2, 0.04861111111111111)]
    assert history(client, mid, "test-arith/pass_at_1") == [(0, 0.02), (1, 0.01), (2, 0.02)]
    assert history(client, mid, "selected") == [(1, 7.0), (2, 9.0)]
    assert run.data.params["method"] == "bstar"
    assert run.data.params["search.temperatures"] == "[0.6,1.0]"
    assert len(run.data.params) == len(params)

    other = runs_tagged(client, "smoke-rounds", "other-run")
    assert len(other) == 1 and other[0].info.run_id != mid
    assert history(client, other[0].info.run_id, "search/temperature") == [(1, 0.6)]


def test_mlflow_round_sent_again_after_a_gap_fills_it(mlflow_uri):
    # round 1 could not be sent (an outage) but round 2 was: a resumed run sends round 1 later
    track = TrackingConfig(mlflow_uri=mlflow_uri, experiment="smoke-gap")
    tracking.track_round(track, RUN, 2, ROUND_2)
    tracking.track_round(track, RUN, 1, ROUND_1)
    tracking.track_round(track, RUN, 2, ROUND_2)
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = runs_tagged(client, "smoke-gap", RUN)
    assert history(client, run.info.run_id, "search/temperature") == [(1, 1.0), (2, 0.6)]
    assert run.data.params == {}  # none given, none logged


# -- TensorBoard -------------------------------------------------------------------------------


def test_tensorboard_scalars_and_config_text(tmp_path):
    track = TrackingConfig(tensorboard_dir=str(tmp_path / "tb"))
    send_rounds(track, params=tracking.config_params(smoke_cfg()))

    acc = tracking.read_tensorboard(str(tmp_path / "tb" / RUN))
    assert acc is not None
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    assert [(s, pytest.approx(v)) for s, v in scalars["search/temperature"]] == [(1, 1.0), (2, 0.6)]
    assert [(s, pytest.approx(v)) for s, v in scalars["test-arith/pass_at_1"]] == [(0, 0.02), (1, 0.01), (2, 0.02)]
    assert sorted(scalars) == sorted(set(tracking.round_metrics(ROUND_1)) | set(tracking.round_metrics(START)))
    assert acc.Tags()["tensors"] == ["config/text_summary"]
    (text,) = acc.Tensors("config/text_summary")
    assert "| method | bstar |" in text.tensor_proto.string_val[0].decode()
    # one event file per round that had something new; round 2's resend had nothing
    assert len(list((tmp_path / "tb" / RUN).glob("events.out.tfevents.*"))) == 3


# -- the task ----------------------------------------------------------------------------------


def test_task_does_nothing_when_tracking_is_off(tmp_path, monkeypatch):
    def must_not_run(*a, **k):
        raise AssertionError("tracking is off: nothing may be sent")

    monkeypatch.setattr(tracking, "track_round", must_not_run)
    monkeypatch.setattr(tracking_task, "lake_of", must_not_run)
    root = tmp_path / "lake"
    cfg = smoke_cfg(f"storage.root={root}")
    assert track_round_task.fn(RUN, 1, ROUND_1, cfg.to_json()) is None
    assert not root.exists()


def test_task_sends_the_round_with_its_lake_rows(tmp_path, mlflow_uri):
    root = tmp_path / "lake"
    Lake(str(root)).write("metrics", pl.DataFrame(ROWS, schema={"split": pl.String, "name": pl.String, "k": pl.Int32,
                                                                "s": pl.Int32, "value": pl.Float64}), RUN, 1)
    cfg = smoke_cfg(f"storage.root={root}", f"tracking.mlflow_uri={mlflow_uri}", "tracking.experiment=smoke-task",
                    f"tracking.tensorboard_dir={tmp_path / 'tb'}")
    assert track_round_task.fn(RUN, 1, ROUND_1, cfg.to_json()) is True

    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = runs_tagged(client, "smoke-task", RUN)
    assert run.data.metrics == pytest.approx(ROUND_1_LAKE_METRICS)
    assert run.data.params["tracking.experiment"] == "smoke-task"
    assert run.info.status == "RUNNING"  # round 1 of 2: not the last
    acc = tracking.read_tensorboard(str(tmp_path / "tb" / RUN))
    assert set(acc.Tags()["scalars"]) == set(ROUND_1_LAKE_METRICS)


def test_task_warns_and_returns_false_when_mlflow_is_down(tmp_path, monkeypatch, caplog):
    # nothing listens on this port; MLflow's own HTTP retries off so the test stays short
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"
    attempts = []
    real = tracking.track_mlflow
    monkeypatch.setattr(tracking, "track_mlflow", lambda *a, **k: attempts.append(1) or real(*a, **k))
    cfg = smoke_cfg(f"storage.root={tmp_path / 'lake'}", f"tracking.mlflow_uri={uri}",
                    f"tracking.tensorboard_dir={tmp_path / 'tb'}")

    @flow
    def one_round() -> bool:
        # the task as the flows call it, with its retries, minus the wait between them
        return track_round_task.with_options(retry_delay_seconds=0)(RUN, 1, ROUND_1, cfg.to_json())

    with caplog.at_level(logging.WARNING, logger="bstar"):
        assert one_round() is False
    assert len(attempts) == 1 + tracking_task.RETRIES
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("bstar")]
    assert len(warnings) == 1
    assert f"mlflow at {uri}" in warnings[0] and "round 1 of smoke-trk" in warnings[0]
    # TensorBoard worked on every attempt, and the retries did not write its points twice
    acc = tracking.read_tensorboard(str(tmp_path / "tb" / RUN))
    assert [e.step for e in acc.Scalars("search/temperature")] == [1]


def test_missing_package_names_the_extra(monkeypatch):
    for mod in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, mod, None)  # import mlflow... raises ImportError
    with pytest.raises(tracking.TrackingError) as err:
        tracking.track_round(TrackingConfig(mlflow_uri="http://127.0.0.1:1"), RUN, 1, ROUND_1)
    ((name, where, cause),) = err.value.failures
    assert (name, where, type(cause)) == ("mlflow", "http://127.0.0.1:1", ImportError)
    assert "pip install 'bstar[tracking]'" in str(cause)
