"""The one prompt renderer: every stage that shows a query to a model renders it here.

    from bstar.tasks.prompts import render_prompts
    prompts = render_prompts(cfg, frame, policy)    # policy: a checkpoint path, or its loaded tokenizer

Warm-up, fine-tune, sampling (search, train, greedy and sampled evaluation), Math-Shepherd
annotation, PRM training and PRM scoring all call `render_prompts` with the checkpoint whose
model sees the prompt, so a chat template is always rendered by that model's own tokenizer. The
text is then encoded by one function, `bstar.models.loading.encode_prompts`, in the sampler (both
backends) and in the trainer, so the prompt tokens a training example masks are exactly the
tokens the sampler conditioned on.

Which template a query gets (`template_of`): its dataset's configured `template`; else `chat`
when `model.chat_template` is true (an instruct model); else the dataset's own (`arith`, `arc`);
else the paper's plain format.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import polars as pl

from bstar.tasks.data import as_rows

DEFAULT_TEMPLATES = {"arith": "arith", "arc": "arc"}


def template_of(cfg, row: dict) -> str:
    """The prompt template of the dataset a query came from (see the module docstring)."""
    ds = next((d for d in (cfg.data.train, *cfg.data.test) if d.name == row.get("dataset")), cfg.data.train)
    if ds.template:
        return ds.template
    if cfg.model.chat_template:
        return "chat"
    return DEFAULT_TEMPLATES.get(ds.name, "paper")


@lru_cache(maxsize=8)
def _tokenizer_at(path: str):
    from bstar.models.loading import load_tokenizer

    return load_tokenizer(path)


def chat_tokenizer(policy: Any):
    """The tokenizer that renders chat prompts for `policy` (a checkpoint path or a tokenizer),
    with a clear error when it has no chat template."""
    tok = _tokenizer_at(str(policy)) if isinstance(policy, str) else policy
    if tok is None or not hasattr(tok, "apply_chat_template"):
        raise ValueError(f"the chat template needs the policy's tokenizer; got {type(tok).__name__} for {policy!r}")
    if getattr(tok, "chat_template", None) is None:
        where = policy if isinstance(policy, str) else type(tok).__name__
        raise ValueError(
            f"model.chat_template is true but the tokenizer of {where} has no chat template: set "
            "model.chat_template: false (the paper's plain format), or a dataset's `template:`"
        )
    return tok


def render_prompts(cfg, frame: pl.DataFrame, policy: Any) -> list[str]:
    """The model input of every query row of `frame`, rendered for `policy` (a checkpoint path,
    loaded lazily and only when a chat template is needed, or an already loaded tokenizer)."""
    from bstar.datasets import render_prompt

    rows = as_rows(frame)
    templates = [template_of(cfg, r) for r in rows]
    tok = chat_tokenizer(policy) if "chat" in templates else None
    return [render_prompt(t, r, tokenizer=tok) for t, r in zip(templates, rows)]
