"""Train our own `bstar-scalar` PRM: a causal LM backbone + a scalar head, binary cross-entropy
at every step-end token (the Math-Shepherd recipe, Wang et al. 2024).

    from bstar.models.prm_train import train_prm
    info = train_prm(examples, init="lake/_checkpoints/RUN/warmup", out_dir="lake/_checkpoints/RUN/prm",
                     step_delimiter="; ", max_steps=300)
    # examples: [{"prompt": "Q: 1+2=? A: ", "steps": ["1+2=3. #### 3"], "labels": [1.0]}, ...]

`init` is either a policy checkpoint (any causal LM directory: a step-end token `<step>` is added
to its tokenizer, the embeddings resized, and a zero-initialised head attached) or a PRM saved by
this module (training continues from it). The output directory is an HF model directory plus
`prm_head.safetensors` and `prm_config.json` (format, delimiter, step token and its id,
training provenance), readable by `bstar.models.prm.load_prm`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from bstar.models.prm import DEFAULT_STEP_TOKEN, HEAD_FILE, PRM_CONFIG, PRMSpec, read_prm_spec, step_inputs

log = logging.getLogger(__name__)


@dataclass
class PRMTrainInfo:
    path: str
    steps: int
    examples: int
    step_labels: int
    positive_rate: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _check_examples(examples) -> list[dict]:
    out = []
    for i, ex in enumerate(examples):
        steps, labels = list(ex["steps"]), [float(x) for x in ex["labels"]]
        if not steps or len(steps) != len(labels):
            raise ValueError(f"example {i}: need one label per step, got {len(steps)} steps and {len(labels)} labels")
        if any(not 0.0 <= y <= 1.0 for y in labels):
            raise ValueError(f"example {i}: labels must lie in [0, 1], got {labels}")
        out.append({"prompt": str(ex["prompt"]), "steps": steps, "labels": labels})
    if not out:
        raise ValueError("no PRM training examples")
    return out


def build_prm_backbone(init: str, step_token: str = DEFAULT_STEP_TOKEN, device: str = "cpu"):
    """(model, tokenizer, head, spec) to train: from a policy checkpoint or an existing PRM."""
    import torch

    from bstar.models.loading import load_policy
    from bstar.models.prm import load_head

    model, tok = load_policy(init, device=device, dtype="fp32", for_training=True)
    if Path(init, PRM_CONFIG).is_file():
        spec = read_prm_spec(init)
        if spec.format != "bstar-scalar":
            raise ValueError(f"{init}: can only continue training a bstar-scalar PRM, found {spec.format!r}")
        head = load_head(init, device)
        return model, tok, head, spec
    if step_token not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [step_token]})
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    head = torch.nn.Linear(model.config.hidden_size, 1).to(device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    spec = PRMSpec(format="bstar-scalar", step_token=step_token, step_token_id=tok.convert_tokens_to_ids(step_token),
                   base_model=str(init))
    return model, tok, head, spec


def train_prm(
    examples,
    init: str | Path,
    out_dir: str | Path,
    *,
    step_delimiter: str = "; ",
    max_steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.05,
    max_grad_norm: float = 1.0,
    head_lr_mult: float = 10.0,
    seed: int = 0,
    device: str | None = "auto",
    progress: bool = True,
    provenance: dict | None = None,
) -> PRMTrainInfo:
    """Fine-tune backbone + head with BCE on the step-end tokens; save a bstar-scalar PRM."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from bstar.models.loading import resolve_device, save_policy, set_cpu_threads
    from bstar.models.trainer import lr_factor

    t0 = time.time()
    data = _check_examples(examples)
    dev = resolve_device(device)
    if dev == "cpu":
        set_cpu_threads()
    torch.manual_seed(seed)
    model, tok, head, spec = build_prm_backbone(str(init), device=dev)
    spec.step_delimiter = step_delimiter
    max_len = getattr(model.config, "max_position_embeddings", None)
    encoded = []
    for ex in data:
        ids, pos = step_inputs(tok, spec, ex["prompt"], ex["steps"], max_len)
        encoded.append((ids, pos, ex["labels"]))
    n_labels = sum(len(e[2]) for e in encoded)
    pos_rate = sum(sum(e[2]) for e in encoded) / max(1, n_labels)

    params = [{"params": list(model.parameters()), "lr": lr, "weight_decay": weight_decay},
              {"params": list(head.parameters()), "lr": lr * head_lr_mult, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, betas=(0.9, 0.95))
    warm = int(round(warmup_ratio * max_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, warm, max_steps, 0.1))
    gen = torch.Generator().manual_seed(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    model.train()
    head.train()
    losses: list[float] = []
    perm, cursor = torch.randperm(len(encoded), generator=gen).tolist(), 0
    bar = tqdm(total=max_steps, desc="prm train", dynamic_ncols=True, disable=not progress)
    for step in range(max_steps):
        batch = []
        while len(batch) < min(batch_size, len(encoded)):
            if cursor == len(perm):
                perm, cursor = torch.randperm(len(encoded), generator=gen).tolist(), 0
            batch.append(encoded[perm[cursor]])
            cursor += 1
        n = max(len(b[0]) for b in batch)
        ids = torch.full((len(batch), n), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        rows, cols, ys = [], [], []
        for r, (x, pos, y) in enumerate(batch):
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
            rows += [r] * len(pos)
            cols += pos
            ys += y
        hidden = model.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        logits = head(hidden[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), torch.tensor(ys, device=dev))
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        bar.update(1)
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.4f}")
    bar.close()

    out = Path(out_dir)
    model.eval()
    save_policy(model, tok, out)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(out / HEAD_FILE))
    spec.extra = {
        **(spec.extra or {}),
        **(provenance or {}),
        "train_steps": max_steps,
        "lr": lr,
        "batch_size": batch_size,
        "examples": len(encoded),
        "step_labels": n_labels,
        "positive_rate": round(pos_rate, 4),
        "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 5),
    }
    spec.save(out)
    info = PRMTrainInfo(str(out), max_steps, len(encoded), n_labels, pos_rate, losses, round(time.time() - t0, 2))
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"PRM training diverged (non-finite loss); see {out}")
    return info
