"""Stages: SFT warm-up of the initial policy on gold solutions, and each round's fine-tune on the
selected (prompt, response) pairs. Both write a `checkpoints` row and return the checkpoint path.

The training mode (DESIGN.md §1) decides where a round starts: `restart` from the initial
checkpoint, `iterative` and `online` from the previous round (online also carries the optimizer
and one LR schedule over all rounds).
"""

from __future__ import annotations

import logging
import math
import os

import polars as pl

from bstar.tasks.common import (checkpoint_dir, checkpoint_location, lake_of, load_cfg, local_checkpoint,
                                publish_checkpoint, stage_task)
from bstar.tasks.data import as_rows, read_queries, warmup_queries
from bstar.tasks.prompts import render_prompts, template_of
from bstar.tasks.shards import GPU_TAG, run_shards

log = logging.getLogger(__name__)


def _trainer_kwargs(cfg) -> dict:
    t = cfg.training
    return dict(
        lr=t.lr,
        batch_size=t.batch_size,
        grad_accum=t.accumulation(t.batch_size),
        warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_processes=t.num_processes,
        distributed=t.distributed,
        gradient_checkpointing=t.gradient_checkpointing,
        max_length=t.max_length,
        cpu_offload=t.cpu_offload,
        precision="bf16" if t.bf16 else "auto",
        seed=cfg.seed,
    )


def round_steps(cfg) -> dict:
    """How long each round trains: `{"max_steps": S}` or `{"epochs": E}` for `train_sft`.

    Online mode carries one LR schedule over all rounds, `iterations` x the per-round step count,
    so every round must take the same number of steps: `training.max_steps`, or, when only
    `epochs` is set, epochs over N (`selection.n_target`, the per-round sample budget the paper
    fixes) in batches of `batch_size`. Epochs over each round's own data would fix the schedule
    from round 1's size, and a larger later round would train its tail at LR 0. Iterative and
    restart modes start a fresh schedule every round: epochs count over that round's data."""
    t = cfg.training
    if t.max_steps:
        return {"max_steps": t.max_steps}
    if cfg.training_mode == "online":
        return {"max_steps": max(1, math.ceil(t.epochs * cfg.selection.n_target / t.batch_size))}
    return {"epochs": t.epochs}


def training_summary(cfg) -> str:
    """The rounds' training length and LR schedule in one line (for `bstar check`)."""
    t, mode, steps = cfg.training, cfg.training_mode, round_steps(cfg)
    if "epochs" in steps:
        return f"{mode}: {t.epochs:g} epoch(s) of each round's data, a fresh LR schedule every round"
    how = "training.max_steps" if t.max_steps else (
        f"epochs {t.epochs:g} x N {cfg.selection.n_target} / batch {t.batch_size}")
    per = f"{steps['max_steps']} steps per round ({how})"
    if mode == "online":
        return f"online: one LR schedule of {cfg.iterations} rounds x {per}"
    return f"{mode}: {per}, a fresh LR schedule every round"


def warmup_trainer_kwargs(cfg) -> dict:
    """The rounds' trainer settings with the warm-up's own lr, batch size and (if set) weight decay."""
    w = cfg.training.warmup
    kw = _trainer_kwargs(cfg) | dict(lr=w.lr, batch_size=w.batch_size,
                                     grad_accum=cfg.training.accumulation(w.batch_size))
    if w.weight_decay is not None:
        kw["weight_decay"] = w.weight_decay
    return kw


def gold_examples(cfg, queries: pl.DataFrame, policy: str) -> list[tuple[str, str]]:
    """(prompt rendered for `policy`, gold response) per query: the warm-up's SFT pairs."""
    from bstar.datasets import gold_response

    prompts = render_prompts(cfg, queries, policy)
    return [(p, gold_response(template_of(cfg, r), r)) for p, r in zip(prompts, as_rows(queries))]


