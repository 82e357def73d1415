"""Flow tests run against Prefect's test harness (a temporary local server, one per session)
and share one smoke run of the whole loop (tiny model, arith, 2 rounds)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "deployments" / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def smoke_run(prefect_harness, tmp_path_factory):
    """One completed smoke run, its rounds mirrored to TensorBoard under `{root}/_tb`: (result dict, lake root)."""
    from bstar.flows.run import bstar_run

    from bstar.tasks.common import CHECK_RELEASE_ENV

    root = tmp_path_factory.mktemp("smoke-lake")
    # every stage must hand back the models it loaded: a stage that leaves parameters alive fails the run
    os.environ[CHECK_RELEASE_ENV] = "1"
    try:
        result = bstar_run(config=str(SMOKE), run_id="smoke-test",
                           overrides=[f"storage.root={root}", f"tracking.tensorboard_dir={root}/_tb"])
    finally:
        os.environ.pop(CHECK_RELEASE_ENV, None)
    return result, str(root)


@pytest.fixture()
def clean_fault_env():
    yield
    os.environ.pop("BSTAR_INJECT_FAULT", None)
