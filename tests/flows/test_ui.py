"""The Prefect UI as the cockpit, against a real `prefect server start` (UI on) and `bstar serve`.

A module fixture starts the server and `bstar serve`. The tests then do what a researcher does
in the UI, through the same API the UI calls, and look at the pages in headless Chromium:

* the `bstar-run` deployment's parameters are typed: `config` is the `RunConfig` model (every
  field with its description) prefilled from `deployments/configs/smoke.yaml`, with a `root`
  parameter; a run started with the form's JSON (a nested `search.temperatures` edited, two
  local shards per stage under serve's one `gpu` slot) runs with exactly that config, shows the
  resolved config, a round × metric table and a link to the HTML report it wrote into the lake,
  and bstar's own log lines in its logs;
* Chromium renders the run form (the config fields' labels and descriptions) and the round
  table artifact (its column headers);
* a bad override fails the run with one line naming the override;
* a schedule created through the API fires and the served run completes;
* a second `bstar serve` warns that the deployments are already served; SIGINT stops it cleanly;
  SIGTERM stops a serve whose server is gone within its bounded wait.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.prefect_server import Serve, log_tail, prefect_server_process, wait_final

SMOKE = "deployments/configs/smoke.yaml"
DEPLOYMENT = "bstar-run/bstar-run"
RUN_TIMEOUT = 600
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (make system-deps)")
# a smaller run that still does every stage once
TINY_OVERRIDES = ["iterations=1", "training.warmup.steps=40"]


@pytest.fixture(scope="module")
def cockpit(tmp_path_factory):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, logs = tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("logs")
    # the scheduler service visits schedules every 2 s instead of 60 s, so a schedule fires in the test
    with prefect_server_process(home, logs, ui=True, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2") as server:
        serve = Serve(server)
        serve.start()
        try:
            with temporary_settings(updates={PREFECT_API_URL: server["api"]}):
                with get_client(sync_client=True) as client:
                    yield {**server, "client": client, "serve": serve, "tmp": tmp_path_factory.mktemp("runs")}
        finally:
            alive = serve.stop_all()
            assert not alive, f"bstar serve processes survived: {alive}"


def _run(cockpit, parameters: dict):
    from prefect.deployments import run_deployment

    fr = run_deployment(name=DEPLOYMENT, parameters=parameters, timeout=0)
    return wait_final(cockpit["client"], fr.id, cockpit["serve"].log, RUN_TIMEOUT)


def _artifacts(client, flow_run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


def _logs(client, flow_run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    out, page = [], 200  # the API's largest page
    while True:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                limit=page, offset=len(out))
        out += [entry.message for entry in logs]
        if len(logs) < page:
            return "\n".join(out)


def _logs_with(client, flow_run_id, text: str, timeout: float = 120) -> str:
    """The run's logs once `text` is among them (log lines reach the API in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = _logs(client, flow_run_id)
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(1)


def _dom(tmp_path: Path, url: str) -> str:
    """The page's DOM after its scripts ran (the UI is a single-page app fed by the API)."""
    p = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'chrome'}",
         "--virtual-time-budget=15000", "--window-size=1280,4000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def _text(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


# -- 1. typed parameters, the run's own artifacts and logs -------------------------------------


@pytest.fixture(scope="module")
def form_run(cockpit):
    """The smoke config from the deployment's form defaults, `search.temperatures` edited, run."""
    client = cockpit["client"]
    dep = client.read_deployment_by_name(DEPLOYMENT)
    config = json.loads(json.dumps(dep.parameters["config"]))
    config["search"]["temperatures"] = [0.7, 0.9]
    config["iterations"] = 1
    config["training"]["warmup"]["steps"] = 40
    config["execution"]["shards"] = 2  # two local shards per stage, under serve's one `gpu` slot
    root = str(cockpit["tmp"] / "form-lake")
    fr = _run(cockpit, {"config": config, "root": root})
    assert fr.state.is_completed(), f"{fr.state}:\n{log_tail(cockpit['serve'].log)}"
    return {"deployment": dep, "flow_run": fr, "root": root, "run_id": f"smoke-{str(fr.id)[:8]}"}


def test_deployment_parameters_are_typed_and_prefilled(cockpit):
    from bstar.config import load_config

    dep = cockpit["client"].read_deployment_by_name(DEPLOYMENT)
    schema = dep.parameter_openapi_schema
    config = schema["properties"]["config"]
    assert {"$ref": "#/definitions/RunConfig"} in config["anyOf"] and {"type": "string"} in config["anyOf"]
    assert {"root", "run_id", "overrides"} <= set(schema["properties"])
    search = schema["definitions"]["SearchConfig"]["properties"]["temperatures"]
    assert search["type"] == "array" and search.get("description")
    # the form opens with the YAML's contents (read when serve started), secrets never included
    assert dep.parameters["config"] == json.loads(load_config(SMOKE).to_json())


