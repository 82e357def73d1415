"""Start a real multi-node Ray cluster on this machine for tests and benchmarks.

    from tests.ray_cluster import RayCluster
    with RayCluster(nodes=2, cpus=1) as cluster:     # `ray start --head` + `ray start --address`
        cluster.as_driver(monkeypatch)               # this process gets the cluster's token
        cfg.execution.address = cluster.address
        cluster.kill_node(1)                         # SIGKILL the second node's raylet

Every node is one `ray start --block` process in a session of its own, with its own temp
directory, HOME and checkpoint cache (`node_home(i)`), so the nodes share nothing but what the
test gives them (the S3 server). They listen on 127.0.0.2: Ray replaces 127.0.0.1 given as
`--node-ip-address` by the machine's network address, any other loopback address it keeps, so
every byte of a test stays on the loopback interface. Usage stats and the dashboard are off.

Token authentication is on, as docs/scale-out.md starts a cluster: every node runs with
`RAY_AUTH_MODE=token` and the cluster's token in `RAY_AUTH_TOKEN_PATH` (a file of the fixture's);
a driver connects with `cluster.driver_env()` in its environment (`bstar run`, `bstar serve`, or
this process through `cluster.as_driver(monkeypatch)`).

Stopping kills the processes the fixture started (each node's process group, then any process
that carries the cluster's marker variable, e.g. Ray's agents that start sessions of their own);
never a machine-wide `ray stop`.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AUTH_VARS", "NODE_IP", "RayCluster"]

NODE_IP = "127.0.0.2"
MARKER = "BSTAR_TEST_RAY_CLUSTER"
RAY = Path(sys.executable).with_name("ray")
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # what a driver of the cluster needs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    nodes: int = 2
    cpus: int = 1
    startup_timeout: float = 120.0
    address: str = ""
    token: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)  # as `ray get-auth-token` makes
    _dir: str = field(default="", repr=False)
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _marker: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)

    def node_home(self, i: int) -> Path:
        return Path(self._dir) / f"node{i}"

    def cache(self, i: int) -> Path:
        """Node i's checkpoint cache (BSTAR_CHECKPOINT_CACHE of its workers)."""
        return self.node_home(i) / "checkpoint-cache"

    @property
    def token_file(self) -> Path:
        """The cluster's token, readable by this user only, as an operator would keep it."""
        return Path(self._dir) / "auth_token"

    def driver_env(self) -> dict[str, str]:
        """What a process needs in its environment to connect to the cluster (token auth on)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def as_driver(self, monkeypatch=None) -> None:
        """Make this process the cluster's driver: the cluster's token in its environment and no
        other Ray auth setting (through `monkeypatch` in a test, so it is undone after it), then
        Ray's auth state read again: Ray reads the mode and the token once per process, when it is
        first imported or used, which in a test process may be long before this."""
        import ray

        ray.is_initialized()  # prefect-ray imports ray lazily: load it before one of its submodules
        from ray._private.authentication_test_utils import reset_auth_token_state

        env = self.driver_env()
        for k in AUTH_VARS:
            if monkeypatch is None:
                os.environ.pop(k, None)
                os.environ.update({k: env[k]} if k in env else {})
            elif k in env:
                monkeypatch.setenv(k, env[k])
            else:
                monkeypatch.delenv(k, raising=False)
        reset_auth_token_state()  # what Ray's own tests do when they change these variables

    def start(self) -> "RayCluster":
        # short: Ray's unix sockets live under the temp dir (108-byte path limit)
        self._dir = tempfile.mkdtemp(prefix="bray-", dir="/tmp")
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        port = _free_port()
        self.address = f"{NODE_IP}:{port}"
        atexit.register(self.stop)
        try:
            for i in range(self.nodes):
                head = ["--head", f"--port={port}", "--include-dashboard=false"] if i == 0 else [f"--address={self.address}"]
                self._spawn(i, head)
                self._wait_nodes(i + 1)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, i: int, role: list[str]) -> None:
        home = self.node_home(i)
        (home / "tmp").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_"))}
        env.update(HOME=str(home), BSTAR_CHECKPOINT_CACHE=str(self.cache(i)),
                   BSTAR_CHECKPOINT_DIR=str(home / "checkpoints"), RAY_USAGE_STATS_ENABLED="0",
                   PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", **self.driver_env(), **{MARKER: self._marker})
        cmd = [str(RAY), "start", "--block", *role, f"--node-ip-address={NODE_IP}", f"--num-cpus={self.cpus}",
               "--num-gpus=0", f"--temp-dir={home / 'tmp'}", "--disable-usage-stats"]
        log = open(home / "ray-start.log", "ab")
        self._procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home,
                                            start_new_session=True, stdin=subprocess.DEVNULL))

    def alive_nodes(self) -> int:
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        out = subprocess.run([str(RAY), "status", f"--address={self.address}"], capture_output=True, text=True,
                             timeout=60, env={**env, "RAY_USAGE_STATS_ENABLED": "0", **self.driver_env()})
        active = out.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    def _wait_nodes(self, n: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"ray start exited ({dead[0].returncode}): {self.log_tail()}")
            try:
                if self.alive_nodes() >= n:
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        raise TimeoutError(f"{n} Ray node(s) not up after {self.startup_timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        out = []
        for i in range(len(self._procs)):
            p = self.node_home(i) / "ray-start.log"
            if p.exists():
                out.append(f"[node {i}] " + p.read_text(errors="replace")[-n:])
        return "\n".join(out)

    def _marked(self) -> list:
        import psutil

        found = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.pid != os.getpid() and p.environ().get(MARKER) == self._marker:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def node_processes(self, i: int) -> list:
        """The live processes of node i (its `ray start` and every process under it)."""
        import psutil

        try:
            root = psutil.Process(self._procs[i].pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def running_processes(self, i: int) -> list:
        """Node i's processes that still run (not exited, not zombies)."""
        import psutil

        out = []
        for p in self.node_processes(i):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    def kill_node(self, i: int) -> None:
        """SIGKILL node i's raylet and everything it started, as a lost machine would go."""
        procs = self.node_processes(i)
        for p in [*[p for p in procs if _name(p) == "raylet"], *procs]:
            try:
                p.send_signal(signal.SIGKILL)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def stop(self) -> None:  # noqa: C901
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in self._procs):
            time.sleep(0.2)
        for p in self._procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in self._marked():  # agents and workers that left the node's process group
            try:
                p.kill()
            except Exception:  # noqa: BLE001
                pass
        self._procs = []
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    def __enter__(self) -> "RayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _name(p) -> str:
    try:
        return p.name()
    except Exception:  # noqa: BLE001 - gone
        return ""
