"""vLLM sampler backend (GPU, optional extra `bstar[gpu]`). Imported lazily by `get_sampler`.

Same interface as the transformers backend. Every prompt is its own request with
`SamplingParams(n=K, temperature, top_p, max_tokens, seed=seed_for(base_seed, prompt seed), stop)`,
given to vLLM as token ids encoded by `bstar.models.loading.encode_prompts` (as the transformers
backend and the trainer encode it: vLLM's own text path would add a second BOS in front of a
chat template that already starts with one, and training would mask other tokens than were seen),
so a rerun reproduces the same candidates (vLLM's per-request seeded sampling). Tensor parallelism
is `tensor_parallel_size`; data parallelism (`data_parallel_size > 1`) runs one engine per GPU
group in subprocesses, each on a contiguous slice of the prompts.
"""

from __future__ import annotations

import gc
import os

from bstar.models.sampling import Sample, Sampler, seed_for


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the vllm sampler needs vLLM: pip install 'bstar[gpu]'") from e
    return vllm


class VLLMSampler(Sampler):
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
        **engine_kwargs,
    ):
        self.model_path = model_path
        self.tp, self.dp = int(tensor_parallel_size), int(data_parallel_size)
        self.engine_kwargs = dict(
            model=os.path.join(model_path, gguf_file) if gguf_file else model_path,
            tensor_parallel_size=self.tp, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager, **engine_kwargs,
        )
        if gguf_file:
            self.engine_kwargs["tokenizer"] = model_path
        self.llm = None
        self._tokenizer = None
        if self.dp == 1:
            vllm = _require_vllm()
            self.llm = vllm.LLM(**{k: v for k, v in self.engine_kwargs.items() if v is not None})

    @property
    def tokenizer(self):
        """The model's tokenizer (for chat templates), loaded on first use."""
        if self._tokenizer is None:
            if self.llm is not None:
                self._tokenizer = self.llm.get_tokenizer()
            else:
                from bstar.models.loading import load_tokenizer

                self._tokenizer = load_tokenizer(self.model_path)
        return self._tokenizer

    @staticmethod
    def _params(k, temperature, top_p, max_new_tokens, seed, stop):
        from vllm import SamplingParams

        return SamplingParams(n=k, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                              max_tokens=max_new_tokens, seed=seed, stop=stop or None)

    def sample(self, prompts, k=1, temperature=1.0, top_p=1.0, max_new_tokens=256, *, seeds=None, base_seed=0,
               stop=None, first_sample_idx=0, progress=True):
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        prompt_seeds = list(seeds) if seeds is not None else [seed_for("prompt", p) for p in prompts]
        req_seeds = [seed_for(base_seed, s, first_sample_idx) & 0x7FFFFFFF for s in prompt_seeds]
        job = dict(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop,
                   first_sample_idx=first_sample_idx, progress=progress)
        from bstar.models.loading import encode_prompts

        requests = [{"prompt_token_ids": ids} for ids in encode_prompts(self.tokenizer, list(prompts))]
        if self.dp > 1:
            return _data_parallel(self.engine_kwargs, self.tp, self.dp, requests, req_seeds, job)
        return _generate(self.llm, requests, req_seeds, **job)

    def close(self) -> None:
        if self.llm is not None:
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                del self.llm
                cleanup_dist_env_and_memory()
            except Exception:  # pragma: no cover - best effort across vLLM versions
                pass
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


def _generate(llm, prompts, req_seeds, *, k, temperature, top_p, max_new_tokens, stop, first_sample_idx, progress):
    params = [VLLMSampler._params(k, temperature, top_p, max_new_tokens, s, stop) for s in req_seeds]
    outs = llm.generate(prompts, params, use_tqdm=progress)
    results = []
    for o in outs:
        results.append([
            Sample(text=c.text, n_tokens=len(c.token_ids), finish_reason="length" if c.finish_reason == "length" else "stop",
                   sample_idx=first_sample_idx + j)
            for j, c in enumerate(sorted(o.outputs, key=lambda c: c.index))
        ])
    return results


def _dp_worker(rank, engine_kwargs, tp, prompts, req_seeds, job, queue):  # pragma: no cover - GPU only
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(rank * tp + i) for i in range(tp))
    vllm = _require_vllm()
    llm = vllm.LLM(**{k: v for k, v in engine_kwargs.items() if v is not None})
    res = _generate(llm, prompts, req_seeds, **{**job, "progress": job["progress"] and rank == 0})
    queue.put((rank, [[(s.text, s.n_tokens, s.finish_reason, s.sample_idx) for s in row] for row in res]))


def _data_parallel(engine_kwargs, tp, dp, prompts, req_seeds, job):  # pragma: no cover - GPU only
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    size = -(-len(prompts) // dp)
    procs = []
    for r in range(dp):
        sl = slice(r * size, (r + 1) * size)
        p = ctx.Process(target=_dp_worker, args=(r, engine_kwargs, tp, prompts[sl], req_seeds[sl], job, queue))
        p.start()
        procs.append(p)
    parts = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"vLLM data-parallel worker exited with {p.exitcode}")
    out = []
    for r in range(dp):
        out += [[Sample(*s) for s in row] for row in parts.get(r, [])]
    return out
