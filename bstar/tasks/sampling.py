"""Stage: sample K candidates per query from a policy checkpoint and store them in `candidates`.

Parts per (query subset, temperature), one per chunk of the subset's queries
(`part-search-t0.7-c00000`; a chunk holds about `storage.chunk_rows` candidates), so the search
stage, which samples the same queries at every grid temperature, stays one resumable unit with
deterministic output names, and a stage holds one chunk's responses in memory, not all of them.
Candidates do not depend on the chunking or sharding (per-sample seeds). With `execution.shards`
> 1 each shard of the queries writes its own parts (`part-round-t0.8-s001-c00000`). `sample_idx`
is unique per (query, stage): temperature index * K + j.
"""

from __future__ import annotations

import logging
import time

import polars as pl

from bstar.tasks.common import chunk_part, chunk_parts_re, lake_of, load_cfg, local_checkpoint, stage_task
from bstar.tasks.data import subset_frame
from bstar.tasks.prompts import render_prompts
from bstar.tasks.shards import GPU_TAG, run_shards, shard_bounds, shard_name

log = logging.getLogger(__name__)


def part_name(subset: str, temperature: float) -> str:
    return f"part-{subset}-t{temperature:.4f}".rstrip("0").rstrip(".")


@stage_task  # no `gpu` tag: its shards hold the device (bstar.tasks.shards)
def sample_candidates(
    run_id: str,
    iteration: int,
    stage: str,
    subset: str,
    policy: str,
    temperatures: list[float],
    k: int,
    cfg_json: str,
) -> dict:
    """Sample `k` responses per query of `subset` at each temperature (0 means greedy), in
    `execution.shards` shards of the subset's queries (`bstar.tasks.shards`)."""
    cfg = load_cfg(cfg_json)
    n_queries = subset_frame(cfg, run_id, subset, iteration).height
    bounds = shard_bounds(n_queries, cfg.execution.shards)
    calls = [dict(run_id=run_id, iteration=iteration, stage=stage, subset=subset, policy=policy,
                  temperatures=temperatures, k=k, shard=i, shards=len(bounds), cfg_json=cfg_json)
             for i in range(len(bounds))]
    t0 = time.time()
    done = run_shards(cfg, sample_shard, calls, "sampling")
    # a rerun with another chunk size or sharding (or an older lake's single part) leaves no extra rows
    lake = lake_of(cfg)
    written = {p for d in done for p in d["parts"]}
    for temperature in temperatures:
        lake.prune_parts("candidates", run_id, iteration, stage, chunk_parts_re(part_name(subset, temperature)),
                         written)
    n = sum(d["candidates"] for d in done)
    seconds = time.time() - t0
    log.info("sample %s (round %d, subset %s): %d candidates written = %d queries x K=%d x %d temperature(s) %s, "
             "in %d shard(s), %.1f s with model loading (%.1f generations/s)", stage, iteration, subset, n, n_queries,
             k, len(temperatures), temperature_list(temperatures), len(bounds), seconds, n / max(seconds, 1e-9))
    return {"stage": stage, "iteration": iteration, "candidates": n,
            "queries": n_queries, "shards": len(bounds)}


def temperature_list(temperatures: list[float]) -> str:
    """`t=0.6, 1` (0 is greedy)."""
    return "t=" + ", ".join(f"{t:g}" for t in temperatures)


