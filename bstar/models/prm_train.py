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

Examples longer than the backbone's `max_position_embeddings` are cut from the left
(`bstar.models.prm.step_inputs`): the labels of the first steps, whose step-end token was cut off,
are dropped (never trained at a meaningless position), counted in `PRMTrainInfo.truncated_labels`
and logged.

Loss: BCE summed over the step labels of the global batch (`batch_size` examples) and divided by
their number. Multi-process: `num_processes > 1` re-launches this module through `accelerate
launch` (`bstar.models.launch`; DDP over gloo on CPU, NCCL on GPUs). Backbone and head are one
DDP module; every process takes its shard of each global batch (examples rank, rank + N, ...)
and the loss normalisation does not depend on N, so N processes follow the 1-process loss
trajectory. The main process saves the PRM and the caller gets its PRMTrainInfo.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
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
    num_processes: int = 1
    truncated_labels: int = 0  # labels dropped: their step-end token was cut off by left truncation


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


def prm_net(backbone, head):
    """Backbone + head as one module (what DDP wraps): (ids, mask, rows, cols) -> step logits."""
    import torch

    class PRMNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = backbone, head

        def forward(self, input_ids, attention_mask, rows, cols):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.head(hidden[rows, cols]).squeeze(-1)

    return PRMNet()


def shard(batch: list, rank: int, world: int) -> list:
    """This process's part of a global batch: items rank, rank + world, ..."""
    return batch[rank::world]


