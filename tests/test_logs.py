"""bstar's own log lines and progress reach the Prefect run they happen in (bstar.logs), and
nothing is forwarded or warned about outside a run."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from tests.flows.conftest import prefect_harness  # noqa: F401 - the suite's temporary Prefect server

MESSAGE = "stage demo: 12 candidates written (3 queries x K=4), marker {}"


def _flow_with_a_logging_task(marker: str, total: int, disable: bool = False):
    """A flow whose task logs one bstar line and drives a progress bar to the end."""
    from prefect import flow, task
    from prefect.runtime import flow_run

    from bstar import logs

    @task(name="bstar-logs-demo")
    def demo() -> None:
        logging.getLogger("bstar.demo").info(MESSAGE.format(marker))
        # artifact and log throttles at 0: every update reports, so the test sees each kind
        with logs.progress(total, f"demo {marker}", unit="row", artifact_every_s=0, log_every_s=0,
                           disable=disable) as bar:
            for _ in range(total):
                bar.update(1)

    @flow(name="bstar-logs-demo")
    def demo_flow() -> str:
        demo()
        return str(flow_run.id)

    return demo_flow


def _wait_for(fetch, ready, timeout: float = 20.0):
    """`fetch()` until `ready(result)`: the API log sender ships records in batches."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if ready(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_bstar_lines_and_progress_reach_the_task_run(prefect_harness):  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        LogFilter,
        LogFilterFlowRunId,
    )

    import bstar.tasks.common  # noqa: F401 - what stage modules import: installs the forwarder

    marker = uuid.uuid4().hex[:8]
    flow_run_id = _flow_with_a_logging_task(marker, total=7)()
    expected = MESSAGE.format(marker)

    with get_client(sync_client=True) as client:
        def bstar_logs():
            found = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return [lg for lg in found if lg.name.startswith("bstar.")]

        done = f"demo {marker}: 7/7 (100%), "  # the bar's last line, logged on close
        logs = _wait_for(bstar_logs, lambda got: any(lg.message.startswith(done) for lg in got))
        lines = [lg for lg in logs if lg.message == expected]
        assert len(lines) == 1, [lg.message for lg in logs]  # once: not twice through two handlers
        assert lines[0].task_run_id is not None  # on the task run, not only the flow run
        assert lines[0].level == logging.INFO and lines[0].name == "bstar.demo"
        progress_lines = [lg.message for lg in logs if lg.name == "bstar.progress"]
        assert progress_lines and progress_lines[-1].startswith(done), progress_lines
        assert any(m.startswith(f"demo {marker}: 1/7 (14%), ") and "eta" in m for m in progress_lines)

        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["progress"])))
        assert [(a.description, a.data) for a in artifacts] == [(f"demo {marker}", 100.0)]
        assert artifacts[0].task_run_id == lines[0].task_run_id


def test_a_disabled_bar_reports_nothing_to_the_run(prefect_harness):  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    import bstar.tasks.common  # noqa: F401

    marker = uuid.uuid4().hex[:8]
    flow_run_id = _flow_with_a_logging_task(marker, total=5, disable=True)()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert artifacts == []


def test_outside_a_run_nothing_is_forwarded_and_nothing_warns(monkeypatch, recwarn, caplog, capsys):
    from prefect.logging import handlers

    from bstar import logs

    logs.install()
    logs.install()  # idempotent: one forwarder
    bstar_logger = logging.getLogger("bstar")
    assert sum(isinstance(h, logs.RunLogForwarder) for h in bstar_logger.handlers) == 1
    assert bstar_logger.getEffectiveLevel() == logging.INFO
    sent = []
    monkeypatch.setattr(handlers, "emit_api_log", sent.append)

    with caplog.at_level(logging.INFO):
        logging.getLogger("bstar.somewhere").info("outside any run: %d rows", 5)
        with logs.progress(3, "outside", disable=True, log_every_s=0) as bar:
            bar.update(3)
    assert sent == []  # nothing queued for the API
    assert [w for w in recwarn if "flow run" in str(w.message).lower()] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("bstar")] == ["outside any run: 5 rows"]
    assert bar.n == 3 and not bar.report  # counted, nothing reported outside a run
    assert "flow run id" not in capsys.readouterr().err


def test_rate_line():
    from bstar.logs import rate_line

    assert rate_line("sample k=8 t=0.7", 1200, 4000, 29.27) == "sample k=8 t=0.7: 1200/4000 (30%), 41/s, eta 68s"
    assert rate_line("sft[online]", 200, 200, 12.0) == "sft[online]: 200/200 (100%), 16.7/s, 12s"
    assert rate_line("prm score", 0, 10, 0.0) == "prm score: 0/10 (0%), 0/s, eta ?"


@pytest.fixture(autouse=True)
def _restore_bstar_logger():
    """Leave the `bstar` logger as the test found it (the forwarder stays: it is process-wide)."""
    logger = logging.getLogger("bstar")
    level = logger.level
    yield
    logger.setLevel(level)


def test_outside_a_run_warnings_still_reach_stderr():
    """The forwarder must not swallow what Python printed before it existed (last-resort handler)."""
    import subprocess
    import sys

    code = ("import logging, bstar.logs as l; l.install(); "
            "logging.getLogger('bstar.x').warning('disk almost full'); logging.getLogger('bstar.x').info('quiet')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "disk almost full"
