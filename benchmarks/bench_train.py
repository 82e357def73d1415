"""Training benchmark: what each sharding configuration costs, on the CPU and on a GPU.

    python benchmarks/bench_train.py                  # CPU: step time and peak RSS of the trainer
                                                      # (train_sft) for ddp / fsdp, 1 and 2 processes,
                                                      # with and without gradient checkpointing
    python benchmarks/bench_train.py --gpu            # one GPU: FSDP2 + checkpointing steps on randomly
                                                      # initialised 1B and 7B Llama-shaped models
                                                      # (step time, tokens/s, peak memory, MFU)

The GPU part is also what `benchmarks/gpu_check.py` runs. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

BF16_DATASHEET_TFLOPS = 989.0  # H100/H200 SXM dense bf16, the vendor's figure
# (hidden, layers, heads, kv heads, intermediate, vocab, tied)
GPU_SHAPES = {"llama-1b": (2048, 16, 32, 8, 8192, 128256, True), "llama-7b": (4096, 32, 32, 32, 11008, 32000, False)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def llama_config(shape):
    from transformers import LlamaConfig

    hidden, layers, heads, kv, inter, vocab, tied = shape
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096,
                       tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def n_params(model, embeddings: bool = True) -> int:
    total = sum(p.numel() for p in model.parameters())
    return total if embeddings else total - model.get_input_embeddings().weight.numel()


def train_step(name: str, shape, device: str, ceil: dict, small: bool) -> dict:
    """FSDP2 (one process), bf16 compute with fp32 master weights, activation checkpointing: the
    policy trainer's own pieces (`bstar.models.distributed`, `response_token_loss`)."""
    from transformers import LlamaForCausalLM

    from bstar.models import distributed as D
    from bstar.models.trainer import response_token_loss

    cfg = llama_config(shape)
    cfg.use_cache = False
    precision = "bf16" if device == "cuda" else "fp32"
    procs = D.init_processes(device, "fsdp")
    try:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.device(device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(cfg)
        p, p_dense = n_params(model), n_params(model, embeddings=False)
        names = D.no_decay_names(model)
        model = D.wrap(model, procs, "fsdp", precision=precision, gradient_checkpointing=True)
        opt = torch.optim.AdamW(D.decay_groups(model, names, 0.0), lr=1e-5, foreach=device == "cuda")
        micro, seq, steps = (2, 64, 2) if small else (4, 2048, 4)
        ids = torch.randint(4, cfg.vocab_size, (micro, seq), device=device)
        times = []
        for _ in range(steps):
            sync(device)
            t0 = time.perf_counter()
            with D.autocast(procs, "fsdp", precision):
                loss = response_token_loss(model, ids, ids)
            (loss / ids.numel()).backward()
            D.clip_grad_norm(model, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - t0)
        step = sorted(times[1:])[len(times[1:]) // 2]  # the median after the first (allocations, autotune)
        tokens = micro * seq
        flops = 6 * p_dense * tokens + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq * tokens
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        res = {"params_b": round(p / 1e9, 3), "tokens_per_step": tokens, "step_s": round(step, 3),
               "tokens_per_s": round(tokens / step, 1), "peak_gib": round(peak, 1) if peak else None,
               "mfu_measured_peak": round(flops / step / (ceil["matmul_tflops"] * 1e12), 3),
               "mfu_datasheet": round(flops / step / (BF16_DATASHEET_TFLOPS * 1e12), 3),
               "loss": round(float(loss) / ids.numel(), 3)}
    except torch.OutOfMemoryError as e:
        res = {"error": f"out of memory: {str(e).splitlines()[0]}"}
    finally:
        model = opt = None
        D.close_processes(procs)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"train step {name}: {res}", flush=True)
    return res


CPU_CONFIGS = [(1, "ddp", False), (1, "fsdp", False), (1, "fsdp", True), (2, "ddp", False), (2, "fsdp", False),
               (2, "fsdp", True)]


def cpu_one(processes: int, distributed: str, checkpointing: bool, steps: int) -> dict:
    """train_sft on the `small` tiny policy (2.7M parameters) in one configuration."""
    from bstar.datasets.arith import generate
    from bstar.models.tiny import build_tiny_policy
    from bstar.models.trainer import train_sft

    rows = generate(512, seed=0)
    pairs = [(f"Q: {r['prompt']} A: ", r["meta"]["solution"]) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        init = build_tiny_policy(Path(tmp) / "init", size="small", seed=0)
        t0 = time.perf_counter()
        info = train_sft(pairs, init, Path(tmp) / "out", max_steps=steps, batch_size=64, lr=2e-3,
                         num_processes=processes, distributed=distributed, gradient_checkpointing=checkpointing,
                         progress=False, save_optimizer=False)
        wall = time.perf_counter() - t0
    # the largest of this process and the training processes it waited for (torchrun's children)
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"processes": processes, "distributed": distributed, "checkpointing": checkpointing,
            "step_s": round(info.seconds / steps, 3), "call_s": round(wall, 1), "peak_rss_mib": round(rss / 1024),
            "final_loss": round(info.losses[-1], 4)}


def cpu_table(steps: int = 6) -> list[dict]:
    """Every configuration in a fresh process, so each peak RSS is its own."""
    import json
    import subprocess

    out = []
    for procs, dist, ckpt in CPU_CONFIGS:
        cmd = [sys.executable, __file__, "--one", str(procs), dist, str(int(ckpt)), str(steps)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        out.append(row)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="the one-GPU FSDP steps (needs CUDA)")
    ap.add_argument("--one", nargs=4, metavar=("PROCESSES", "DISTRIBUTED", "CHECKPOINTING", "STEPS"),
                    help=argparse.SUPPRESS)  # one CPU configuration, a JSON line (what cpu_table runs)
    args = ap.parse_args(argv)
    if args.one:
        import json

        procs, dist, ckpt, steps = args.one
        print(json.dumps(cpu_one(int(procs), dist, bool(int(ckpt)), int(steps))))
        return
    if not args.gpu:
        print(f"CPU, {os.cpu_count()} cores, torch {torch.__version__}; each configuration in a fresh process; "
              "peak RSS: the largest of it and its training processes")
        cpu_table()
        return
    ceil = {"matmul_tflops": BF16_DATASHEET_TFLOPS}
    for name, shape in GPU_SHAPES.items():
        train_step(name, shape, "cuda", ceil, small=False)


if __name__ == "__main__":
    main()
