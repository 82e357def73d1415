"""vLLM sampler backend (GPU): engines in worker processes that live as long as the sampler.

    from bstar.models.sampler_api import get_sampler
    with get_sampler("vllm", "runs/r1/iter-1", tensor_parallel_size=2, data_parallel_size=2) as s:
        for t in (0.6, 0.9):                        # the same engines serve every call
            cands = s.sample(prompts, k=8, temperature=t, seeds=seeds, base_seed=3)

Tests (CPU, real worker processes around a stand-in engine):
`HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/models/test_vllm_backend.py`.

Requests. Every prompt is its own request with `SamplingParams(n=K, temperature, top_p,
max_tokens, seed=seed_for(base_seed, prompt seed, first_sample_idx), stop)`, given to vLLM as
token ids encoded here by `bstar.models.loading.encode_prompts` (as the transformers backend and
the trainer encode it: vLLM's own text path would add a second BOS in front of a chat template
that already starts with one, and training would mask other tokens than were seen), so a rerun
reproduces the same candidates (vLLM's per-request seeded sampling).

Workers. `data_parallel_size` engines, each on `tensor_parallel_size` devices, each in its own
process (`python -m bstar.models.vllm_backend`), started by the first `sample()` and kept until
`close()`: one start per stage and policy, not per temperature or chunk. Worker r gets the
devices r·tp .. (r+1)·tp−1 *of the mask this process inherited* (`CUDA_VISIBLE_DEVICES`, indices
or GPU-/MIG- UUIDs, as Ray or a scheduler set it; unset: 0..N−1 of the N visible devices), set
in its environment before it starts. dp·tp is checked against the visible devices when the
sampler is made, before anything starts. A prompt list is cut into contiguous slices, one per
engine.

Failure. The parent never blocks on a worker without also watching it: it waits on the
connections in short slices and polls every pending worker's process, so a worker that dies
(out of memory, a failed engine start, the kernel's OOM killer) fails the stage within a fraction
of a second with `VLLMWorkerError` naming the worker, its devices, how it ended and its error
(its traceback, or the tail of its output). Every worker is then stopped. A worker is the leader
of its own process group, so stopping it (or a failure) kills vLLM's own engine processes with
it, and every worker kills its group when its parent process disappears (a SIGKILLed stage):
no process keeps a device after its stage. Worker output goes to a log file per worker, copied
to this process's stderr as it comes.

One engine per device. Engines start on first use and a process-wide lease maps each device to
the sampler whose engines hold it: a sampler that needs a device another sampler's idle engines
hold stops those first (and waits while they are mid-request). So two samplers open at once on
the same devices, like the policy and the completer of Math-Shepherd annotation, take turns and
never hold two engines on one device.

A separate environment. vLLM pins its own torch and fastapi, which can conflict with this
project's (README, "Installing the GPU extra"). The workers need only the standard library, vLLM
and this package's source, so they may run under another interpreter: `BSTAR_VLLM_PYTHON` (or
`python=`) names it; a source checkout of bstar is put on its PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bstar.models.sampler_api import Sample, Sampler, seed_for

log = logging.getLogger(__name__)

PYTHON_ENV = "BSTAR_VLLM_PYTHON"
POLL_S = 0.2  # how often a waiting parent checks that its pending workers are alive
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a worker's process group


class VLLMWorkerError(RuntimeError):
    """A vLLM worker failed to start, failed a request or died; every worker has been stopped."""


@dataclass(frozen=True)
class WorkerInfo:
    rank: int
    pid: int
    devices: str  # its CUDA_VISIBLE_DEVICES, as the worker itself reported it


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------


def _mask_entry(entry: str) -> bool:
    return entry.isdigit() or entry.startswith(("GPU-", "MIG-"))


def visible_devices(environ: dict | None = None, count: int | None = None) -> tuple[list[str], str]:
    """(devices this process may use, where that came from).

    With `CUDA_VISIBLE_DEVICES` set, its entries as given (indices, or GPU-/MIG- UUIDs), cut at
    the first invalid entry as CUDA itself does ("0,1,-1,2" is 0 and 1); else 0..N−1 of the N
    devices present (`count`, or counted)."""
    env = os.environ if environ is None else environ
    mask = env.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        n = device_count() if count is None else count
        return [str(i) for i in range(n)], f"CUDA_VISIBLE_DEVICES is unset and {n} device(s) are present"
    devices = []
    for entry in (e.strip() for e in mask.split(",")):
        if not _mask_entry(entry):
            break
        devices.append(entry)
    return devices, f"CUDA_VISIBLE_DEVICES={mask!r} leaves {len(devices)}"


def device_count() -> int:
    """CUDA devices present: torch's count, else nvidia-smi's (this environment's torch may be a
    CPU build when vLLM runs in an environment of its own)."""
    try:
        import torch

        if torch.cuda.device_count():
            return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch: ask the driver's tool
        pass
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def device_groups(dp: int, tp: int, environ: dict | None = None, count: int | None = None) -> list[str]:
    """The CUDA_VISIBLE_DEVICES of each of `dp` engines of `tp` devices, from the inherited mask;
    a one-line ValueError naming the config fields when there are not dp·tp devices."""
    devices, source = visible_devices(environ, count)
    need = dp * tp
    if need > len(devices):
        raise ValueError(f"sampling.data_parallel_size x sampling.tensor_parallel_size = {dp} x {tp} = {need} "
                         f"devices, but {source}")
    return [",".join(devices[r * tp:(r + 1) * tp]) for r in range(dp)]


# ----------------------------------------------------------------------------------------------
# the device lease: one engine per device in this process
# ----------------------------------------------------------------------------------------------

_LEASE = threading.Condition()  # an RLock inside: a pool stopped under the lease releases it again
_HOLDERS: dict[str, "_EnginePool"] = {}


@contextmanager
def _lease(pool: "_EnginePool"):
    """Hold `pool`'s devices for one request: stop other pools' idle engines on them first, wait
    while one of those is mid-request."""
    with _LEASE:
        while True:
            others = {h for d in pool.devices if (h := _HOLDERS.get(d)) is not None and h is not pool}
            if not any(h.busy for h in others):
                break
            _LEASE.wait()
        for h in others:
            log.info("vLLM: stopping the engines of %s on devices %s before starting %s there (one engine per device)",
                     h.label, ",".join(h.devices), pool.label)
            h.stop()
        for d in pool.devices:
            _HOLDERS[d] = pool
        pool.busy = True
    try:
        yield
    finally:
        with _LEASE:
            pool.busy = False
            _LEASE.notify_all()


def _release(pool: "_EnginePool") -> None:
    with _LEASE:
        for d in [d for d, h in _HOLDERS.items() if h is pool]:
            del _HOLDERS[d]
        _LEASE.notify_all()


# ----------------------------------------------------------------------------------------------
# the parent side: a pool of worker processes
# ----------------------------------------------------------------------------------------------


def _source_root() -> str | None:
    """The directory holding this checkout's `bstar` package, unless bstar is an installed package
    (its site-packages on another interpreter's path would mix the two environments)."""
    root = Path(__file__).resolve().parents[2]
    return None if {"site-packages", "dist-packages"} & set(root.parts) else str(root)


def _worker_env(devices: str) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=devices)
    root = _source_root()
    if root:
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def check_engine_module(python: str, module: str) -> None:
    """ImportError now, not in a worker later, when `python` cannot import `module`."""
    hint = f"`make vllm-env` builds .venv-vllm; name its python with {PYTHON_ENV} (README, 'vLLM')"
    # not realpath: a virtual environment's python is a link to the interpreter it was made from
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"the vllm sampler needs vLLM ({module!r} is not importable): {hint}")
        return
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
    try:
        rc = subprocess.run([python, "-c", code, module], env=_worker_env(""), capture_output=True,
                            timeout=120).returncode
    except (OSError, subprocess.SubprocessError) as e:
        raise ImportError(f"the vllm sampler cannot run {python!r} ({PYTHON_ENV}): {e}") from e
    if rc != 0:
        raise ImportError(f"the vllm sampler needs vLLM: {python!r} cannot import {module!r}: {hint}")


