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
their number. Multi-process: `num_processes > 1` re-launches this module through torchrun
(`bstar.models.launch`; gloo on CPU, NCCL on GPUs). Backbone and head are one module, shared as
the policy trainer shares its model (`bstar.models.distributed`: `ddp`, or `fsdp` sharded per
decoder layer); every process takes its shard of each global batch (examples rank, rank + N,
...), in micro-batches of `micro_batch_size` with the same number of passes on every process, and
the loss normalisation does not depend on N, so N processes follow the 1-process loss
trajectory. bf16 on GPUs (`precision`), `gradient_checkpointing` as for the policy. The main
process saves the PRM (weights in the training dtype) and the caller gets its PRMTrainInfo.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bstar.models import distributed as D
from bstar.models.loading import release_device_memory, resolve_device, save_policy
from bstar.models.prm import DEFAULT_STEP_TOKEN, HEAD_FILE, PRM_CONFIG, PRMSpec, read_prm_spec, step_inputs
from bstar.models.schedule import lr_factor, mean_since

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


@functools.cache
def _prm_net_class():
    import torch

    class PRMNet(torch.nn.Module):
        """Backbone + head as one module (what DDP or FSDP wraps): (ids, mask, rows, cols) -> step logits."""

        def __init__(self, backbone, head):
            super().__init__()
            self.backbone, self.head = backbone, head

        def forward(self, input_ids, attention_mask, rows, cols):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.head(hidden[rows, cols]).squeeze(-1)

    return PRMNet


def prm_net(backbone, head):
    """The trainable PRM. One class for every call, holding nothing of a call: FSDP2 derives a
    class per module class and caches it, so a class closing over this call's backbone and head
    kept both alive (on the GPU) after training."""
    return _prm_net_class()(backbone, head)


def shard(batch: list, rank: int, world: int) -> list:
    """This process's part of a global batch: items rank, rank + world, ..."""
    return batch[rank::world]


