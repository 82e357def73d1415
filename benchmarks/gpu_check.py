"""The GPU check: bstar's model stages on a CUDA device, with the figures README quotes.

    python benchmarks/gpu_check.py                 # a CUDA machine (torch + transformers; no vLLM,
                                                   # no network, no weights: every model is built here)
    python benchmarks/gpu_check.py --cpu           # the same code at tiny sizes on the CPU (the test suite)
    python benchmarks/gpu_check.py --out DIR       # also DIR/gpu_check.json with every figure

What it runs, in one process, as the flow process runs the stages:
1. the device's own ceilings: a bf16 matrix product (TFLOP/s) and a device-to-device copy (GB/s);
2. the model stages on the tiny policy, each through the same entry point its stage task calls:
   SFT warm-up (FSDP2 on one process, bf16, gradient checkpointing: `train_sft`), sampling
   (`TransformersSampler`), PRM training (`train_prm`, FSDP2) and PRM scoring (`load_prm`); after
   each, `torch.cuda.memory_reserved()` and the `nn.Parameter`s still alive, which must both be
   back to where they were (the next stage may be a vLLM engine that needs the memory);
3. sampling throughput (our transformers decode loop) on randomly initialised SmolLM2-135M- and
   Llama-3.2-1B-shaped models, against the decode bound (every step reads every weight once);
4. FSDP2 training steps (bf16, activation checkpointing) on randomly initialised 1B- and
   7B-Llama-shaped models on one device: step time, tokens/s, peak memory and MFU against the
   measured bf16 rate.
The last line is one summary. A stage that runs out of memory is reported as such, not fatal.
Prefect, the lake and DuckDB are not needed (nor imported): this checks the model layer, which is
what touches the device.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from bench_train import BF16_DATASHEET_TFLOPS, GPU_SHAPES, llama_config, n_params, sync, train_step  # noqa: E402

# (hidden, layers, heads, kv heads, intermediate, vocab, tied) of the shapes measured
SHAPES = {"smollm2-135m": (576, 30, 9, 3, 1536, 49152, True), **GPU_SHAPES}
# what the CUDA libraries keep for the process once used (cuBLAS / cuBLASLt workspaces, measured
# 32 MiB on an H200): not a model's memory, and it does not grow from stage to stage
LIBRARY_RESIDUE_MIB = 256
CPU_SHAPES = {  # --cpu: the same code paths at sizes a CPU test can afford
    "smollm2-135m": (64, 2, 4, 2, 128, 512, True),
    "llama-1b": (64, 2, 4, 2, 128, 512, True),
    "llama-7b": (96, 3, 4, 4, 192, 512, False),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def reserved_mib() -> float:
    return torch.cuda.memory_reserved() / 2**20 if torch.cuda.is_available() else 0.0


def live_parameters() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.nn.Parameter))


# ---------------------------------------------------------------------------------------------
# 1. ceilings
# ---------------------------------------------------------------------------------------------


def ceilings(device: str, small: bool) -> dict:
    n = 512 if small else 8192
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 3 if small else 50
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    tflops = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    x = torch.empty(2**20 if small else 2**30, dtype=torch.uint8, device=device)  # 1 GiB on a GPU
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    gbs = 2 * x.numel() * reps / (time.perf_counter() - t0) / 1e9  # bytes read + written
    del a, b, x, y
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"matmul_tflops": round(tflops, 3), "copy_gb_s": round(gbs, 2)}


# ---------------------------------------------------------------------------------------------
# 2. the stages on the tiny policy
# ---------------------------------------------------------------------------------------------


def stages(device: str, work: Path, small: bool) -> dict:
    from bstar.datasets.arith import generate
    from bstar.models.prm import load_prm
    from bstar.models.prm_train import train_prm
    from bstar.models.sampling import TransformersSampler
    from bstar.models.tiny import build_tiny_policy
    from bstar.models.trainer import train_sft

    rows = generate(256, seed=0)
    pairs = [(f"Q: {r['prompt']} A: ", r["meta"]["solution"]) for r in rows]
    init = build_tiny_policy(work / "init", seed=0)
    baseline = {"reserved_mib": reserved_mib(), "parameters": live_parameters()}
    out: dict = {"baseline": baseline, "after": {}}

    def after(name: str, seconds: float, **extra) -> None:
        out["after"][name] = {"seconds": round(seconds, 2), "reserved_mib": round(reserved_mib(), 1),
                              "parameters": live_parameters(), **extra}
        log(f"stage {name}: {seconds:.1f} s, reserved {out['after'][name]['reserved_mib']} MiB, "
            f"parameters alive {out['after'][name]['parameters']} {extra}")

    t0 = time.perf_counter()
    sft_steps, prm_steps, n_prompts = (4, 3, 16) if small else (30, 10, 64)
    sft = train_sft(pairs, init, work / "warmup", max_steps=sft_steps, batch_size=32, lr=3e-3, device=device,
                    distributed="fsdp", gradient_checkpointing=True, progress=False, save_optimizer=False)
    from transformers import AutoConfig

    after("sft-warmup", time.perf_counter() - t0, final_loss=round(sft.losses[-1], 4),
          saved_dtype=str(AutoConfig.from_pretrained(sft.path).dtype))

    t0 = time.perf_counter()
    with TransformersSampler(sft.path, device=device) as sampler:
        got = sampler.sample([p for p, _ in pairs[:n_prompts]], k=4, temperature=0.8, max_new_tokens=48,
                             progress=False)
    after("sampling", time.perf_counter() - t0, samples=sum(map(len, got)),
          tokens=sum(s.n_tokens for per_prompt in got for s in per_prompt))

    ex = []
    for r, (prompt, solution) in zip(rows[:64], pairs[:64]):
        steps = solution.split("; ")
        ex.append({"prompt": prompt, "steps": steps, "labels": [1.0] * len(steps)})
    t0 = time.perf_counter()
    prm = train_prm(ex, sft.path, work / "prm", max_steps=prm_steps, batch_size=16, device=device, distributed="fsdp",
                    gradient_checkpointing=True, progress=False)
    after("prm-train", time.perf_counter() - t0, final_loss=round(prm.losses[-1], 4))

    t0 = time.perf_counter()
    with load_prm(prm.path, device=device) as scorer:
        scores = scorer.score([e["prompt"] for e in ex], ["; ".join(e["steps"]) for e in ex], progress=False)
    after("prm-score", time.perf_counter() - t0, responses=len(scores))
    worst = max(v["reserved_mib"] for v in out["after"].values())
    out["memory_handed_back"] = worst <= baseline["reserved_mib"] + LIBRARY_RESIDUE_MIB and all(
        v["parameters"] <= baseline["parameters"] for v in out["after"].values())
    return out


# ---------------------------------------------------------------------------------------------
# 3. sampling throughput, 4. FSDP training steps
# ---------------------------------------------------------------------------------------------


def word_tokenizer(vocab: int):
    """A tokenizer of `vocab` words `w3`, `w4`, ... (ids 0-3 special): a random model's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, vocab)}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


