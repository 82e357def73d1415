"""publish_report_artifacts under Prefect's test harness: markdown with embedded plots + tables."""

import base64
import json

import pytest

from .conftest import CHOSEN, PASS1, PASS_KS, TEMPS, THRESHOLDS


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_artifacts_are_attached_to_the_flow_run(harness, report_lake):
    from prefect import flow
    from prefect.artifacts import Artifact
    from prefect.context import get_run_context

    from bstar.reports import publish_report_artifacts

    @flow
    def report_flow(run_id: str, root: str):
        keys = publish_report_artifacts(run_id, root)
        return keys, str(get_run_context().flow_run.id)

    keys, flow_run_id = report_flow("alpha", report_lake)
    assert keys == ["alpha-report", "alpha-report-search"]

    md = Artifact.get("alpha-report")
    assert md.type == "markdown" and str(md.flow_run_id) == flow_run_id
    text = md.data
    for it, v in enumerate(PASS1["alpha"]):
        assert f"| {it} | test | {v:.4f} |" in text
    images = [chunk.split(")", 1)[0] for chunk in text.split("(data:image/png;base64,")[1:]]
    assert len(images) == 8  # pass1, pass@k-s, reward@k-s, diversity, balance, chosen, heat map, histogram
    for b64 in images:
        raw = base64.b64decode(b64)
        assert raw.startswith(b"\x89PNG") and len(raw) < 120_000
    for it, (t, h) in CHOSEN.items():
        assert f"| {it} | {t:g} | {h:g} |" in text

    grid = Artifact.get("alpha-report-search")
    rows = json.loads(grid.data) if isinstance(grid.data, str) else grid.data
    chosen = sorted((r["round"], r["temperature"], r["threshold"]) for r in rows if r["chosen"])
    assert chosen == [(it, t, h) for it, (t, h) in sorted(CHOSEN.items())]


def test_from_a_task_and_without_search(harness, report_lake):
    from prefect import flow, task
    from prefect.artifacts import Artifact

    from bstar.reports import publish_report_artifacts

    @task
    def publish(run_id: str, root: str) -> list[str]:
        return publish_report_artifacts(run_id, root)

    @flow
    def report_flow(root: str):
        return publish("solo", root)

    # one round, greedy Pass@1 only, no search: no search table, no sampled plots
    assert report_flow(report_lake) == ["solo-report"]
    md = Artifact.get("solo-report")
    assert md.task_run_id is not None
    assert md.data.count("data:image/png;base64,") == 1


def test_rounds_table_is_one_wide_artifact_updated_in_place(harness, report_lake):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.context import get_run_context

    from bstar.config import parse_config
    from bstar.reports.artifacts import publish_rounds_artifact

    cfg = parse_config({"eval": {"k": 4, "ks": [1, 4], "ss": [1, 2]}, "storage": {"root": report_lake},
                        "search": {"temperatures": TEMPS, "thresholds": THRESHOLDS}})

    @flow
    def rounds_flow() -> str:
        publish_rounds_artifact("alpha", cfg, {"round 1": "http://ui/1"})  # after round 1
        publish_rounds_artifact("alpha", cfg, {"round 1": "http://ui/1", "round 2": "http://ui/2"})
        return str(get_run_context().flow_run.id)

    flow_run_id = rounds_flow()
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["alpha-rounds"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(found) == 1, found  # updated, not one version per round
    art = found[0]
    assert art.type == "table"
    rows = json.loads(art.data)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["Pass@1 (greedy) ± SE"] for r in rows] == [f"{v:.4f} ± 0.0125" for v in PASS1["alpha"]]
    assert [r["Pass@4 ± SE"] for r in rows] == [f"{v:.4f}" for v in PASS_KS[(4, 1)]]  # no SE stored
    assert [r["Pass@4-2 ± SE"] for r in rows] == [f"{v:.4f}" for v in PASS_KS[(4, 2)]]
    assert [(r["t (temperature)"], r["τ (threshold)"]) for r in rows] == [(None, None), CHOSEN[1], CHOSEN[2]]
    assert "[round 2](http://ui/2)" in art.description
    assert "K = 4 responses per test query sampled at temperature 0.7" in art.description
