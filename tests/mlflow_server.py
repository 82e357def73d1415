"""A real `mlflow server` for the tracking tests: a free port, a sqlite store and an artifact
directory under the test's tmp dir, its own process group, stopped at teardown (SIGTERM to the
group, then SIGKILL) and, should the test process die first, at exit.

    with mlflow_server(tmp_path) as uri:      # http://127.0.0.1:PORT, /health answered
        MlflowClient(tracking_uri=uri)...
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from tests.prefect_server import BIN, free_port, start_process, stop_process, wait_healthy

START_TIMEOUT = 120


@contextmanager
def mlflow_server(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = root / "mlflow-server.log"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    # start_process: own session (so its own process group), and registered for the atexit kill
    proc = start_process(cmd, {"PATH": str(BIN) + ":/usr/bin:/bin", "HOME": str(root)}, log, cwd=root)
    try:
        wait_healthy(proc, f"{uri}/health", log, START_TIMEOUT, "mlflow server", every=0.5)
        yield uri
    finally:
        alive = stop_process(proc, grace=15)
        assert not alive, f"mlflow server processes survived teardown: {alive}"
