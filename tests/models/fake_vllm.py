"""A stand-in for the `vllm` module (`LLM`, `SamplingParams`) that the vLLM backend's worker
processes import in the CPU tests, through the seam vLLM itself goes through:
`VLLMSampler(..., engine_module="tests.models.fake_vllm")`. Standard library only, so a worker
may run it under a bare interpreter.

A fake engine behaves like a GPU engine where the tests look:
- it takes an exclusive lock file per device of its CUDA_VISIBLE_DEVICES (`flock`: released when
  its process dies, as a GPU's memory is) and fails with an out-of-memory error when another live
  engine holds one of them;
- every start appends a JSON line to `{fake_dir}/engines.jsonl`: pid, devices, interpreter,
  engine arguments;
- a response's text spells out what the engine was given and where it ran:
  `ids|seed|j|temperature|top_p|max_tokens|stop|devices|pid`;
- `fake_fail={"devices": "6,7", "at": "start" | "generate", "how": "raise" | "kill"}` makes the
  engine on those devices fail there: raise an out-of-memory error, or print one and SIGKILL its
  own process (what the kernel's OOM killer does);
- `fake_child={"gib": G}` starts a child process the way vLLM starts its engine core (multiprocessing
  spawn, daemonic: a clean exit of the engine ends it, a killed engine leaves it behind), which
  holds G GiB of GPU memory when G > 0 (torch, device 0 of the mask) and reports its pid and what
  CUDA shows it in the record (`child`).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace


class SamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class LLM:
    def __init__(self, model, fake_dir, fake_fail=None, fake_child=None, **kwargs):
        self.devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.fail = fake_fail
        self.locks = []
        for d in self.devices.split(","):
            f = open(Path(fake_dir) / f"device-{d}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"CUDA out of memory: device {d} is held by another engine") from None
            self.locks.append(f)
        record = {"pid": os.getpid(), "devices": self.devices, "python": sys.executable, "model": model,
                  "kwargs": kwargs, "time": time.time()}
        if fake_child is not None:
            record["child"] = self._start_child(fake_child.get("gib", 0))
        with open(Path(fake_dir) / "engines.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self._maybe_fail("start")

    def _start_child(self, gib: float) -> dict:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        reports = ctx.Queue()
        self.child = ctx.Process(target=_hold_device, args=(gib, reports), daemon=True)
        self.child.start()
        return reports.get(timeout=120)

    def _maybe_fail(self, at: str) -> None:
        f = self.fail
        if not f or f["devices"] != self.devices or f["at"] != at:
            return
        msg = f"fake engine on devices {self.devices}: CUDA out of memory. Tried to allocate 20.00 GiB"
        if f["how"] == "kill":
            print(msg, file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(msg)

    def generate(self, prompts, params, use_tqdm=True):
        self._maybe_fail("generate")
        outs = []
        for p, sp in zip(prompts, params):
            ids = ",".join(map(str, p["prompt_token_ids"]))
            stop = "/".join(sp.stop or [])
            cands = [SimpleNamespace(index=j, token_ids=[1] * (j + 1), finish_reason="length" if j == 0 else "stop",
                                     text=f"{ids}|{sp.seed}|{j}|{sp.temperature}|{sp.top_p}|{sp.max_tokens}|{stop}|"
                                          f"{self.devices}|{os.getpid()}")
                     for j in range(sp.n)]
            outs.append(SimpleNamespace(outputs=cands[::-1]))  # out of order, as vLLM may return them
        return outs


def _hold_device(gib: float, reports) -> None:
    report = {"pid": os.getpid(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    if gib > 0:
        import torch

        held = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")  # kept until this process ends
        torch.cuda.synchronize()
        report.update(bytes=held.numel(), cuda_count=torch.cuda.device_count(), name=torch.cuda.get_device_name(0),
                      uuid=str(torch.cuda.get_device_properties(0).uuid))
    reports.put(report)
    while True:
        time.sleep(1.0)


class ByteTokenizer:
    """Prompt encoding for a parent process that should not import transformers: BOS (1), then bytes + 2."""

    bos_token = "\x01"

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [([1] if add_special_tokens else []) + [b + 2 for b in t.encode()] for t in texts]}
