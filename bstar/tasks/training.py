"""Stages: SFT warm-up of the initial policy on gold solutions, and each round's fine-tune on the
selected (prompt, response) pairs. Both write a `checkpoints` row and return the checkpoint path.

The training mode (DESIGN.md §1) decides where a round starts: `restart` from the initial
checkpoint, `iterative` and `online` from the previous round (online also carries the optimizer
and one LR schedule over all rounds).
"""

from __future__ import annotations

import os

import polars as pl

from bstar.tasks.common import checkpoint_dir, lake_of, load_cfg, stage_task
from bstar.tasks.data import as_rows, read_queries, warmup_queries


def _trainer_kwargs(cfg) -> dict:
    t = cfg.training
    return dict(
        lr=t.lr,
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_processes=t.num_processes,
        precision="bf16" if t.bf16 else "auto",
        seed=cfg.seed,
    )


def warmup_trainer_kwargs(cfg) -> dict:
    """The rounds' trainer settings with the warm-up's own lr, batch size and (if set) weight decay."""
    w = cfg.training.warmup
    kw = _trainer_kwargs(cfg) | dict(lr=w.lr, batch_size=w.batch_size)
    if w.weight_decay is not None:
        kw["weight_decay"] = w.weight_decay
    return kw


def gold_examples(cfg, queries: pl.DataFrame) -> list[tuple[str, str]]:
    from bstar.datasets import gold_response, render_prompt

    from bstar.tasks.sampling import template_of

    out = []
    for row in as_rows(queries):
        template = template_of(cfg, row)
        out.append((render_prompt(template, row), gold_response(template, row)))
    return out


@stage_task(tags=("gpu",))
def warm_up(run_id: str, cfg_json: str) -> dict:
    """Build (or name) the initial policy and, if configured, SFT it on gold solutions."""
    from bstar.models.trainer import sft_warmup

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    model = cfg.model.name_or_path
    if model == "tiny":
        from bstar.models.tiny import build_tiny_policy

        model = build_tiny_policy(
            checkpoint_dir(cfg, run_id, "init"),
            hidden=cfg.model.hidden_size,
            layers=cfg.model.num_layers,
            heads=cfg.model.num_heads,
            seed=cfg.seed,
        )
    w = cfg.training.warmup
    path, step = str(model), 0
    if w.steps > 0:
        train = warmup_queries(cfg, run_id)
        info = sft_warmup(gold_examples(cfg, train), model, checkpoint_dir(cfg, run_id, "warmup"), max_steps=w.steps,
                          **warmup_trainer_kwargs(cfg))
        path, step = info.path, info.step
    lake.write("checkpoints", [{"step": step, "path": path, "mode": "warmup"}], run_id, 0)
    return {"policy": path, "step": step}


@stage_task(tags=("gpu",))
def fine_tune(run_id: str, iteration: int, policy: str, initial: str, cfg_json: str) -> dict:
    """SFT on this round's selections; the training mode picks the starting checkpoint."""
    from bstar.models.trainer import round_init_checkpoint, train_sft

    from bstar.tasks.sampling import render_prompts

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    mode = cfg.training_mode
    start = round_init_checkpoint(mode, initial, policy)
    selected = lake.read("selections", run_id, iteration, "train")
    if selected.is_empty():
        # Nothing passed the threshold: the round keeps its starting policy rather than failing.
        lake.write("checkpoints", [{"step": _step_of(start), "path": start, "mode": mode}], run_id, iteration)
        return {"policy": start, "step": _step_of(start), "examples": 0}
    rows = selected.join(read_queries(cfg, run_id, "train"), on="query_id").sort("query_id", "sample_idx")
    examples = list(zip(render_prompts(cfg, rows), rows["response"].to_list()))
    t = cfg.training
    steps = dict(max_steps=t.max_steps) if t.max_steps else dict(epochs=t.epochs)
    info = train_sft(
        examples,
        start,
        checkpoint_dir(cfg, run_id, f"iter-{iteration}"),
        mode=mode,
        total_rounds=cfg.iterations,
        **steps,
        **_trainer_kwargs(cfg),
    )
    lake.write("checkpoints", [{"step": info.step, "path": info.path, "mode": mode}], run_id, iteration)
    return {"policy": info.path, "step": info.step, "examples": len(examples)}


def _step_of(checkpoint: str) -> int:
    from bstar.models.trainer import TrainerState

    state = TrainerState.read(checkpoint) if os.path.isdir(checkpoint) else None
    return state.step if state else 0