def sampling_throughput(name: str, shape, device: str, ceil: dict, small: bool) -> dict:
    from transformers import LlamaForCausalLM

    from bstar.models.sampling import TransformersSampler

    cfg = llama_config(shape)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(dtype)
    tok = word_tokenizer(cfg.vocab_size)
    n_prompts, k, new = (8, 2, 16) if small else (128, 4, 256)
    prompts = [" ".join(f"w{4 + (i * 7 + j) % 1000}" for j in range(96)) for i in range(n_prompts)]
    sampler = TransformersSampler(name, device=device, model=model, tokenizer=tok, max_batch_rows=n_prompts * k)
    sampler.sample(prompts[:2], k=1, temperature=1.0, max_new_tokens=4, progress=False)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    got = sampler.sample(prompts, k=k, temperature=1.0, max_new_tokens=new, progress=False)
    sync(device)
    seconds = time.perf_counter() - t0
    tokens = sum(s.n_tokens for per_prompt in got for s in per_prompt)
    p = n_params(model)
    rows = n_prompts * k
    # decode bound: every step reads every weight once and every row's KV cache (at the mean
    # context length), and does 2 FLOPs per weight per row; bytes at the measured copy rate
    width = 2 if dtype == torch.bfloat16 else 4
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    step_bytes = width * (p + rows * kv_per_token * (96 + new / 2))
    step_s = max(step_bytes / (ceil["copy_gb_s"] * 1e9), 2 * p * rows / (ceil["matmul_tflops"] * 1e12))
    bound = rows / step_s
    sampler.close()
    del model, sampler
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    res = {"params_m": round(p / 1e6, 1), "rows": rows, "new_tokens": new, "seconds": round(seconds, 2),
           "tokens_per_s": round(tokens / seconds, 1), "decode_bound_tokens_per_s": round(bound, 1),
           "of_bound": round(tokens / seconds / bound, 3)}
    log(f"sampling {name}: {res}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (what the test suite runs)")
    ap.add_argument("--out", type=Path, help="write gpu_check.json here")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: ceilings,stages,sampling,train")
    args = ap.parse_args(argv)
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible; run with --cpu for the CPU check", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    import transformers

    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "date": time.strftime("%Y-%m-%d")}
    if device == "cuda":
        report["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    log(f"gpu check on {report}")
    shapes = CPU_SHAPES if args.cpu else SHAPES
    t_all = time.perf_counter()
    report["ceilings"] = ceil = ceilings(device, args.cpu) if "ceilings" not in skip else {
        "matmul_tflops": BF16_DATASHEET_TFLOPS, "copy_gb_s": 4800.0}
    log(f"ceilings: {ceil}")
    with tempfile.TemporaryDirectory() as tmp:
        if "stages" not in skip:
            report["stages"] = stages(device, Path(tmp), args.cpu)
    if "sampling" not in skip:
        report["sampling"] = {n: sampling_throughput(n, shapes[n], device, ceil, args.cpu)
                              for n in ("smollm2-135m", "llama-1b")}
    if "train" not in skip:
        report["train"] = {n: train_step(n, shapes[n], device, ceil, args.cpu) for n in ("llama-1b", "llama-7b")}
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    st = report.get("stages", {})
    tr = report.get("train", {})
    sa = report.get("sampling", {})
    ok = st.get("memory_handed_back", True) and not any("error" in v for v in tr.values())
    print("GPU CHECK " + ("PASS" if ok else "FAIL") + f" on {report['device']}: "
          f"memory handed back after every stage {st.get('memory_handed_back')}; "
          + "; ".join(f"sampling {n} {v['tokens_per_s']} tok/s ({v['of_bound']:.0%} of bound)" for n, v in sa.items())
          + "; " + "; ".join(f"train {n} " + (v["error"] if "error" in v else
                                              f"{v['step_s']} s/step, {v['tokens_per_s']} tok/s, MFU "
                                              f"{v['mfu_measured_peak']:.0%}, peak {v['peak_gib']} GiB")
                             for n, v in tr.items())
          + f"; {report['seconds']} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
