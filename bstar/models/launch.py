"""Multi-process training: re-run the trainer under `accelerate launch` as a subprocess.

`train_sft(..., num_processes=N)` with N > 1 lands here. The examples and arguments are written
next to the output directory, `accelerate launch -m bstar.models.trainer ARGS.json` starts N
processes (DDP over gloo on CPU, NCCL on GPUs; `distributed="fsdp"` or `"deepspeed"` on GPUs), and
the main process writes `checkpoint_info.json` which we read back.

Extra `accelerate launch` flags (an accelerate config file, FSDP options, ...) go in
`launch_args`, e.g. `["--config_file", "fsdp.yaml"]`.
"""

from __future__ import annotations

import json
import os
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


def launch_training(examples: list[tuple[str, str]], kwargs: dict, launch_args: list[str] | None = None):
    """Run `_train` in `kwargs['num_processes']` processes; return the main process's CheckpointInfo."""
    from bstar.models.loading import resolve_device
    from bstar.models.trainer import CheckpointInfo

    n = int(kwargs["num_processes"])
    out = Path(kwargs["out_dir"])
    work = out.parent / f".{out.name}.launch"
    work.mkdir(parents=True, exist_ok=True)
    ex_path = work / "examples.jsonl"
    with ex_path.open("w") as f:
        for p, r in examples:
            f.write(json.dumps({"prompt": p, "response": r}) + "\n")
    spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}
    spec["examples_path"] = str(ex_path)
    spec["betas"] = list(spec["betas"])
    (work / "args.json").write_text(json.dumps(spec))
    device = resolve_device(kwargs.get("device"))
    cpu = device == "cpu"
    precision = kwargs.get("precision", "auto")
    mp = precision if precision in ("bf16", "fp16") else "no"
    cmd = accelerate_command(n, distributed=kwargs.get("distributed", "ddp"), cpu=cpu, mixed_precision=mp,
                             launch_args=launch_args) + ["-m", "bstar.models.trainer", str(work / "args.json")]
    env = dict(os.environ)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    info_file = out / "checkpoint_info.json"
    if info_file.exists():
        info_file.unlink()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    data = json.loads(info_file.read_text())
    shutil.rmtree(work, ignore_errors=True)
    return CheckpointInfo(**{f.name: data[f.name] for f in fields(CheckpointInfo) if f.name in data})