@dataclass
class _Worker:
    rank: int
    devices: str
    proc: subprocess.Popen
    conn: object  # multiprocessing.connection.Connection
    log_path: Path
    log_offset: int = 0
    pid_reported: int | None = None
    devices_reported: str | None = None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc (empty where there is none)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state not in "ZX":
            members.append(int(stat.parent.name))
    return members


def _end_process_group(proc: subprocess.Popen, grace: float) -> None:
    """Make sure the worker and everything it started is gone (it leads its own group) before
    returning: a device is free once the processes that held it have ended."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    # what the worker left in its group (vLLM's engine and tensor-parallel processes)
    _signal_group(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "closed its connection"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's OOM killer sends SIGKILL: see dmesg)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


@dataclass(eq=False)
class _EnginePool:
    """The worker processes of one sampler; started on demand, stopped by `stop()` (idempotent)."""

    label: str
    groups: list[str]
    python: str
    engine_module: str
    engine_kwargs: dict
    start_timeout_s: float | None
    request_timeout_s: float | None
    stop_timeout_s: float
    workers: list[_Worker] = field(default_factory=list)
    busy: bool = False
    logdir: str | None = None
    keep_logs: bool = False

    @property
    def devices(self) -> list[str]:
        return [d for g in self.groups for d in g.split(",")]

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.workers:
            return
        self.logdir = self.logdir or tempfile.mkdtemp(prefix="bstar-vllm-")
        t0 = time.monotonic()
        try:
            for rank, devices in enumerate(self.groups):
                self.workers.append(self._spawn(rank, devices))
        except BaseException:
            self.stop()
            raise
        self._gather(self.workers, "starting its engine", self.start_timeout_s)
        log.info("vLLM: %d engine(s) of %s ready in %.1f s (%s)", len(self.workers), self.label,
                 time.monotonic() - t0, "; ".join(f"worker {w.rank} pid {w.pid_reported} on "
                                                  f"CUDA_VISIBLE_DEVICES={w.devices_reported}" for w in self.workers))

    def _spawn(self, rank: int, devices: str) -> _Worker:
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        log_path = Path(self.logdir) / f"worker-{rank}.log"
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    [self.python, "-m", "bstar.models.vllm_backend", str(theirs.fileno())],
                    env=_worker_env(devices), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    pass_fds=(theirs.fileno(),), start_new_session=True,
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        worker = _Worker(rank, devices, proc, conn, log_path)
        try:
            conn.send(("start", {"engine_module": self.engine_module, "engine_kwargs": self.engine_kwargs}))
        except OSError:
            pass  # it died at once: the wait for its "ready" reports how
        return worker

    def stop(self) -> None:
        """Stop every worker: ask, wait up to `stop_timeout_s`, then end its process group."""
        workers, self.workers = self.workers, []
        for w in workers:
            try:
                w.conn.send(("stop", None))
            except OSError:
                pass
        deadline = time.monotonic() + self.stop_timeout_s
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("vLLM worker %d (pid %d) did not stop within %.0f s: killing it", w.rank, w.proc.pid,
                            self.stop_timeout_s)
        for w in workers:
            _end_process_group(w.proc, KILL_GRACE_S)
            w.conn.close()
        self._forward_logs(workers)
        _release(self)
        if self.logdir and not self.keep_logs:
            shutil.rmtree(self.logdir, ignore_errors=True)
            self.logdir = None

    # -- requests --------------------------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], seeds: list[int], params: dict, progress: bool) -> list:
        """(text, n_tokens, finish_reason) per sample per prompt, the prompts cut into one
        contiguous slice per engine."""
        if not prompt_ids:
            return []
        size = -(-len(prompt_ids) // len(self.workers))
        jobs = {}
        for w in self.workers:
            lo, hi = w.rank * size, min(len(prompt_ids), (w.rank + 1) * size)
            if lo < hi:
                jobs[w.rank] = w
                job = {"prompt_ids": prompt_ids[lo:hi], "seeds": seeds[lo:hi], "params": params,
                       "progress": progress and w.rank == 0}
                if w.proc.poll() is not None:
                    self._fail(w, "idle")
                try:
                    w.conn.send(("generate", job))
                except OSError:
                    self._fail(w, "receiving a request")
        replies = self._gather(list(jobs.values()), "generating", self.request_timeout_s)
        return [row for rank in sorted(jobs) for row in replies[rank]]

    def _gather(self, workers: list[_Worker], doing: str, timeout: float | None) -> dict:
        """One reply per worker; fails as soon as one of them reports an error or is gone."""
        from multiprocessing.connection import wait

        pending = {w.conn: w for w in workers}
        replies = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            for conn in wait(list(pending), timeout=POLL_S):
                w = pending.pop(conn)
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    self._fail(w, doing)
                if kind == "error":
                    self._fail(w, doing, payload)
                if kind == "ready":
                    w.pid_reported, w.devices_reported = payload["pid"], payload["devices"]
                replies[w.rank] = payload
            self._forward_logs(self.workers)
            for w in pending.values():
                if w.proc.poll() is not None:
                    self._fail(w, doing)
            if pending and deadline is not None and time.monotonic() > deadline:
                self._fail(next(iter(pending.values())), doing, silent_for=timeout)
        return replies

    def _fail(self, w: _Worker, doing: str, error: str | None = None, *, silent_for: float | None = None):
        """Stop every worker and raise what happened to `w`: its traceback (`error`), its silence
        past a timeout (`silent_for`), or how its process ended and the end of its output."""
        code = w.proc.poll()
        if code is None and error is None and silent_for is None:
            try:  # its connection closed: it is on its way out
                code = w.proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        self._forward_logs(self.workers)
        tail = _tail(w.log_path)
        self.keep_logs = True  # named in the error
        self.stop()
        if error is not None:
            how = "failed"
        elif silent_for is not None:
            how = f"gave no answer within {silent_for:.0f} s"
        else:
            how = _how_it_ended(code)
        head = (f"vLLM worker {w.rank} of {self.label} (pid {w.proc.pid}, CUDA_VISIBLE_DEVICES={w.devices}) "
                f"{how} while {doing}; every worker is stopped")
        if error and error.strip():
            raise VLLMWorkerError(f"{head}: {error.strip().splitlines()[-1]}\n{error.rstrip()}")
        raise VLLMWorkerError(f"{head}; the end of its output ({w.log_path}):\n{tail}" if tail else head)

    def _forward_logs(self, workers: list[_Worker]) -> None:
        """Copy what the workers wrote since last time to this process's stderr."""
        for w in workers:
            try:
                with open(w.log_path, "rb") as f:
                    f.seek(w.log_offset)
                    chunk = f.read()
            except OSError:
                continue
            if chunk:
                w.log_offset += len(chunk)
                try:
                    sys.stderr.write(chunk.decode("utf-8", "replace"))
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------
# the sampler
# ----------------------------------------------------------------------------------------------