# what the launched processes get (ARGS.json): train_prm's arguments but the examples
_LAUNCH_KWARGS = ("init", "out_dir", "step_delimiter", "max_steps", "lr", "batch_size", "weight_decay",
                  "warmup_ratio", "max_grad_norm", "head_lr_mult", "seed", "device", "num_processes",
                  "distributed", "progress", "provenance")


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
    num_processes: int = 1,
    distributed: str = "ddp",
    launch_args: list[str] | None = None,
    progress: bool = True,
    provenance: dict | None = None,
) -> PRMTrainInfo:
    """Fine-tune backbone + head with BCE on the step-end tokens; save a bstar-scalar PRM.

    `batch_size` is the global batch (examples per optimizer step) whatever `num_processes` is;
    with `num_processes > 1` the call runs in that many processes (`accelerate launch`, DDP).
    """
    from bstar.models.launch import is_launched

    if distributed != "ddp":
        raise ValueError(f"PRM training supports distributed='ddp' only, got {distributed!r}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    data = _check_examples(examples)
    if num_processes > 1 and not is_launched():
        if min(batch_size, len(data)) < num_processes:
            raise ValueError(f"a global batch of {min(batch_size, len(data))} examples cannot be split over "
                             f"{num_processes} processes")
        from bstar.models.launch import launch_prm_training

        kwargs = {k: v for k, v in locals().items() if k in _LAUNCH_KWARGS}
        return launch_prm_training(data, kwargs, launch_args=launch_args)
    return _train(data, init, out_dir, step_delimiter=step_delimiter, max_steps=max_steps, lr=lr,
                  batch_size=batch_size, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                  max_grad_norm=max_grad_norm, head_lr_mult=head_lr_mult, seed=seed, device=device,
                  progress=progress, provenance=provenance)


def _train(data, init, out_dir, *, step_delimiter, max_steps, lr, batch_size, weight_decay, warmup_ratio,
           max_grad_norm, head_lr_mult, seed, device, progress, provenance) -> PRMTrainInfo:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from bstar.logs import progress as progress_bar
    from bstar.models.launch import is_launched
    from bstar.models.loading import resolve_device, save_policy, set_cpu_threads
    from bstar.models.trainer import lr_factor, mean_since

    t0 = time.time()
    dev = resolve_device(device)
    acc = None
    world, rank = 1, 0
    if is_launched():  # one of N processes started by `accelerate launch`
        from accelerate import Accelerator

        acc = Accelerator(cpu=dev == "cpu")
        world, rank, dev = acc.num_processes, acc.process_index, str(acc.device)
    main_process = rank == 0
    if dev == "cpu":  # N processes share the cores
        set_cpu_threads(None if world == 1 else
                        int(os.environ.get("BSTAR_TORCH_THREADS", 0)) or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(seed)
    model, tok, head, spec = build_prm_backbone(str(init), device=dev)
    spec.step_delimiter = step_delimiter
    max_len = getattr(model.config, "max_position_embeddings", None)
    encoded, n_cut, n_cut_examples = [], 0, 0
    for ex in data:
        ids, pos, cut = step_inputs(tok, spec, ex["prompt"], ex["steps"], max_len)
        # left truncation cuts the first steps: their labels go, the rest stay aligned with `pos`
        encoded.append((ids, pos, ex["labels"][cut:]))
        n_cut += cut
        n_cut_examples += bool(cut)
    if n_cut and main_process:
        log.warning("PRM training: %d step labels of %d examples dropped, their step-end token cut off by "
                    "left truncation to max_position_embeddings=%s", n_cut, n_cut_examples, max_len)
    n_labels = sum(len(e[2]) for e in encoded)
    pos_rate = sum(sum(e[2]) for e in encoded) / max(1, n_labels)

    net = prm_net(model.base_model, head)
    if acc is not None:
        net = acc.prepare_model(net)  # DDP: parameters broadcast from rank 0, gradients averaged
    params = [{"params": list(model.parameters()), "lr": lr, "weight_decay": weight_decay},
              {"params": list(head.parameters()), "lr": lr * head_lr_mult, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, betas=(0.9, 0.95))
    warm = int(round(warmup_ratio * max_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, warm, max_steps, 0.1))
    gen = torch.Generator().manual_seed(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    net.train()
    losses: list[float] = []
    perm, cursor = torch.randperm(len(encoded), generator=gen).tolist(), 0
    every = max(1, max_steps // 10)  # about ten loss lines a training
    if main_process:
        log.info("prm train: %d steps on %d examples (%d step labels, %.1f%% positive), %d per batch, lr %.3e",
                 max_steps, len(encoded), n_labels, 100 * pos_rate, batch_size, lr)
    bar = progress_bar(max_steps, "prm train", disable=not (progress and main_process), unit="step", logger=log,
                       dynamic_ncols=True)
    for step in range(max_steps):
        batch = []  # the global batch: the same on every process
        while len(batch) < min(batch_size, len(encoded)):
            if cursor == len(perm):
                perm, cursor = torch.randperm(len(encoded), generator=gen).tolist(), 0
            batch.append(encoded[perm[cursor]])
            cursor += 1
        n_global = sum(len(b[2]) for b in batch)
        mine = shard(batch, rank, world)
        n = max(len(b[0]) for b in mine)
        ids = torch.full((len(mine), n), pad, dtype=torch.long)
        mask = torch.zeros((len(mine), n), dtype=torch.long)
        rows, cols, ys = [], [], []
        for r, (x, pos, y) in enumerate(mine):
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
            rows += [r] * len(pos)
            cols += pos
            ys += y
        logits = net(ids.to(dev), mask.to(dev), torch.tensor(rows, device=dev), torch.tensor(cols, device=dev))
        loss_sum = F.binary_cross_entropy_with_logits(logits.float(), torch.tensor(ys, device=dev), reduction="sum")
        # DDP averages gradients over processes; scale so the result is the mean over the global batch.
        (loss_sum * (world / n_global)).backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        total = acc.reduce(loss_sum.detach(), reduction="sum") if acc is not None else loss_sum.detach()
        losses.append(float(total.item()) / n_global)
        bar.update(1)
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.4f}")
        if main_process and ((step + 1) % every == 0 or step + 1 == max_steps):
            recent = losses[-(step % every + 1):]  # the steps since the previous line
            bar.info(log, "prm train step %d/%d: loss %.4f%s", step + 1, max_steps, losses[-1], mean_since(recent))
    bar.close()

    out = Path(out_dir)
    model.eval()
    spec.extra = {
        **(spec.extra or {}),
        **(provenance or {}),
        "train_steps": max_steps,
        "lr": lr,
        "batch_size": batch_size,
        "num_processes": world,
        "examples": len(encoded),
        "step_labels": n_labels,
        "truncated_step_labels": n_cut,
        "positive_rate": round(pos_rate, 4),
        "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 5),
    }
    if main_process:
        save_policy(model, tok, out)
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(out / HEAD_FILE))
        spec.save(out)
    if acc is not None:
        acc.wait_for_everyone()
    info = PRMTrainInfo(str(out), max_steps, len(encoded), n_labels, pos_rate, losses, round(time.time() - t0, 2),
                        world, truncated_labels=n_cut)
    if main_process:
        tail = losses[-10:]
        log.info("prm train done: %d steps, final loss %.4f (mean of the last %d steps), %.1f s", max_steps,
                 sum(tail) / max(1, len(tail)), len(tail), info.seconds)
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"PRM training diverged (non-finite loss); see {out}")
    return info


def main(argv: list[str] | None = None) -> None:
    """`python -m bstar.models.prm_train ARGS.json`: what `accelerate launch` runs in every process."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    examples = [json.loads(line) for line in Path(spec.pop("examples_path")).read_text().splitlines() if line]
    info_path = spec.pop("info_path")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    info = train_prm(examples, **spec)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(info_path).write_text(json.dumps(asdict(info)))


if __name__ == "__main__":
    main()
