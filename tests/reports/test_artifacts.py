"""publish_report_artifacts under Prefect's test harness: markdown with embedded plots + tables."""

import base64
import json

import pytest

from .conftest import CHOSEN, PASS1


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
    assert keys == ["alpha-report", "alpha-report-metrics", "alpha-report-search"]

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

    metrics = Artifact.get("alpha-report-metrics")
    rows = json.loads(metrics.data) if isinstance(metrics.data, str) else metrics.data
    p1 = {r["round"]: r["value"] for r in rows if r["metric"] == "greedy_pass@1"}
    assert p1 == dict(enumerate(PASS1["alpha"]))

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
    assert report_flow(report_lake) == ["solo-report", "solo-report-metrics"]
    md = Artifact.get("solo-report")
    assert md.task_run_id is not None
    assert md.data.count("data:image/png;base64,") == 1
