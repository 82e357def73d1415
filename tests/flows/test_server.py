"""The served `bstar-run` deployment against a real Prefect server: fail, then retry from the UI.

A fixture starts `prefect server start` in its own process group (isolated PREFECT_HOME). The
test serves the deployments with `bstar serve --limit 1`, triggers `bstar-run/bstar-run` through
the API with `BSTAR_INJECT_FAULT=fine-tune@2` set in the serving process (the flow-run subprocess
inherits it), waits for the run to fail in round 2's fine-tune, restarts `bstar serve` without
the fault and retries the same flow run as the UI's Retry button does (`prefect flow-run retry`:
the run goes back to Scheduled and the serving process picks it up). The retry must reuse the
run_id, leave every part file written by the first attempt untouched, skip the completed stages
(Prefect state `Cached`) and redo only round 2's fine-tune and what follows it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.prefect_server import BIN, REPO, Serve, log_tail, prefect_server_process
from tests.prefect_server import wait_final as _wait_final

SMOKE_REL = "deployments/configs/smoke.yaml"
DEPLOYMENT = "bstar-run/bstar-run"
FAULT = "fine-tune@2"
RUN_TIMEOUT = 900  # one attempt of the smoke run; the machine may be shared and slow
_log_tail = log_tail


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on a free port; yields {api, env, logs}."""
    with prefect_server_process(tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("logs")) as server:
        yield server


@pytest.fixture()
def client(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["api"]}):
        with get_client(sync_client=True) as c:
            yield c


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture()
def serving(prefect_server, client):
    s = Serve(prefect_server)
    yield s
    alive = s.stop_all()
    assert not alive, f"bstar serve processes survived teardown: {alive}"


def wait_final(client, flow_run_id, log: Path | None, timeout: float = RUN_TIMEOUT):
    return _wait_final(client, flow_run_id, log, timeout)


def part_files(root: str) -> dict[str, tuple[int, int, str]]:
    """Every part file under the lake root → (size, mtime_ns, sha256)."""
    from bstar.storage.lake import Lake

    out = {}
    for files in Lake(root).all_parts().values():
        for f in files:
            st = os.stat(f)
            out[f] = (st.st_size, st.st_mtime_ns, hashlib.sha256(Path(f).read_bytes()).hexdigest())
    return out


def flow_runs_named(client, suffix: str, after=None) -> list:
    from prefect.client.schemas.filters import FlowRunFilter

    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"like_": suffix}), limit=200)
    return [r for r in runs if r.name.endswith(suffix) and (after is None or r.created > after)]


def task_runs_of(client, flow_run_ids: list) -> list:
    from prefect.client.schemas.filters import FlowRunFilter

    if not flow_run_ids:
        return []
    return client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": list(flow_run_ids)}), limit=200)


