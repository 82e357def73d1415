"""What the tests that start a real `prefect server start` and `bstar serve` share: a free port,
the server's environment (its own PREFECT_HOME, nothing inherited from the caller's Prefect
settings), processes started in their own group and always stopped (at teardown, else atexit),
and the server / serve lifecycles themselves."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 180
SERVE_READY_TIMEOUT = 180
SERVE_READY = "being served"  # what `bstar serve` prints once its deployments are registered

_started: list[subprocess.Popen] = []  # every process these helpers started, for atexit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, ui: bool = False, **extra: str) -> dict[str, str]:
    """The caller's environment without PREFECT_* settings, plus a private home, no analytics,
    offline hub, and no UI unless `ui`; `extra` adds or overrides variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    flag = "true" if ui else "false"
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED=flag,
        PREFECT_SERVER_UI_ENABLED=flag,
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


# -- processes ---------------------------------------------------------------------------------


def start_process(cmd: list[str], env: dict, log: Path, cwd: Path = REPO) -> subprocess.Popen:
    fh = open(log, "ab")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    fh.close()
    _started.append(proc)
    return proc


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        p = psutil.Process(proc.pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> list[psutil.Process]:
    """SIGTERM the process group (then SIGKILL); returns the processes that are still alive."""
    tree = _tree(proc)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is None or any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for p in tree:  # children that left the group (e.g. their own session)
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            psutil.wait_procs(tree, timeout=grace if sig == signal.SIGTERM else 10)
    if proc.poll() is None:
        proc.wait(timeout=10)
    return [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@atexit.register
def _stop_all() -> None:
    for proc in _started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def log_tail(path: Path | None, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except (FileNotFoundError, AttributeError):
        return "(no log)"


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float, what: str, every: float = 1.0) -> None:
    """Until `url` answers 200; fails the test, with the log's tail, if `proc` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not healthy after {timeout}s:\n{log_tail(log)}")
        time.sleep(every)


# -- a Prefect server --------------------------------------------------------------------------


@contextmanager
def prefect_server_process(home: Path, logs: Path, ui: bool = False, **extra_env: str):
    """A real `prefect server start` on a free port; yields {api, ui, env, logs}. At exit the
    server and every process still running with its PREFECT_HOME are stopped (and reported)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    if ui:  # the UI's pages call the API at this URL (default: port 4200)
        extra_env = {"PREFECT_SERVER_UI_API_URL": api, "PREFECT_UI_API_URL": api, **extra_env}
    env = server_env(home, ui=ui, PREFECT_LOGGING_LEVEL="INFO", **extra_env)
    log = logs / "server.log"
    proc = start_process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        wait_healthy(proc, f"{api}/health", log, SERVER_START_TIMEOUT, "prefect server")
        yield {"api": api, "ui": f"http://127.0.0.1:{port}", "env": {**env, "PREFECT_API_URL": api}, "logs": logs,
               "proc": proc}
    finally:
        alive = stop_process(proc)
        assert not alive, f"prefect server processes survived teardown: {alive}"
        # anything else still running with this PREFECT_HOME (serve processes, flow-run subprocesses)
        strays = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid != os.getpid() and p.environ().get("PREFECT_HOME") == str(home):
                    strays.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        for p in strays:
            p.kill()
        assert not strays, f"stray processes of the server test: {[(p.pid, p.info['cmdline']) for p in strays]}"


# -- `bstar serve` -----------------------------------------------------------------------------


class Serve:
    """`bstar serve --limit 1` processes started by one test; all stopped at the end."""

    def __init__(self, server: dict):
        self.base_env = server["env"]
        self.logs = server["logs"]
        self.procs: list[subprocess.Popen] = []
        self.log: Path | None = None

    def start(self, fault: str | None = None, args: tuple[str, ...] = (), wait: bool = True, **env: str) -> subprocess.Popen:
        env = {**self.base_env, "PREFECT_RUNNER_POLL_FREQUENCY": "2", **env}
        env.pop("BSTAR_INJECT_FAULT", None)
        if fault:
            env["BSTAR_INJECT_FAULT"] = fault
        self.log = self.logs / f"serve-{len(self.procs)}.log"
        proc = start_process([str(BIN / "bstar"), "serve", "--limit", "1", *args], env, self.log)
        self.procs.append(proc)
        if wait:
            self.wait_ready(proc, self.log)
        return proc

    @staticmethod
    def wait_ready(proc: subprocess.Popen, log: Path) -> None:
        """Until the runner has (re)registered the deployments and is polling for runs."""
        deadline = time.monotonic() + SERVE_READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bstar serve exited with {proc.returncode}:\n{log_tail(log)}")
            if SERVE_READY in log_tail(log, 100_000):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"bstar serve not ready after {SERVE_READY_TIMEOUT}s:\n{log_tail(log)}")
            time.sleep(1)

    def stop(self, proc: subprocess.Popen) -> None:
        alive = stop_process(proc)
        assert not alive, f"bstar serve processes survived: {alive}"

    def stop_all(self) -> list[psutil.Process]:
        alive = []
        for proc in self.procs:
            alive += stop_process(proc)
        return alive


def wait_final(client, flow_run_id, log: Path | None, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        fr = client.read_flow_run(flow_run_id)
        if fr.state is not None and fr.state.is_final():
            return fr
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {flow_run_id} not final after {timeout}s (state {fr.state}):\n{log_tail(log)}")
        time.sleep(3)
