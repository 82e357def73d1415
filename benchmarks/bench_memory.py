"""Benchmark: the GPU memory estimate (bstar.models.memory) against the real peak of training steps.

    python benchmarks/bench_memory.py            # a CUDA GPU with ~40 GiB free; about a minute

For each model shape (random weights, built on the GPU) and each of ddp / fsdp, with and without
gradient checkpointing, one process runs three training steps the way the trainer does
(`bstar.models.distributed.wrap`, bf16, AdamW, the trainer's fp32 cross entropy) and reports
`torch.cuda.max_memory_allocated()` of the last step next to `training_memory(...).total`. It also
measures what a bf16 forward alone keeps (activations + logits) against the activation formula.
The table in docs/gpu-memory.md ("How close it is") comes from this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "qwen2-12x2048": (dict(model_type="qwen2", hidden_size=2048, num_hidden_layers=12, num_attention_heads=16,
                           num_key_value_heads=2, intermediate_size=5632, vocab_size=151936), 4, 1024),
    "llama-8x2048": (dict(model_type="llama", hidden_size=2048, num_hidden_layers=8, num_attention_heads=16,
                          num_key_value_heads=8, intermediate_size=8192, vocab_size=32000), 4, 1024),
    # Qwen2.5-7B's own layers, four of them
    "qwen2.5-7b-4-layers": (dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=4, num_attention_heads=28,
                                 num_key_value_heads=4, intermediate_size=18944, vocab_size=152064), 2, 2048),
}
GIB = 2**30


def build(cfg: dict):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    config._attn_implementation = "sdpa"  # what the trainer gets on a GPU
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def loss_of(model, ids):
    import torch.nn.functional as F

    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # as bstar.models.trainer does
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def release() -> None:
    """Free the previous measurement's model: gradient checkpointing's hooks hold it in reference
    cycles, which only the collector breaks (else it is freed mid-way through the next one)."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


def step_peak(cfg, strategy, checkpointing, micro, seq, steps=3) -> float:
    """GiB: the peak allocated memory of the last of `steps` training steps."""
    import torch

    from bstar.models import distributed as D

    release()
    base = torch.cuda.memory_allocated()
    model = build(cfg)
    procs = D.init_processes("cuda", strategy)
    if strategy == "fsdp":
        model = model.to("cpu")  # the trainer loads FSDP models on the CPU; fully_shard moves the shards
    wrapped = D.wrap(model, procs, strategy, precision="bf16", gradient_checkpointing=checkpointing)
    opt = torch.optim.AdamW(D.decay_groups(wrapped, D.no_decay_names(model), 0.0), lr=1e-5)
    ids = torch.randint(0, cfg["vocab_size"], (micro, seq), device="cuda")
    peak = 0
    for _ in range(steps):
        torch.cuda.reset_peak_memory_stats()
        with D.autocast(procs, strategy, "bf16"):
            loss_of(wrapped, ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    del wrapped, model, opt
    D.close_processes(procs)
    return peak / GIB


def forward_kept(cfg, micro, seq) -> float:
    """GiB a bf16 forward keeps for the backward (FSDP's compute: bf16 weights, no autocast)."""
    import torch

    release()
    model = build(cfg).to(torch.bfloat16)
    ids = torch.randint(0, cfg["vocab_size"], (micro, seq), device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    loss = loss_of(model, ids)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - before
    del loss, model
    return kept / GIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    import torch

    from bstar.models.memory import ModelShape, TrainingPlan, training_memory

    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to measure")
        return 1
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; GiB measured / estimated")
    print(f"{'shape':<22}{'params':>8}{'tokens':>12}  {'bf16 forward':>14}" +
          "".join(f"{s:>18}" for s in ("ddp", "ddp+ckpt", "fsdp", "fsdp+ckpt")))
    for name in args.shapes:
        cfg, micro, seq = SHAPES[name]
        shape = ModelShape.from_config(cfg, name)
        fwd = training_memory(shape, TrainingPlan("fsdp", 1, micro, seq, "bf16"))
        cells = [f"{forward_kept(cfg, micro, seq):6.2f} / {(fwd.activations + fwd.logits) / GIB:5.2f}"]
        for strategy in ("ddp", "fsdp"):
            for ckpt in (False, True):
                est = training_memory(shape, TrainingPlan(strategy, 1, micro, seq, "bf16", ckpt)).total / GIB
                cells.append(f"{step_peak(cfg, strategy, ckpt, micro, seq):6.2f} / {est:6.2f}")
        print(f"{name:<22}{shape.parameters() / 1e9:7.2f}B{f'{micro} x {seq}':>12}  {cells[0]:>14}"
              + "".join(f"{c:>18}" for c in cells[1:]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
