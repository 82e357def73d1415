"""SIGTERM of a real `bstar run` (what `kill PID`, a scheduler or a container stop sends).

Without PREFECT_API_URL a run starts its own temporary Prefect server (a uvicorn child). Prefect
turns SIGTERM into a Crashed run and re-sends the signal; the run must then exit with status 143
and a line saying how to resume, and leave no process behind: the server included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .conftest import CONFIG, log_tail
from .fixtures_input import _proc_status


def session_processes(sid: int) -> list[str]:
    """Command lines of the live processes of session `sid` (the run and everything it started)."""
    out = []
    for d in os.listdir("/proc"):
        st = _proc_status(d) if d.isdigit() else {}
        # NSsid: the session id (innermost namespace last); zombies are already gone
        if st and st.get("NSsid", "").split()[-1:] == [str(sid)] and not st.get("State", "").startswith("Z"):
            out.append(st["cmdline"])
    return out


def test_sigterm_mid_stage_exits_143_and_stops_the_temporary_prefect_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), BSTAR_TORCH_THREADS="1",
               BSTAR_KILL_AT="sample-candidates/greedy@0:batch:1", BSTAR_KILL_SIGNAL="TERM")
    log = tmp_path / "run.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bstar.cli", "run", str(CONFIG), "--root", str(tmp_path / "lake"), "--run-id", "sig"],
            stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    text = log_tail(log, 6000)
    try:
        assert "BSTAR_KILL_AT: SIGTERM at sample-candidates/greedy@0:batch:1" in text, text
        assert rc == 128 + signal.SIGTERM, f"rc {rc}\n{text}"
        assert "stopped by SIGTERM" in text and "--resume" in text, text
        deadline = time.monotonic() + 30  # the server is stopped by an atexit hook: give it a moment
        while (left := session_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == [], f"processes left behind by the stopped run: {left}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever a failed run left behind
        except ProcessLookupError:
            pass