class VLLMSampler(Sampler):
    """The vLLM backend (module docstring). `python`: the workers' interpreter (default
    `$BSTAR_VLLM_PYTHON`, else this one); `engine_module`: the module whose `LLM` and
    `SamplingParams` the workers use (vLLM; the tests give a stand-in); `tokenizer`: the prompts'
    tokenizer (default: the checkpoint's); timeouts in seconds (`None`: no limit)."""

    def __init__(
        self,
        model_path: str,
        *,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        seed: int = 0,
        enforce_eager: bool = False,
        gguf_file: str | None = None,
        tokenizer=None,
        python: str | None = None,
        engine_module: str = "vllm",
        start_timeout_s: float | None = 1800.0,
        request_timeout_s: float | None = None,
        stop_timeout_s: float = 60.0,
        **engine_kwargs,
    ):
        self.model_path, self.gguf_file = model_path, gguf_file
        self.tp, self.dp = int(tensor_parallel_size), int(data_parallel_size)
        if self.tp < 1 or self.dp < 1:
            raise ValueError("sampling.tensor_parallel_size and sampling.data_parallel_size must be >= 1")
        self.python = python or os.environ.get(PYTHON_ENV) or sys.executable
        check_engine_module(self.python, engine_module)
        groups = device_groups(self.dp, self.tp)
        kwargs = dict(
            model=os.path.join(model_path, gguf_file) if gguf_file else model_path,
            tensor_parallel_size=self.tp, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager, **engine_kwargs,
        )
        if gguf_file:
            kwargs["tokenizer"] = model_path
        self.engine_kwargs = {k: v for k, v in kwargs.items() if v is not None}
        self._tokenizer = tokenizer
        self._pool = _EnginePool(
            label=os.path.basename(os.path.normpath(model_path)) or model_path, groups=groups, python=self.python,
            engine_module=engine_module, engine_kwargs=self.engine_kwargs, start_timeout_s=start_timeout_s,
            request_timeout_s=request_timeout_s, stop_timeout_s=stop_timeout_s,
        )
        # the workers go when the sampler does, even if nobody calls close()
        self._finalizer = weakref.finalize(self, self._pool.stop)

    @property
    def tokenizer(self):
        """The model's tokenizer (prompts are encoded here, chat templates rendered with it)."""
        if self._tokenizer is None:
            from bstar.models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_path, gguf_file=self.gguf_file)
        return self._tokenizer

    @property
    def devices(self) -> list[str]:
        """Each engine's CUDA_VISIBLE_DEVICES."""
        return list(self._pool.groups)

    @property
    def workers(self) -> list[WorkerInfo]:
        """The running workers (none before the first `sample()` and after `close()`)."""
        return [WorkerInfo(w.rank, w.pid_reported or w.proc.pid, w.devices_reported or w.devices)
                for w in self._pool.workers]

    def sample(self, prompts, k=1, temperature=1.0, top_p=1.0, max_new_tokens=256, *, seeds=None, base_seed=0,
               stop=None, first_sample_idx=0, progress=True):
        from bstar.faults import kill_point
        from bstar.models.loading import encode_prompts

        if not self._finalizer.alive:
            raise RuntimeError("sampler is closed")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        prompt_seeds = list(seeds) if seeds is not None else [seed_for("prompt", p) for p in prompts]
        req_seeds = [seed_for(base_seed, s, first_sample_idx) & 0x7FFFFFFF for s in prompt_seeds]
        params = dict(n=k, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
                      stop=list(stop) if stop else None)
        if not prompts:
            return []
        ids = encode_prompts(self.tokenizer, list(prompts))
        with _lease(self._pool):
            self._pool.start()
            rows = self._pool.generate(ids, req_seeds, params, progress)
        kill_point("batch")  # BSTAR_KILL_AT crash point (tests only)
        return [[Sample(text=t, n_tokens=n, finish_reason=fr, sample_idx=first_sample_idx + j)
                 for j, (t, n, fr) in enumerate(row)] for row in rows]

    def close(self) -> None:
        """Stop the workers; their devices are free when this returns."""
        self._finalizer()