def initial_policy(cfg, run_id: str) -> str:
    """The checkpoint (or hub id) a run starts from: the tiny model built for it, a GGUF
    checkpoint de-quantized once into `_checkpoints/RUN/base`, or `model.name_or_path` as it is.
    Built checkpoints are published with the lake (an object-store URL for a remote root)."""
    from bstar.models.loading import gguf_source, materialize_gguf

    m = cfg.model
    if m.name_or_path == "tiny":
        from bstar.models.tiny import build_tiny_policy

        built = build_tiny_policy(checkpoint_dir(cfg, run_id, "init"), hidden=m.hidden_size, layers=m.num_layers,
                                  heads=m.num_heads, seed=cfg.seed)
        return publish_checkpoint(cfg, built, checkpoint_location(cfg, run_id, "init"))
    gguf = gguf_source(m.name_or_path, m.gguf_file)
    if gguf is not None:
        dtype = "fp32" if m.dtype == "auto" else m.dtype
        built = materialize_gguf(*gguf, checkpoint_dir(cfg, run_id, "base"), dtype=dtype)
        return publish_checkpoint(cfg, built, checkpoint_location(cfg, run_id, "base"))
    return m.name_or_path


@stage_task  # no `gpu` tag: `warm_up_on_node` holds the device (bstar.tasks.shards)
def warm_up(run_id: str, cfg_json: str) -> dict:
    """Build (or name) the initial policy and, if configured, SFT it on gold solutions: one task,
    in this process or (engine `ray`) on a node with `execution.training`'s resources."""
    cfg = load_cfg(cfg_json)
    return run_shards(cfg, warm_up_on_node, [dict(run_id=run_id, cfg_json=cfg_json)], "training")[0]


@stage_task(tags=(GPU_TAG,))
def warm_up_on_node(run_id: str, cfg_json: str) -> dict:
    """The work of `warm_up`, wherever the engine placed it."""
    from bstar.models.trainer import sft_warmup

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    model = initial_policy(cfg, run_id)
    w = cfg.training.warmup
    path, step = str(model), 0
    if w.steps > 0:
        train = warmup_queries(cfg, run_id)
        start = local_checkpoint(cfg, model)
        examples = gold_examples(cfg, train, start)
        log.info("warm-up: SFT of %s on %d gold solutions for %d steps", model, len(examples), w.steps)
        # no optimizer state: every round starts a fresh optimizer from the warm-up
        info = sft_warmup(examples, start, checkpoint_dir(cfg, run_id, "warmup"),
                          max_steps=w.steps, save_optimizer=False, **warmup_trainer_kwargs(cfg))
        path, step = publish_checkpoint(cfg, info.path, checkpoint_location(cfg, run_id, "warmup")), info.step
        log.info("warm-up: %d steps, final loss %s, %d response tokens, %.1f s -> %s", len(info.losses),
                 _final(info.losses), info.tokens, info.seconds, path)
    else:
        log.info("warm-up: none configured (training.warmup.steps 0); the run starts from %s", path)
    lake.write("checkpoints", [{"step": step, "path": path, "mode": "warmup"}], run_id, 0)
    return {"policy": path, "step": step}


@stage_task  # no `gpu` tag: `fine_tune_on_node` holds the device (bstar.tasks.shards)
def fine_tune(run_id: str, iteration: int, policy: str, initial: str, cfg_json: str) -> dict:
    """SFT on this round's selections; the training mode picks the starting checkpoint. One task
    (several GPUs through torchrun), in this process or (engine `ray`) on a node with
    `execution.training`'s resources."""
    cfg = load_cfg(cfg_json)
    call = dict(run_id=run_id, iteration=iteration, policy=policy, initial=initial, cfg_json=cfg_json)
    return run_shards(cfg, fine_tune_on_node, [call], "training")[0]