@stage_task(tags=(GPU_TAG,))
def sample_shard(
    run_id: str,
    iteration: int,
    stage: str,
    subset: str,
    policy: str,
    temperatures: list[float],
    k: int,
    shard: int,
    shards: int,
    cfg_json: str,
) -> dict:
    """One shard of `sample_candidates`: the subset's queries [lo, hi) of `shard_bounds`."""
    from bstar.models.sampling import get_sampler, seed_for

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    frame = subset_frame(cfg, run_id, subset, iteration)
    lo, hi = shard_bounds(frame.height, shards)[shard]
    frame = frame.slice(lo, hi - lo)
    s = cfg.sampling
    qids = frame["query_id"].to_list()
    per_chunk = max(1, cfg.storage.chunk_rows // max(k, 1))  # queries per part
    n, written = 0, []
    # `policy` names the checkpoint in the rows (an object-store URL for a remote lake); the
    # sampler loads this machine's copy of it
    with get_sampler(s.backend, local_checkpoint(cfg, policy), **sampler_options(cfg)) as sampler:
        prompts = render_prompts(cfg, frame, sampler.tokenizer)
        for t_idx, temperature in enumerate(temperatures):
            base = shard_name(part_name(subset, temperature), shard, shards)
            t0, n_before, tokens = time.time(), n, 0
            # an empty subset still writes one (empty) part: the stage ran
            for c, lo in enumerate(range(0, max(len(qids), 1), per_chunk)):
                chunk_qids = qids[lo : lo + per_chunk]
                outs = [] if not chunk_qids else sample_with_backoff(
                    sampler,
                    prompts[lo : lo + per_chunk],
                    k=k,
                    temperature=temperature,
                    top_p=s.top_p if temperature > 0 else 1.0,
                    max_new_tokens=s.max_new_tokens,
                    seeds=[seed_for(q) for q in chunk_qids],
                    # the config's seeds decide every draw; the run id is only a name, so the same config
                    # under another run id (a rerun, another arm of a comparison) draws the same samples
                    base_seed=seed_for(cfg.seed, s.seed, iteration, stage, temperature),
                    stop=s.stop,
                    first_sample_idx=t_idx * k,
                )
                rows = pl.DataFrame(
                    {
                        "query_id": [q for q, o in zip(chunk_qids, outs) for _ in o],
                        "sample_idx": [x.sample_idx for o in outs for x in o],
                        "temperature": float(temperature),
                        "policy": policy,
                        "response": [x.text for o in outs for x in o],
                        "n_tokens": [x.n_tokens for o in outs for x in o],
                        "finish_reason": [x.finish_reason for o in outs for x in o],
                    }
                )
                del outs
                lake.write("candidates", rows, run_id, iteration, stage, part=chunk_part(base, c))
                written.append(chunk_part(base, c))
                n += rows.height
                tokens += int(rows["n_tokens"].sum() or 0)
            seconds = time.time() - t0
            log.info("sample %s shard %d/%d t=%g: %d candidates (%d queries x K=%d), %d tokens, %.1f s: "
                     "%.1f generations/s, %.0f tokens/s", stage, shard + 1, shards, temperature, n - n_before,
                     len(qids), k, tokens, seconds, (n - n_before) / max(seconds, 1e-9), tokens / max(seconds, 1e-9))
    return {"shard": shard, "candidates": n, "queries": frame.height, "parts": written}


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def sample_with_backoff(sampler, prompts: list[str], **kwargs):
    """`sampler.sample`, halving the decode batch on out-of-memory until one row per batch.

    Candidates do not depend on the batch they were decoded in (per-sample seeds), so a smaller
    batch gives the same rows, only slower."""
    while True:
        try:
            return sampler.sample(prompts, **kwargs)
        except (RuntimeError, MemoryError) as err:
            rows = getattr(sampler, "max_batch_rows", None)
            if not is_out_of_memory(err) or not rows or rows <= 1:
                raise
            sampler.max_batch_rows = rows // 2
            log.warning("out of memory at %d rows per batch; retrying with %d", rows, rows // 2)
            _free_accelerator_memory()


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sampler_options(cfg) -> dict:
    """Backend-specific options from the sampling config."""
    s = cfg.sampling
    if s.backend == "vllm":
        return dict(
            dtype=cfg.model.dtype,
            tensor_parallel_size=s.tensor_parallel_size,
            data_parallel_size=s.data_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
        )
    return dict(dtype=cfg.model.dtype, max_batch_rows=s.batch_size)