def states(task_runs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for tr in task_runs:
        out.setdefault(tr.name.rsplit("-", 1)[0], []).append(tr.state.name if tr.state else "?")
    return out


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.slow  # about 5 minutes on 2 CPU cores: two attempts of the smoke run
def test_served_run_fails_then_ui_retry_resumes_from_cache(prefect_server, client, serving, tmp_path):
    from prefect.deployments import run_deployment

    from bstar.storage.lake import Lake
    from bstar.storage.schemas import TABLES

    root = str(tmp_path / "lake")
    t0 = time.monotonic()

    # 1. serve with the fault on, trigger the deployment through the API, wait for the failure
    first = serving.start(fault=FAULT)
    dep = client.read_deployment_by_name(DEPLOYMENT)
    assert dep.entrypoint == "bstar.flows.run.bstar_run", dep.entrypoint  # module path, not a file
    with_settings = _api_settings(prefect_server["api"])
    with with_settings:
        fr = run_deployment(
            name=DEPLOYMENT,
            parameters={"config": SMOKE_REL, "overrides": [f"storage.root={root}"]},
            timeout=0,
        )
    fr = wait_final(client, fr.id, serving.log)
    assert fr.state.is_failed(), f"expected FAILED, got {fr.state}:\n{_log_tail(serving.log)}"
    assert "fault injected into stage fine-tune (iteration 2)" in _log_tail(serving.log, 1_000_000), _log_tail(
        serving.log
    )
    print(f"\nfirst attempt failed after {time.monotonic() - t0:.0f}s")

    lake = Lake(root)
    run_ids = {p.split("run_id=", 1)[1].split("/", 1)[0] for fs in lake.all_parts().values() for p in fs}
    assert len(run_ids) == 1, run_ids
    (run_id,) = run_ids
    assert run_id == f"smoke-{str(fr.id)[:8]}", run_id
    for table in ("candidates", "rewards", "search", "selections", "metrics"):
        assert lake.exists(table, run_id, 1), f"round 1 wrote no {table}"
    # fine-tune writes a checkpoint only when the round selected something (the tiny smoke model
    # often gets nothing right in round 1; the round then keeps its starting policy)
    assert lake.exists("checkpoints", run_id, 1) == (lake.read("selections", run_id, 1).height > 0)
    assert lake.exists("selections", run_id, 2), "round 2's selections are missing"
    assert not lake.exists("checkpoints", run_id, 2), "round 2's fine-tune should have failed before its checkpoint"
    assert not lake.exists("metrics", run_id, 2)

    before = part_files(root)
    assert before
    first_attempt_subflows = {r.id for r in flow_runs_named(client, f"{run_id}-round-2")}

    # 2. serve again without the fault; retry the same flow run as the UI does
    serving.stop(first)
    serving.start(fault=None)
    retried_at = client.read_flow_run(fr.id).state.timestamp
    out = subprocess.run(
        [str(BIN / "prefect"), "flow-run", "retry", str(fr.id)],
        cwd=REPO,
        env=prefect_server["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    fr2 = wait_final(client, fr.id, serving.log)
    assert fr2.state.is_completed(), f"retry ended {fr2.state}:\n{_log_tail(serving.log)}"
    assert fr2.run_count >= 2, fr2.run_count
    print(f"retry completed after {time.monotonic() - t0:.0f}s in total")

    # 3. same run_id, old parts untouched, round 2 finished, no duplicate keys
    after = part_files(root)
    run_ids = {p.split("run_id=", 1)[1].split("/", 1)[0] for p in after}
    assert run_ids == {run_id}, run_ids
    changed = {p: (before[p], after.get(p)) for p in before if after.get(p) != before[p]}
    assert not changed, f"part files rewritten or removed by the retry: {changed}"
    assert lake.exists("metrics", run_id, 2), "round 2's evaluation did not run"
    n_selected_2 = lake.read("selections", run_id, 2).height
    assert lake.exists("checkpoints", run_id, 2) == (n_selected_2 > 0), n_selected_2
    if n_selected_2 == 0:
        print("note: round 2 selected no responses, so its fine-tune kept the policy and wrote no checkpoint")
    for table in TABLES:
        dup = lake.duplicate_keys(table)
        assert dup.is_empty(), f"{table}: duplicate keys after the retry:\n{dup}"

    # 4. Prefect's view: completed stages came from the cache, round 2's fine-tune ran again
    parent = task_runs_of(client, [fr.id])
    parent_states = states(tr for tr in parent if tr.created > retried_at)
    print("parent task runs of the retry:", parent_states)
    assert parent_states.get("warm-up") == ["Cached"], parent_states

    round2 = [r for r in flow_runs_named(client, f"{run_id}-round-2") if r.id not in first_attempt_subflows]
    assert len(round2) == 1, [(r.name, r.state_name) for r in flow_runs_named(client, f"{run_id}-round-2")]
    assert round2[0].state.is_completed(), round2[0].state
    r2_states = states(task_runs_of(client, [round2[0].id]))
    print("round-2 task runs of the retry:", r2_states)
    for stage in ("sample-candidates", "score-candidates", "select-data"):
        assert r2_states.get(stage) == ["Cached"], (stage, r2_states)
    assert r2_states.get("fine-tune") == ["Completed"], r2_states

    # round 1 completed in the first attempt: its sub-flow run is reused, not run again
    assert len(flow_runs_named(client, f"{run_id}-round-1")) == 1, flow_runs_named(client, f"{run_id}-round-1")

    search2 = [r for r in flow_runs_named(client, f"{run_id}-search-2") if r.created > retried_at]
    s2_states = states(task_runs_of(client, [r.id for r in search2]))
    print("round-2 search task runs of the retry:", s2_states)
    assert s2_states and all(s == "Cached" for v in s2_states.values() for s in v), s2_states

    eval2 = [r for r in flow_runs_named(client, f"{run_id}-eval-2") if r.created > retried_at]
    e2_states = states(task_runs_of(client, [r.id for r in eval2]))
    assert e2_states and all(s == "Completed" for v in e2_states.values() for s in v), e2_states


def _api_settings(api: str):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: api})