def test_form_run_uses_the_edited_config(form_run):
    from bstar.config import config_from_json
    from bstar.storage.lake import Lake

    lake, run_id = Lake(form_run["root"]), form_run["run_id"]
    recorded = config_from_json(lake.read("runs", run_id, 0)["config"][0])
    assert recorded.search.temperatures == [0.7, 0.9]
    assert recorded.iterations == 1 and recorded.storage.root == form_run["root"]
    assert set(lake.read("search", run_id, 1)["temperature"].to_list()) == {0.7, 0.9}


def test_run_shows_config_rounds_table_report_link_and_logs(cockpit, form_run):
    from bstar.storage.lake import Lake

    client, run_id, root = cockpit["client"], form_run["run_id"], form_run["root"]
    arts = _artifacts(client, form_run["flow_run"].id)
    for suffix in ("config", "rounds", "report", "report-html"):
        assert f"{run_id}-{suffix}" in arts, sorted(arts)

    assert "temperatures:\n  - 0.7\n  - 0.9" in arts[f"{run_id}-config"].data
    rounds = json.loads(arts[f"{run_id}-rounds"].data)
    assert [r["round"] for r in rounds] == [0, 1]
    lake = Lake(root)
    sel = lake.read("selections", run_id, 1, "train")
    assert rounds[1]["selected responses"] == sel.filter(sel["sample_idx"] >= 0).height
    assert rounds[1]["t (temperature)"] in (0.7, 0.9) and rounds[1]["τ (threshold)"] == 0.0
    assert re.fullmatch(r"\d\.\d{4} ± \d\.\d{4}", rounds[1]["Pass@1 (greedy) ± SE"]), rounds[1]
    description = arts[f"{run_id}-rounds"].description
    assert "selected responses: self-generated responses with reward > τ" in description
    assert f"/artifacts/key/{run_id}-round-1" in description  # the round artifact, linked

    html = Path(root) / "_reports" / f"{run_id}.html"
    assert html.is_file() and "<html" in html.read_text()[:500].lower()
    assert f"({html.as_uri()})" in arts[f"{run_id}-report-html"].data

    logs = _logs_with(client, form_run["flow_run"].id, "report: ")
    assert f"run {run_id}: lake {root}; bstar, 1 rounds" in logs, logs[-3000:]
    assert re.search(r"round 1: t=0\.[79], τ=0\.0 \(balance score \d\.\d{4}\); \d+ responses selected", logs), logs[-3000:]


def test_form_run_with_two_local_shards_completes_under_one_gpu_slot(cockpit, form_run):
    """`bstar serve` makes a `gpu` limit of one slot; Prefect holds a task run's tag slots for its
    whole life. The shards hold the slot, their coordinators never do (before, `sample-candidates`
    held it in the start evaluation while its `sample-shard` waited forever)."""
    from prefect.client.schemas.filters import FlowRunFilter

    client, run_id = cockpit["client"], form_run["run_id"]
    assert client.read_concurrency_limit_by_tag("gpu").concurrency_limit == 1
    flows = [f.id for f in client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"like_": run_id}), limit=50)
             if f.name.startswith(run_id)]
    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": flows}), limit=200)
    holds: dict[str, set[bool]] = {}
    for t in runs:
        holds.setdefault(t.name.rsplit("-", 1)[0], set()).add("gpu" in t.tags)
    assert holds["sample-candidates"] == holds["score-candidates"] == holds["warm-up"] == holds["fine-tune"] == {False}
    assert holds["sample-shard"] == {True} and holds["score-shard"] == {False}  # answer-only scoring: no device
    # greedy + sampled evaluation at the start and after round 1, the search and the round: 2 shards each
    shards = [t for t in runs if t.name.startswith("sample-shard")]
    assert len(shards) == 12 and all(t.state.is_completed() for t in shards)