# ----------------------------------------------------------------------------------------------
# the worker process: python -m bstar.models.vllm_backend FD
# ----------------------------------------------------------------------------------------------


class _Engine:
    """One vLLM engine (`module.LLM`) and the requests it is given."""

    def __init__(self, module: str, kwargs: dict):
        import importlib

        self.mod = importlib.import_module(module)
        self.llm = self.mod.LLM(**kwargs)

    def generate(self, prompt_ids, seeds, params, progress):
        sampling = [self.mod.SamplingParams(**params, seed=s) for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sampling, use_tqdm=progress)
        return [[(c.text, len(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                 for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]


def _exit_with_parent(parent: int) -> None:
    """Kill this worker's process group (itself, vLLM's processes) once its parent is gone: a
    SIGKILLed stage must not leave an engine holding its devices."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_main(fd: int) -> int:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    # vLLM forks its engine processes: in them the socket becomes /dev/null, so that this worker's
    # death closes the parent's connection at once instead of leaving it open in an orphan
    devnull = os.open(os.devnull, os.O_RDWR)
    os.register_at_fork(after_in_child=lambda: os.dup2(devnull, fd))
    _exit_with_parent(os.getppid())
    try:
        _, spec = conn.recv()
        engine = _Engine(spec["engine_module"], spec["engine_kwargs"])
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return 1
    conn.send(("ready", {"pid": os.getpid(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}))
    while True:
        try:
            kind, job = conn.recv()
        except (EOFError, OSError):
            return 0  # the parent closed its end
        if kind == "stop":
            return 0  # leaving the process frees the engine and its devices
        try:
            rows = engine.generate(**job)
        except Exception:  # noqa: BLE001 - reported to the parent, which fails the stage
            conn.send(("error", traceback.format_exc()))
            continue
        conn.send(("result", rows))


if __name__ == "__main__":
    sys.exit(_worker_main(int(sys.argv[1])))
