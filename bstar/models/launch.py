"""Multi-process training: re-run a trainer under `accelerate launch` as a subprocess.

`train_sft(..., num_processes=N)` and `train_prm(..., num_processes=N)` with N > 1 land here
(`launch_training` and `launch_prm_training`; both go through `launch_module`). The examples (JSONL)
and the keyword arguments (JSON) are written next to the output directory, `accelerate launch -m
MODULE ARGS.json` starts N processes (DDP over gloo on CPU, NCCL on GPUs; for SFT also
`distributed="fsdp"` or `"deepspeed"` on GPUs), every process trains on its shard of each global
batch, and the main process saves the checkpoint and writes the call's result as JSON, which we
read back.

Extra `accelerate launch` flags (an accelerate config file, FSDP options, ...) go in
`launch_args`, e.g. `["--config_file", "fsdp.yaml"]`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

DISTRIBUTED = ("ddp", "fsdp", "deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(num_processes: int, *, distributed: str = "ddp", cpu: bool = False,
                       mixed_precision: str = "no", launch_args: list[str] | None = None,
                       port: int | None = None) -> list[str]:
    """The `accelerate launch` command line (without the script) for one machine."""
    if distributed not in DISTRIBUTED:
        raise ValueError(f"distributed must be one of {DISTRIBUTED}, got {distributed!r}")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--main_process_port", str(port or free_port()),
           "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    if distributed == "fsdp" and not cpu:
        cmd.append("--use_fsdp")
    elif distributed == "deepspeed" and not cpu:
        cmd.append("--use_deepspeed")
    else:
        # CPU processes are launched by the same torchrun-based launcher as multi-GPU; inside,
        # Accelerator(cpu=True) sees WORLD_SIZE > 1 and initialises gloo.
        cmd.append("--multi_gpu")
    if cpu:
        cmd += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // num_processes))]
    return cmd + list(launch_args or [])


def is_launched() -> bool:
    """True inside a process started by `accelerate launch` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b:?.*)$", re.M)


def worker_error(stderr: str) -> str | None:
    """The last exception line the processes printed (torchrun's own ChildFailedError left out)."""
    found = [m.group(1).strip() for m in _EXCEPTION_LINE.finditer(stderr) if "ChildFailedError" not in m.group(1)]
    return found[-1] if found else None


def launch_module(module: str, rows: list[dict], kwargs: dict, *, info_file: str | Path,
                  launch_args: list[str] | None = None) -> dict:
    """Run `python -m MODULE ARGS.json` in `kwargs['num_processes']` processes; return `info_file`'s JSON.

    ARGS.json holds `kwargs` (Paths as strings, tuples as lists) plus `examples_path` (`rows`, one
    JSON object a line) and `info_path` (`info_file`, which the module's main process must write).
    Raises RuntimeError with the tail of the processes' output if the launch fails.
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
    (work / "args.json").write_text(json.dumps(spec))
    device = resolve_device(kwargs.get("device"))
    cpu = device == "cpu"
    precision = kwargs.get("precision", "auto")
    mp = precision if precision in ("bf16", "fp16") else "no"
    cmd = accelerate_command(n, distributed=kwargs.get("distributed", "ddp"), cpu=cpu, mixed_precision=mp,
                             launch_args=launch_args) + ["-m", module, str(work / "args.json")]
    env = dict(os.environ)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    info_file = Path(info_file)
    if info_file.exists():
        info_file.unlink()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not info_file.is_file():
        what = f"exit {proc.returncode}" if proc.returncode else f"no {info_file.name} written"
        cause = worker_error(proc.stderr)
        raise RuntimeError(f"accelerate launch failed ({what}){': ' + cause if cause else ''}\n{' '.join(cmd)}\n"
                           f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    data = json.loads(info_file.read_text())
    shutil.rmtree(work, ignore_errors=True)
    return data


def launch_training(examples: list[tuple[str, str]], kwargs: dict, launch_args: list[str] | None = None):
    """SFT: run `bstar.models.trainer` in `kwargs['num_processes']` processes; return the main
    process's CheckpointInfo (also left in the checkpoint as `checkpoint_info.json`)."""
    from bstar.models.trainer import CheckpointInfo

    data = launch_module("bstar.models.trainer", [{"prompt": p, "response": r} for p, r in examples], kwargs,
                         info_file=Path(kwargs["out_dir"]) / "checkpoint_info.json", launch_args=launch_args)
    return CheckpointInfo(**{f.name: data[f.name] for f in fields(CheckpointInfo) if f.name in data})


def launch_prm_training(examples: list[dict], kwargs: dict, launch_args: list[str] | None = None):
    """PRM: run `bstar.models.prm_train` in `kwargs['num_processes']` processes; return the main
    process's PRMTrainInfo."""
    from bstar.models.prm_train import PRMTrainInfo

    out = Path(kwargs["out_dir"])
    data = launch_module("bstar.models.prm_train", examples, kwargs,
                         info_file=out.parent / f".{out.name}.launch" / "prm_train_info.json", launch_args=launch_args)
    return PRMTrainInfo(**{f.name: data[f.name] for f in fields(PRMTrainInfo) if f.name in data})