@needs_chromium
def test_browser_renders_the_form_fields_and_the_rounds_table(cockpit, form_run, tmp_path):
    from bstar.config import RunConfig, SearchConfig

    dep = form_run["deployment"]
    form = _text(_dom(tmp_path, f"{cockpit['ui']}/deployments/deployment/{dep.id}/run"))
    for label in ("Iterations", "Temperatures", "Thresholds", "Queries Per Round", "root"):
        assert label in form, form[:3000]
    # the field descriptions are the config models' own (their markdown rendered as text)
    for described in (RunConfig.model_fields["iterations"], SearchConfig.model_fields["temperatures"]):
        words = re.sub(r"[`*]", "", described.description).split()[:6]
        assert " ".join(words) in form, (words, form[:3000])

    arts = _artifacts(cockpit["client"], form_run["flow_run"].id)
    table = _dom(tmp_path, f"{cockpit['ui']}/artifacts/artifact/{arts[form_run['run_id'] + '-rounds'].id}")
    headers = [_text(h).strip() for h in re.findall(r"<th\b[^>]*>(.*?)</th>", table, flags=re.S)]
    for header in ("round", "Pass@1 (greedy) ± SE", "Pass@4 ± SE", "Pass@4-2 ± SE", "Reward@4-2 ± SE",
                   "diversity", "balance score", "t (temperature)", "τ (threshold)", "selected responses"):
        assert header in headers, headers


# -- 2. a bad override -------------------------------------------------------------------------


def test_bad_override_fails_with_one_line_naming_it(cockpit):
    fr = _run(cockpit, {"config": SMOKE, "overrides": ["storage.rot=/tmp/x"]})
    assert fr.state.is_failed(), fr.state
    expected = (f"overrides of {SMOKE}: invalid run config:\n"
                "  storage.rot: unknown key (from the override storage.rot=/tmp/x)")
    assert fr.state.message == f"ConfigError: {expected}", fr.state.message  # what the UI shows on the run
    # log lines reach the API in batches: wait for the run's last one
    logs = _logs_with(cockpit["client"], fr.id, "Finished in state")
    assert f"\nConfigError: {expected}" in logs, logs  # bstar's own line
    # the flow returns the failure instead of raising it: none of bstar's frames is logged, and
    # Prefect's engine logs its one traceback of the re-raised error (not two)
    assert logs.count("Traceback") <= 1 and "bstar/flows/run.py" not in logs, logs


# -- 3. a schedule -----------------------------------------------------------------------------


@pytest.mark.slow  # ~40 s
def test_schedule_created_through_the_api_fires(cockpit):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
    from prefect.client.schemas.schedules import IntervalSchedule

    client = cockpit["client"]
    dep = client.read_deployment_by_name(DEPLOYMENT)
    root = str(cockpit["tmp"] / "scheduled-lake")
    anchor = datetime.now(timezone.utc) + timedelta(seconds=5)
    schedules = client.create_deployment_schedules(
        dep.id, [(IntervalSchedule(interval=timedelta(days=1), anchor_date=anchor), True)],
        parameters={"config": SMOKE, "root": root, "overrides": [*TINY_OVERRIDES, "eval.start=false"]},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                                                     flow_run_filter=FlowRunFilter(), limit=50) if r.auto_scheduled]
            if runs:
                break
            assert time.monotonic() < deadline, "the schedule created no flow run in 120 s"
            time.sleep(2)
        first = min(runs, key=lambda r: r.expected_start_time)
        assert abs((first.expected_start_time - anchor).total_seconds()) < 1, (first.expected_start_time, anchor)
        fr = wait_final(client, first.id, cockpit["serve"].log, RUN_TIMEOUT)
    finally:  # (removing a schedule deletes the runs it scheduled that have not started)
        for s in schedules:
            client.delete_deployment_schedule(dep.id, s.id)
    assert fr.state.is_completed(), f"{fr.state}:\n{log_tail(cockpit['serve'].log)}"
    assert (Path(root) / "_reports").is_dir()  # the YAML path resolved against serve's workdir


# -- 4. serving twice, stopping ----------------------------------------------------------------


def test_second_serve_warns_and_stops_cleanly_on_sigint(cockpit):
    serve = cockpit["serve"]
    second = serve.start()
    log = serve.log
    assert f"WARNING: deployment {DEPLOYMENT} was polled" in log_tail(log, 100_000), log_tail(log)
    t0 = time.monotonic()
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=60) == 0, log_tail(log)
    assert time.monotonic() - t0 < 30
    text = log_tail(log, 100_000)
    assert "never awaited" not in text and "Traceback" not in text, text
    # the first serve still serves: its schedules were paused by the second's stop, not its runner
    assert serve.procs[0].poll() is None


def test_sigterm_stops_serve_within_its_bound_when_the_server_is_gone(tmp_path):
    from tests.prefect_server import stop_process

    with prefect_server_process(tmp_path / "home", tmp_path) as server:
        serve = Serve(server)
        proc = serve.start(args=("--stop-timeout", "5"))
        assert not stop_process(server["proc"])  # the server goes away first
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_tail(serve.log)
        took = time.monotonic() - t0
        text = log_tail(serve.log, 100_000)
        assert took < 25, (took, text)
        assert "never awaited" not in text, text
        assert "stopping:" in text, text
