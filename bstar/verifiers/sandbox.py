"""Run untrusted Python programs against tests: bubblewrap + an unprivileged uid + rlimits.

    from bstar.verifiers.sandbox import SandboxConfig, run_tests
    out = run_tests(code, tests=[{"input": "1 2\\n", "output": "3"}], mode="stdio")
    out -> {"compile_error": None, "results": [{"status": "ok", "time": 0.01, "detail": ""}]}

Layers, outermost first (each covers a hole the next one leaves):
1. The host starts `bwrap` in a new session (its own process group) and, when running as root,
   as uid/gid 65534 (nobody) with no supplementary groups. Dropping the *real* uid matters:
   RLIMIT_NPROC is counted per real uid and never enforced for root, so a fork bomb run as
   root-mapped-to-nobody inside a user namespace would not be stopped.
2. bwrap: new user, PID, network, IPC, UTS and cgroup namespaces (no network: only a private
   loopback), no nested user namespaces, `--die-with-parent`, `--new-session` (no TIOCSTI into
   our terminal), `--clearenv` (the program sees only PATH, HOME and LANG: no secrets from the
   parent's environment), a read-only view of the system directories only (/usr, /bin, /lib*,
   /etc: not /root, /home or the project, so neither secrets nor the dataset's test cases are
   readable), and a private size-capped tmpfs at /tmp holding the working directory.
3. The runner (`_sandbox_runner.py`) is PID 1 of the namespace, so the program cannot kill it;
   each test is a forked child with rlimits (address space 1 GiB, CPU time, file size 16 MiB,
   64 open files, 64 processes, no core dumps), its own process group and a wall-clock timeout;
   after each test every other process in the namespace is killed.
4. The host's own wall-clock limit (the per-problem budget plus a margin) kills bwrap's process
   group; bwrap's death takes the whole PID namespace with it.

Where bubblewrap cannot run, `run_tests` raises `SandboxUnavailable` unless unsandboxed runs are
allowed (`allow_unsandboxed=True` or `BSTAR_ALLOW_UNSANDBOXED=1`). Unsandboxed runs keep the
rlimits, the uid drop (as root), the clean environment and the process-group kill, but not the
namespaces: no network or filesystem isolation, and a daemonised grandchild can outlive the run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bstar.verifiers.registry import SandboxUnavailable

NOBODY = 65534
RUNNER_SOURCE = (Path(__file__).with_name("_sandbox_runner.py")).read_text()
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_TRUTHY = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class SandboxConfig:
    timeout: float = 4.0  # per test, wall clock (seconds)
    budget: float = 60.0  # per problem, all tests together (seconds)
    memory_bytes: int = 1 << 30  # RLIMIT_AS
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE: caps every file a program writes, stdout included
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 64  # RLIMIT_NPROC, per sandbox (its own user namespace)
    tmpfs_bytes: int = 256 << 20  # size of the private /tmp
    python: str | None = None  # interpreter inside the sandbox; default: system python3
    uid: int = NOBODY  # used when running as root
    extra_ro_binds: tuple[str, ...] = field(default_factory=tuple)
    stop_on_failure: bool = True
    allow_unsandboxed: bool | None = None  # None: read BSTAR_ALLOW_UNSANDBOXED

    def limits(self) -> dict:
        return {
            "as": self.memory_bytes,
            "fsize": self.file_size_bytes,
            "nofile": self.open_files,
            "nproc": self.processes,
        }

    def unsandboxed_allowed(self) -> bool:
        if self.allow_unsandboxed is not None:
            return bool(self.allow_unsandboxed)
        return os.environ.get("BSTAR_ALLOW_UNSANDBOXED", "").strip().lower() in _TRUTHY


def sandbox_python(cfg: SandboxConfig | None = None) -> str:
    """The interpreter programs run with: config, $BSTAR_SANDBOX_PYTHON, else the system python3.

    Not the project's virtualenv by default: it usually lives under a home directory that the
    unprivileged uid cannot read and the sandbox does not mount, and programs need only the stdlib.
    """
    if cfg is not None and cfg.python:
        return cfg.python
    env = os.environ.get("BSTAR_SANDBOX_PYTHON")
    if env:
        return env
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("python3") or "python3"


def _drop_privileges_kwargs(cfg: SandboxConfig) -> dict:
    if os.geteuid() != 0:
        return {}
    return {"user": cfg.uid, "group": cfg.uid, "extra_groups": []}


def bwrap_command(cfg: SandboxConfig, argv: list[str], workdir: str = "/tmp/work") -> list[str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (`bwrap`) is not installed")
    cmd = [
        bwrap,
        "--unshare-all",  # net, ipc, pid, uts, cgroup (and user when possible)
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--hostname", "sandbox",
        "--clearenv",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "HOME", workdir,
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
    ]
    python_dirs = {str(Path(argv[0]).resolve().parent.parent)} if argv and argv[0].startswith("/") else set()
    seen: list[str] = []
    for d in [*_SYSTEM_DIRS, *sorted(python_dirs), *cfg.extra_ro_binds]:
        if any(d == s or d.startswith(s.rstrip("/") + "/") for s in seen):
            continue  # already visible through a directory bound before
        seen.append(d)
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]  # merged /usr: /bin -> usr/bin
        elif os.path.exists(d):
            cmd += ["--ro-bind", d, d]
    cmd += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(cfg.tmpfs_bytes), "--tmpfs", "/tmp",
        "--dir", workdir,
        "--chdir", workdir,
        "--",
        *argv,
    ]
    return cmd


@functools.lru_cache(maxsize=8)
def _probe(python: str, uid: int) -> str | None:
    """None when bubblewrap works here (as the sandbox uid, with the sandbox python); else why not."""
    cfg = SandboxConfig(python=python, uid=uid)
    try:
        cmd = bwrap_command(cfg, [python, "-I", "-c", "import resource, os; print(os.getpid())"])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, **_drop_privileges_kwargs(cfg))
    except SandboxUnavailable as e:
        return str(e)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot start bwrap: {e}"
    if r.returncode != 0 or r.stdout.strip() != "1":
        return f"bwrap test run failed (exit {r.returncode}): {r.stderr.strip()[:500]}"
    return None


def sandbox_problem(cfg: SandboxConfig | None = None) -> str | None:
    """Why programs cannot be sandboxed here, or None when they can."""
    cfg = cfg or SandboxConfig()
    return _probe(sandbox_python(cfg), cfg.uid if os.geteuid() == 0 else os.geteuid())


def unavailable_message(problem: str) -> str:
    return (
        f"cannot sandbox generated programs: {problem}. Install bubblewrap (Debian/Ubuntu: "
        "`apt-get install bubblewrap`) on a kernel that allows unprivileged user namespaces, or, "
        "for trusted code only, allow unsandboxed runs with allow_unsandboxed=True or "
        "BSTAR_ALLOW_UNSANDBOXED=1."
    )


def run_tests(
    code: str,
    tests: list[dict],
    *,
    mode: str = "stdio",
    fn_name: str | None = None,
    config: SandboxConfig | None = None,
    sandbox: bool | None = None,
) -> dict:
    """Run `code` on `tests`; returns the runner's report. `sandbox=None` picks bwrap when it works,
    else an unsandboxed run if allowed, else raises SandboxUnavailable."""
    cfg = config or SandboxConfig()
    if sandbox is None:
        problem = sandbox_problem(cfg)
        if problem is not None and not cfg.unsandboxed_allowed():
            raise SandboxUnavailable(unavailable_message(problem))
        sandbox = problem is None
    python = sandbox_python(cfg)
    job = {
        "code": code,
        "mode": mode,
        "fn_name": fn_name,
        "tests": tests,
        "timeout": cfg.timeout,
        "budget": cfg.budget,
        "limits": cfg.limits(),
        "stop_on_failure": cfg.stop_on_failure,
    }
    argv = [python, "-I", "-c", RUNNER_SOURCE]
    tmp = None
    try:
        if sandbox:
            job["workdir"] = "/tmp/work"
            cmd, cwd = bwrap_command(cfg, argv), "/"
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        else:
            tmp = tempfile.mkdtemp(prefix="bstar-code-")
            if os.geteuid() == 0:
                os.chown(tmp, cfg.uid, cfg.uid)
            job["workdir"] = tmp
            cmd, cwd = argv, tmp
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "LANG": "C.UTF-8"}
        return _run_host(cmd, cwd, env, job, cfg)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _run_host(cmd: list[str], cwd: str, env: dict, job: dict, cfg: SandboxConfig) -> dict:
    payload = json.dumps(job).encode("utf-8")
    wall = cfg.budget + 15.0  # the runner stops itself at `budget`; this catches a wedged sandbox
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
        **_drop_privileges_kwargs(cfg),
    )
    try:
        out, err = proc.communicate(payload, timeout=wall)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        return {"compile_error": None, "results": [], "error": f"sandbox killed after {wall:g}s wall clock", "timed_out": True}
    finally:
        _kill_group(proc.pid)  # whatever is left of the group (unsandboxed runs)
    elapsed = time.monotonic() - t0
    try:
        report = json.loads(out.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        tail = err.decode("utf-8", "replace").strip()[-800:]
        return {"compile_error": None, "results": [], "error": f"test runner failed (exit {proc.returncode}): {tail}"}
    report["elapsed"] = round(elapsed, 4)
    return report


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
