"""Fixtures of the fault tests: a real Prefect server, `bstar run` as a killable subprocess, and
comparison of a run's lake with an uninterrupted reference run of the same config and seeds.

Every run here is a separate process (`bstar run tests/reliability/faults.yaml`) talking to one
`prefect server start` of this session (own PREFECT_HOME, restartable on the same port), so a
SIGKILL hits what a user's crashed run would lose: the process, its verifier workers and
whatever Prefect had not yet recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from tests.prefect_server import free_port, server_env

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONFIG = Path(__file__).with_name("faults.yaml")
RUN_ID = "faults"
RUN_TIMEOUT = 600
SERVER_START_TIMEOUT = 180

# Tables compared with the reference run, and the columns that name a row.
COMPARED = {
    "queries": ["split", "query_id"],
    "candidates": ["iteration", "stage", "query_id", "sample_idx"],
    "rewards": ["iteration", "stage", "scorer", "query_id", "sample_idx"],
    "search": ["iteration", "temperature", "threshold"],
    "selections": ["iteration", "query_id", "sample_idx"],
    "metrics": ["iteration", "split", "name", "k", "s"],
    "checkpoints": ["iteration", "step", "mode"],
}


def log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return "(no log)"


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of a run's process group (verifier workers of a killed run)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


class PrefectServer:
    """`prefect server start` on a fixed port and home; `restart()` keeps both (same database)."""

    def __init__(self, home: Path, logs: Path):
        self.home, self.logs = home, logs
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        env = server_env(
            home,
            # Leases of concurrency slots (the `gpu` tag) must outlive a server restart: with the
            # default in-memory storage a slot held across a restart is never given back and
            # every later GPU stage waits forever (test_faults_server.py).
            PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE="prefect.server.concurrency.lease_storage.filesystem",
            BSTAR_TORCH_THREADS=os.environ.get("BSTAR_TORCH_THREADS", "1"),
        )
        env.pop("BSTAR_INJECT_FAULT", None)
        env.pop("BSTAR_KILL_AT", None)
        self.env = {**env, "PREFECT_API_URL": self.api}
        self._server_env = env

    def start(self) -> "PrefectServer":
        self.starts += 1
        log = self.logs / f"prefect-server-{self.starts}.log"
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO, env=self._server_env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy after {SERVER_START_TIMEOUT}s:\n{log_tail(log)}")
            time.sleep(0.5)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("prefect-logs"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class RunResult:
    returncode: int
    seconds: float
    log: Path

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


class Runner:
    """Starts `bstar run` subprocesses against the session's Prefect server."""

    def __init__(self, server: PrefectServer, logs: Path):
        self.server, self.logs, self.n = server, logs, 0

    def env(self, kill_at: str | None = None, **extra: str) -> dict:
        env = dict(self.server.env, **extra)
        if kill_at:
            env["BSTAR_KILL_AT"] = kill_at
        return env

    def start(self, root, run_id: str = RUN_ID, *, resume: bool = False, kill_at: str | None = None,
              args: tuple[str, ...] = (), wrap: tuple[str, ...] = (), **extra: str) -> tuple[subprocess.Popen, Path]:
        self.n += 1
        log = self.logs / f"run-{self.n}-{run_id}{'-resume' if resume else ''}.log"
        cmd = [*wrap, str(BIN / "bstar"), "run", str(CONFIG), "--root", str(root),
               *(["--resume", run_id] if resume else ["--run-id", run_id]), *args]
        with open(log, "wb") as fh:
            fh.write(f"$ {' '.join(cmd)}  (BSTAR_KILL_AT={kill_at})\n".encode())
            fh.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env(kill_at, **extra), stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return proc, log

    def run(self, root, run_id: str = RUN_ID, **kw) -> RunResult:
        t0 = time.monotonic()
        proc, log = self.start(root, run_id, **kw)
        try:
            proc.wait(timeout=RUN_TIMEOUT)
        finally:
            kill_group(proc)
        return RunResult(proc.returncode, time.monotonic() - t0, log)


@pytest.fixture(scope="session")
def runner(prefect_server, tmp_path_factory):
    return Runner(prefect_server, tmp_path_factory.mktemp("run-logs"))


@pytest.fixture(scope="session")
def reference(runner, tmp_path_factory):
    """An uninterrupted run of faults.yaml: (lake root, seconds it took)."""
    root = tmp_path_factory.mktemp("reference") / "lake"
    res = runner.run(root)
    assert res.returncode == 0, log_tail(res.log)
    return root, res.seconds


# -- comparing lakes ----------------------------------------------------------------------------


def lake_tables(root, run_id: str = RUN_ID, lake=None) -> dict[str, pl.DataFrame]:
    """The run's rows, table by table, sorted by key; paths under the root made relative."""
    from bstar.storage.lake import Lake

    lake = lake or Lake(str(root))
    prefix = lake.root + "/"
    out = {}
    for table, key in COMPARED.items():
        df = lake.read(table, run_id)
        for col in ("policy", "path"):
            if col in df.columns:
                df = df.with_columns(pl.col(col).str.replace(prefix, "<root>/", literal=True))
        out[table] = df.sort(key)
    return out


def assert_same_lake(ref: dict[str, pl.DataFrame], got: dict[str, pl.DataFrame], what: str) -> None:
    for table, key in COMPARED.items():
        a, b = ref[table], got[table]
        assert a.height > 0, f"reference has no {table} rows"
        dup = b.group_by(key).len().filter(pl.col("len") > 1)
        assert dup.is_empty(), f"{what}: duplicate {table} keys:\n{dup}"
        assert a.columns == b.columns, (table, a.columns, b.columns)
        if not a.equals(b):
            ka, kb = a.select(key), b.select(key)
            diff = a.join(b, on=key, how="full", suffix="_resumed").filter(
                pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}_resumed")) for c in a.columns if c not in key)
            ) if ka.equals(kb) else f"keys differ: {ka.height} vs {kb.height} rows"
            raise AssertionError(f"{what}: {table} differs from the uninterrupted run:\n{diff}")
