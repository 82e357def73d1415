"""Multi-process training: re-run a trainer module under torchrun as a subprocess.

`train_sft(..., num_processes=N)` and `train_prm(..., num_processes=N)` with N > 1 call
`launch_module`: the examples (JSONL) and the keyword arguments (JSON) are written next to the
output directory, `torchrun --nproc-per-node N -m MODULE ARGS.json` starts N processes (gloo on
CPU, NCCL on GPUs; the module shares the model as `bstar.models.distributed` says), and the main
process saves the checkpoint and writes the call's result as JSON, which we read back.

The processes' output is relayed line by line while they run (bstar's logger, so it reaches the
terminal and the Prefect run's logs): loss lines show as training goes, not at the end. Extra
torchrun flags go in `launch_args`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

TAIL_LINES = 400  # of the processes' output, kept for the error message of a failed launch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(num_processes: int, *, launch_args: list[str] | None = None, port: int | None = None) -> list[str]:
    """The torchrun command line (without the module) for one machine."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(num_processes), "--nnodes", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(port or free_port())]
    return cmd + list(launch_args or [])


def is_launched() -> bool:
    """True inside a process started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b:?.*)$", re.M)


def worker_error(output: str) -> str | None:
    """The last exception line the processes printed (torchrun's own ChildFailedError left out)."""
    found = [m.group(1).strip() for m in _EXCEPTION_LINE.finditer(output) if "ChildFailedError" not in m.group(1)]
    return found[-1] if found else None


def child_env(num_processes: int, cpu: bool) -> dict:
    """The processes' environment: unbuffered output (relayed live); on CPU no GPU, and the
    cores shared out so N processes do not oversubscribe them."""
    from bstar.faults import stage_env

    env = dict(os.environ, PYTHONUNBUFFERED="1", **stage_env())
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    return env


def run_relayed(cmd: list[str], env: dict, prefix: str) -> tuple[int, str]:
    """Run `cmd`, logging every line of its merged stdout/stderr as it comes; (exit code, tail)."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if line.strip():
                log.info("%s %s", prefix, line)
        code = proc.wait()
    return code, "\n".join(tail)


def launch_module(module: str, rows: list[dict], kwargs: dict, *, info_file: str | Path,
                  launch_args: list[str] | None = None) -> dict:
    """Run `python -m MODULE ARGS.json` in `kwargs['num_processes']` processes; return `info_file`'s JSON.

    ARGS.json holds `kwargs` (Paths as strings, tuples as lists) plus `examples_path` (`rows`, one
    JSON object a line) and `info_path` (`info_file`, which the module's main process must write).
    Raises RuntimeError with the cause and the tail of the processes' output if the launch fails.
    """
    from bstar.models.loading import resolve_device

    n = int(kwargs["num_processes"])
    out = Path(kwargs["out_dir"])
    work = out.parent / f".{out.name}.launch"
    work.mkdir(parents=True, exist_ok=True)
    ex_path = work / "examples.jsonl"
    with ex_path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    spec = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    spec["examples_path"] = str(ex_path)
    spec["info_path"] = str(info_file)
    spec["progress"] = False  # a terminal bar does not survive the relay; the loss lines do
    (work / "args.json").write_text(json.dumps(spec))
    cpu = resolve_device(kwargs.get("device")) == "cpu"
    cmd = torchrun_command(n, launch_args=launch_args) + ["-m", module, str(work / "args.json")]
    info_file = Path(info_file)
    if info_file.exists():
        info_file.unlink()
    log.info("training in %d processes: %s", n, " ".join(cmd))
    code, output = run_relayed(cmd, child_env(n, cpu), f"[{module.rsplit('.', 1)[-1]}]")
    if code != 0 or not info_file.is_file():
        what = f"exit {code}" if code else f"no {info_file.name} written"
        cause = worker_error(output)
        raise RuntimeError(f"training launch failed ({what}){': ' + cause if cause else ''}\n{' '.join(cmd)}\n"
                           f"{output[-12000:]}")
    data = json.loads(info_file.read_text())
    shutil.rmtree(work, ignore_errors=True)
    return data