# what the launched processes get (ARGS.json): train_prm's arguments but the examples
_LAUNCH_KWARGS = ("init", "out_dir", "step_delimiter", "max_steps", "lr", "batch_size", "weight_decay",
                  "warmup_ratio", "max_grad_norm", "head_lr_mult", "seed", "device", "num_processes",
                  "distributed", "micro_batch_size", "gradient_checkpointing", "precision", "max_length", "progress",
                  "provenance")


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
    micro_batch_size: int | None = None,
    gradient_checkpointing: bool = False,
    precision: str = "auto",
    max_length: int | None = None,
    launch_args: list[str] | None = None,
    progress: bool = True,
    provenance: dict | None = None,
) -> PRMTrainInfo:
    """Fine-tune backbone + head with BCE on the step-end tokens; save a bstar-scalar PRM.

    `batch_size` is the global batch (examples per optimizer step) whatever `num_processes` is;
    with `num_processes > 1` the call runs in that many processes (torchrun; `distributed` ddp or
    fsdp). `micro_batch_size`: examples per process per forward pass (gradients accumulated).
    `max_length`: tokens kept per example (from the left; default the model's context).
    """
    from bstar.models.distributed import STRATEGIES
    from bstar.models.launch import is_launched

    if distributed not in STRATEGIES:
        raise ValueError(f"distributed must be one of {STRATEGIES}, got {distributed!r}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    data = _check_examples(examples)
    if num_processes > 1 and not is_launched():
        if min(batch_size, len(data)) < num_processes:
            raise ValueError(f"a global batch of {min(batch_size, len(data))} examples cannot be split over "
                             f"{num_processes} processes")
        from bstar.models.launch import launch_module

        kwargs = {k: v for k, v in locals().items() if k in _LAUNCH_KWARGS}
        out = Path(out_dir)
        info = launch_module("bstar.models.prm_train", data, kwargs, launch_args=launch_args,
                             info_file=out.parent / f".{out.name}.launch" / "prm_train_info.json")
        return PRMTrainInfo(**{k: v for k, v in info.items() if k in PRMTrainInfo.__dataclass_fields__})
    return _train(data, init, out_dir, step_delimiter=step_delimiter, max_steps=max_steps, lr=lr,
                  batch_size=batch_size, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                  max_grad_norm=max_grad_norm, head_lr_mult=head_lr_mult, seed=seed, device=device,
                  distributed=distributed, micro_batch_size=micro_batch_size,
                  gradient_checkpointing=gradient_checkpointing, precision=precision, max_length=max_length,
                  progress=progress, provenance=provenance)


def _train(data, init, out_dir, *, step_delimiter, max_steps, lr, batch_size, weight_decay, warmup_ratio,
           max_grad_norm, head_lr_mult, seed, device, distributed, micro_batch_size, gradient_checkpointing,
           precision, max_length, progress, provenance) -> PRMTrainInfo:
    t0 = time.time()
    dev = resolve_device(device)
    procs = D.init_processes(dev, distributed)
    try:
        return _train_in(procs, data, init, out_dir, step_delimiter=step_delimiter, max_steps=max_steps, lr=lr,
                         batch_size=batch_size, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                         max_grad_norm=max_grad_norm, head_lr_mult=head_lr_mult, seed=seed,
                         distributed=distributed, micro_batch_size=micro_batch_size,
                         gradient_checkpointing=gradient_checkpointing,
                         precision=D.training_precision(precision, dev), max_length=max_length, progress=progress,
                         provenance=provenance, t0=t0)
    finally:
        D.close_processes(procs)
        release_device_memory()


def micro_batches(mine: list, n_passes: int) -> list[tuple[list, float]]:
    """This process's share of the batch in `n_passes` near-equal micro-batches, each with its
    loss weight. A process with fewer examples than passes repeats its first example at weight 0:
    every process runs the same number of forward/backward passes (sharded collectives would
    hang otherwise) and the gradient is unchanged."""
    size, extra = divmod(len(mine), n_passes)
    out, lo = [], 0
    for i in range(n_passes):
        hi = lo + size + (i < extra)
        out.append((mine[lo:hi], 1.0) if hi > lo else (mine[:1], 0.0))
        lo = hi
    return out


def _collate_steps(items, pad: int):
    """Right-padded ids and mask of (ids, step-end positions, labels) items, and the (row, column)
    of every labelled step-end token with its label."""
    import torch

    n = max(len(x) for x, _, _ in items)
    ids = torch.full((len(items), n), pad, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    rows, cols, ys = [], [], []
    for r, (x, pos, y) in enumerate(items):
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
        rows += [r] * len(pos)
        cols += pos
        ys += y
    return ids, mask, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long), torch.tensor(ys)


def _train_in(procs, data, init, out_dir, *, step_delimiter, max_steps, lr, batch_size, weight_decay,
              warmup_ratio, max_grad_norm, head_lr_mult, seed, distributed, micro_batch_size,
              gradient_checkpointing, precision, max_length, progress, provenance, t0) -> PRMTrainInfo:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from bstar.logs import progress as progress_bar

    world, rank, dev = procs.world, procs.rank, procs.device
    main_process = procs.is_main
    D.share_cpu_threads(procs)
    torch.manual_seed(seed)
    # FSDP builds on the CPU and moves only its shards to the device
    model, tok, head, spec = build_prm_backbone(str(init), device="cpu" if distributed == "fsdp" else str(dev))
    spec.step_delimiter = step_delimiter
    max_len = max_length or getattr(model.config, "max_position_embeddings", None)
    encoded, n_cut, n_cut_examples = [], 0, 0
    for ex in data:
        ids, pos, cut = step_inputs(tok, spec, ex["prompt"], ex["steps"], max_len)
        # left truncation cuts the first steps: their labels go, the rest stay aligned with `pos`
        encoded.append((ids, pos, ex["labels"][cut:]))
        n_cut += cut
        n_cut_examples += bool(cut)
    if n_cut and main_process:
        log.warning("PRM training: %d step labels of %d examples dropped, their step-end token cut off by "
                    "left truncation to %d tokens", n_cut, n_cut_examples, max_len)
    n_labels = sum(len(e[2]) for e in encoded)
    pos_rate = sum(sum(e[2]) for e in encoded) / max(1, n_labels)

    no_decay = {f"backbone.{n}" for n in D.no_decay_names(model.base_model)} | {"head.weight", "head.bias"}
    net = D.wrap(model.base_model, procs, distributed, precision=precision,
                 gradient_checkpointing=gradient_checkpointing, root=prm_net(model.base_model, head))
    head_params = {id(p) for n, p in net.named_parameters() if n.removeprefix("module.").startswith("head.")}
    groups = D.decay_groups(net, no_decay, weight_decay)
    params = [{"params": [p for p in g["params"] if id(p) not in head_params], "lr": lr,
               "weight_decay": g["weight_decay"]} for g in groups]
    params.append({"params": [p for n, p in net.named_parameters() if id(p) in head_params], "lr": lr * head_lr_mult,
                   "weight_decay": 0.0})
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
        # passes per step from the global batch, which every process knows: the same everywhere
        per_process = -(-len(batch) // world)
        n_passes = -(-per_process // micro_batch_size) if micro_batch_size else 1
        loss_acc = torch.zeros((), device=dev)
        for i, (items, weight) in enumerate(micro_batches(mine, n_passes)):
            ids, mask, rows, cols, ys = _collate_steps(items, pad)
            with D.gradient_sync(net, i == n_passes - 1):
                with D.autocast(procs, distributed, precision):
                    logits = net(ids.to(dev), mask.to(dev), rows.to(dev), cols.to(dev))
                loss_sum = F.binary_cross_entropy_with_logits(logits.float(), ys.to(dev), reduction="sum") * weight
                # gradients are averaged over processes; scale so the result is the global batch's mean
                (loss_sum * (world / n_global)).backward()
            loss_acc += loss_sum.detach()
        if max_grad_norm:
            D.clip_grad_norm(net, max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(D.all_reduce_sum(procs, loss_acc).item()) / n_global)
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
    full = D.full_state_dict(net)  # a collective: every process takes part; the whole net on rank 0
    if main_process:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        prefix = model.base_model_prefix
        weights = {f"{prefix}.{k.removeprefix('backbone.')}": v.to(dtype) for k, v in full.items()
                   if k.startswith("backbone.")}
        # what the causal LM holds beside the backbone (its LM head) is not trained: saved as loaded
        weights |= {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()
                    if not k.startswith(prefix + ".")}
        save_policy(model, tok, out, state_dict=weights, dtype=dtype)
        # the head stays fp32 whatever the backbone's dtype: one tiny matrix, the score's last step
        save_file({k.removeprefix("head."): v.float().contiguous() for k, v in full.items() if k.startswith("head.")},
                  str(out / HEAD_FILE))
        spec.save(out)
    D.barrier(procs)
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
    """`python -m bstar.models.prm_train ARGS.json`: what torchrun runs in every process."""
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
