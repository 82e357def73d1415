"""The Prefect server SIGKILLed and restarted (same port, same database) during a served run.

`bstar serve --limit 1` serves the deployments to the session's Prefect server; the test starts
`bstar-run/bstar-run` on faults.yaml through the API, kills the server once round 1 is under
way (in the warm-up, which holds the `gpu` slot), starts it again and waits. Either the run rides out the outage (its client retries) and
completes, or it ends Crashed/Failed and a retry of the same flow run (`prefect flow-run retry`,
the UI's Retry) resumes it from the cache. Both ways the final lake must equal the reference and no `gpu` slot may stay taken.

The server must keep concurrency leases on disk (PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=
prefect.server.concurrency.lease_storage.filesystem, set by the fixture): a run that holds the
`gpu` slot when the server dies cannot give it back, and with the default in-memory lease storage
the restarted server forgets the lease, so the slot stays taken and the retry waits forever. On
disk, the lease expires (60 s for task slots) and the retry goes on.

    BSTAR_TORCH_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/pytest tests/reliability/test_faults_server.py -m slow -s
"""

from __future__ import annotations

import subprocess
import time

import pytest

from bstar.storage.lake import Lake

from .conftest import BIN, REPO, RUN_ID, assert_same_lake, kill_group, lake_tables, log_tail

DEPLOYMENT = "bstar-run/bstar-run"
CONFIG_REL = "tests/reliability/faults.yaml"


def final_state(server, flow_run_id, log, timeout: float = 900):
    """Poll the API (which may be down for a while) until the flow run is in a final state."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api}), get_client(sync_client=True) as c:
                fr = c.read_flow_run(flow_run_id)
            if fr.state is not None and fr.state.is_final():
                return fr
        except Exception:  # noqa: BLE001 - the server is restarting
            pass
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} not final after {timeout}s:\n{log_tail(log)}")


@pytest.mark.slow  # ~3-4 minutes: serve, a run with a server restart in the middle, maybe a retry
def test_prefect_server_restarted_during_a_served_run(prefect_server, reference, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path / "lake"
    log = tmp_path / "serve.log"
    env = {**prefect_server.env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    with open(log, "wb") as fh:
        serve = subprocess.Popen([str(BIN / "bstar"), "serve", "--limit", "1"], cwd=REPO, env=env, stdout=fh,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "being served" not in log_tail(log, 100_000):
            assert serve.poll() is None and time.monotonic() < deadline, log_tail(log)
            time.sleep(1)
        with temporary_settings(updates={PREFECT_API_URL: prefect_server.api}):
            fr = run_deployment(name=DEPLOYMENT, timeout=0, parameters={
                "config": CONFIG_REL, "run_id": RUN_ID, "overrides": [f"storage.root={root}"]})
        # restart during the warm-up: a long stage that holds the `gpu` slot for certain
        lake, init = Lake(str(root)), root / "_checkpoints" / RUN_ID / "init"
        while not init.exists():
            assert serve.poll() is None and time.monotonic() < deadline + 600, log_tail(log)
            time.sleep(0.2)
        assert not lake.exists("checkpoints", RUN_ID, 0), "the warm-up ended before the restart"
        t0 = time.monotonic()
        prefect_server.restart()  # SIGKILL, then the same port and database
        outage = time.monotonic() - t0
        first = final_state(prefect_server, fr.id, log)
        recovered = first.state.is_completed()
        t_retry = time.monotonic()
        if not recovered:
            out = subprocess.run([str(BIN / "prefect"), "flow-run", "retry", str(fr.id)], cwd=REPO,
                                 env=prefect_server.env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
            time.sleep(5)
            second = final_state(prefect_server, fr.id, log)
            assert second.state.is_completed(), f"retry ended {second.state}:\n{log_tail(log)}"
        retry_s = time.monotonic() - t_retry
        with temporary_settings(updates={PREFECT_API_URL: prefect_server.api}), get_client(sync_client=True) as c:
            assert c.read_flow_run(fr.id).state.is_completed()
            # the slot the dead attempt held comes back once its lease expires: none leaked
            deadline = time.monotonic() + 180
            while (slots := c.read_global_concurrency_limit_by_name("tag:gpu").active_slots) != 0:
                assert time.monotonic() < deadline, f"{slots} `gpu` slot(s) never given back"
                time.sleep(5)
    finally:
        kill_group(serve)
    assert_same_lake(lake_tables(reference[0]), lake_tables(root), "served run across a server restart")
    print(f"\nPrefect server down {outage:.0f}s mid-run: first attempt {first.state.name}; "
          f"{'state recovered in place' if recovered else 'retry resumed from the cache'} "
          f"({retry_s:.0f}s); lake identical")