@stage_task(tags=(GPU_TAG,))
def fine_tune_on_node(run_id: str, iteration: int, policy: str, initial: str, cfg_json: str) -> dict:
    """The work of `fine_tune`, wherever the engine placed it."""
    from bstar.models.trainer import round_init_checkpoint, train_sft

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    mode = cfg.training_mode
    start = round_init_checkpoint(mode, initial, policy)
    start_dir = local_checkpoint(cfg, start)  # online mode resumes the optimizer state saved with it
    selected = lake.read("selections", run_id, iteration, "train")
    if selected.is_empty():
        # Nothing passed the threshold: the round keeps its starting policy rather than failing.
        step = _step_of(start_dir)
        log.warning("fine-tune (round %d): no responses selected; the round keeps its starting policy %s",
                    iteration, start)
        lake.write("checkpoints", [{"step": step, "path": start, "mode": mode}], run_id, iteration)
        return {"policy": start, "step": step, "examples": 0}
    selected = selected.sort("query_id", "sample_idx")
    queries = read_queries(cfg, run_id, "train").filter(pl.col("query_id").is_in(selected["query_id"].unique()))
    # rendered with the tokenizer of the checkpoint being trained: the prompt tokens the sampler saw;
    # once per query, so the examples of one query share one prompt string
    prompt_of = dict(zip(queries["query_id"].to_list(), render_prompts(cfg, queries, start_dir)))
    examples = [(prompt_of[q], r) for q, r in zip(selected["query_id"].to_list(), selected["response"].to_list())]
    name = f"iter-{iteration}"
    log.info("fine-tune (round %d, %s from %s): %d selected responses of %d queries, %s", iteration, mode, start,
             len(examples), len(prompt_of), ", ".join(f"{k} {v:g}" for k, v in round_steps(cfg).items()))
    info = train_sft(
        examples,
        start_dir,
        checkpoint_dir(cfg, run_id, name),
        mode=mode,
        total_rounds=cfg.iterations,
        save_optimizer=mode == "online",  # only an online round's successor reads the AdamW state
        **round_steps(cfg),
        **_trainer_kwargs(cfg),
    )
    path = publish_checkpoint(cfg, info.path, checkpoint_location(cfg, run_id, name))
    prune_optimizer_states(cfg, run_id, iteration)
    log.info("fine-tune (round %d): %d steps to lineage step %d, final loss %s, %d response tokens, %.1f s -> %s",
             iteration, len(info.losses), info.step, _final(info.losses), info.tokens, info.seconds, path)
    lake.write("checkpoints", [{"step": info.step, "path": path, "mode": mode}], run_id, iteration)
    return {"policy": path, "step": info.step, "examples": len(examples)}


def prune_optimizer_states(cfg, run_id: str, iteration: int) -> None:
    """`storage.keep_checkpoints: N`: drop the optimizer state of rounds older than the last N
    (weights stay). Round `iteration`'s own state is kept (N >= 1), the one the next online
    round, or a rerun of it, reads."""
    from bstar.models.trainer import OPTIMIZER_DIR
    from bstar.storage.checkpoints import drop_subdir

    keep = cfg.storage.keep_checkpoints
    if not keep:
        return
    for old in range(1, iteration - keep + 1):
        n = drop_subdir(checkpoint_location(cfg, run_id, f"iter-{old}"), OPTIMIZER_DIR,
                        cfg.storage.storage_options())
        if n:
            log.info("keep_checkpoints %d: removed the optimizer state of round %d (%d files)", keep, old, n)


def _final(losses: list[float]) -> str:
    """The last step's loss and the mean of the last ten, for a log line."""
    if not losses:
        return "n/a (no steps)"
    tail = losses[-10:]
    return f"{losses[-1]:.4f} (mean of the last {len(tail)} steps {sum(tail) / len(tail):.4f})"


def _step_of(checkpoint: str) -> int:
    from bstar.models.trainer import TrainerState

    state = TrainerState.read(checkpoint) if os.path.isdir(checkpoint) else None
    return state.step if state else 0
