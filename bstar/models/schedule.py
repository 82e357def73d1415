"""The learning-rate schedule and the loss-line cadence both trainers use (policy SFT and PRM).

    lr_factor(step_in_schedule, warmup_steps, schedule_steps, min_lr_ratio)  # x peak lr
"""

from __future__ import annotations

import math


def lr_factor(step_in_schedule: int, warmup_steps: int, schedule_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up to 1, then cosine decay to `min_lr_ratio` at `schedule_steps` (flat after)."""
    if warmup_steps > 0 and step_in_schedule < warmup_steps:
        return (step_in_schedule + 1) / warmup_steps
    decay = max(1, schedule_steps - warmup_steps)
    progress = min(1.0, (step_in_schedule - warmup_steps) / decay)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def loss_log_every(n_steps: int) -> int:
    """How many optimizer steps apart the loss is logged: about ten lines a call, at least one step."""
    return max(1, n_steps // 10)


def mean_since(recent: list[float]) -> str:
    """`, mean 0.4512 over the last 20 steps` for a loss line ('' for a single step)."""
    return f", mean {sum(recent) / len(recent):.4f} over the last {len(recent)} steps" if len(recent) > 1 else ""
