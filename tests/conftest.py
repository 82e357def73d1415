"""Shared test set-up: offline hub, an isolated Prefect home, and the path to the real data rows."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
if "PREFECT_HOME" not in os.environ:
    # one throwaway Prefect home (database, settings) per test session, removed when it ends
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bstar-prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark rows not found at {SHARED_DATA}")
    return SHARED_DATA
