"""SFT trainer: the whole training loop in one readable file (torchtune-recipe style).

    info = train_sft(pairs, init_checkpoint="runs/tiny-init", out_dir="runs/r1", mode="online",
                     lr=2e-3, batch_size=64, max_steps=200, schedule_steps=600)

Loss: token-level cross entropy on response tokens only (prompt tokens are masked), averaged over
all response tokens of the global batch. AdamW, linear warm-up then cosine decay, gradient
accumulation, gradient clipping, bf16 on GPUs that support it (`precision`).

Training modes (DESIGN.md §1); the caller picks the starting checkpoint with `round_init_checkpoint`:
- `restart`   (ReST-EM/STaR): every round starts from the initial checkpoint, fresh optimizer + schedule.
- `iterative` (iterative RFT): weights from the previous round, fresh optimizer + schedule.
- `online`    (online RFT, B-STaR): weights, AdamW moments, LR schedule and step counter from the
              previous round; the schedule spans all rounds (`schedule_steps`, or `total_rounds` x
              this round's steps, fixed by the first round and stored in the checkpoint).

Checkpoint directory (loadable by `AutoModelForCausalLM` / `AutoTokenizer` / vLLM as is):
    config.json, generation_config.json, model*.safetensors    HF model in the training dtype (bf16 on
                                                               GPUs), gathered from the shards; an index
                                                               when it spans several files
    tokenizer.json, tokenizer_config.json, ...                 HF tokenizer
    optimizer/                                                 AdamW state, one shard per process
                                                               (torch.distributed.checkpoint); only where a
                                                               later call reads it (`save_optimizer`)
    trainer_state.json                                         step, schedule, mode, seed, losses

Determinism: the batch drawn at every step is a pure function of (seed, step at which the round
started, the examples), and the schedule a pure function of the stored step, so training N steps,
saving, and resuming with `resume_from` gives the same weights as training straight through.

Multi-process: `num_processes > 1` re-launches this module through torchrun (`bstar.models.launch`);
`distributed="ddp"` replicates the model, `"fsdp"` shards it per decoder layer (FSDP2,
`bstar.models.distributed`). The global batch and loss normalisation do not depend on the number
of processes, and every process runs the same number of forward/backward passes per step, so N
processes follow the 1-process loss trajectory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bstar.faults import kill_point
from bstar.models import distributed as D
from bstar.models.schedule import loss_log_every, lr_factor, mean_since  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

MODES = ("online", "iterative", "restart")
STATE_FILE = "trainer_state.json"
OPTIMIZER_DIR = "optimizer"  # AdamW state, one shard per process (torch.distributed.checkpoint)
IGNORE = -100


@dataclass
class CheckpointInfo:
    path: str
    step: int
    mode: str
    losses: list[float] = field(default_factory=list)  # per optimizer step of this call
    tokens: int = 0  # response tokens trained on in this call
    seconds: float = 0.0


@dataclass
class TrainerState:
    """What `trainer_state.json` holds: where the lineage and the current schedule stand."""

    step: int = 0  # optimizer steps taken by this lineage of checkpoints
    schedule_start: int = 0  # step at which the current LR schedule began
    schedule_steps: int = 0  # length of the current LR schedule
    warmup_steps: int = 0
    lr: float = 0.0
    min_lr_ratio: float = 0.0
    round_start: int = 0  # step at which the current call's data stream began (resume)
    round_steps: int = 0  # steps the current call was asked for
    rounds: int = 0  # completed train_sft calls in this lineage
    mode: str = "iterative"
    seed: int = 0
    batch_size: int = 0
    examples_digest: str = ""
    initial_checkpoint: str = ""
    log: list[dict] = field(default_factory=list)

    @classmethod
    def read(cls, ckpt: str | Path) -> "TrainerState | None":
        p = Path(ckpt) / STATE_FILE
        if not p.exists():
            return None
        data = json.loads(p.read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def round_init_checkpoint(mode: str, initial_checkpoint: str, previous_checkpoint: str | None) -> str:
    """Which checkpoint a round starts from: the initial one for `restart`, else the previous round's."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "restart" or previous_checkpoint is None:
        return initial_checkpoint
    return previous_checkpoint


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def load_examples(examples) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a list, or a .jsonl / .parquet file with prompt/response columns."""
    if isinstance(examples, (str, Path)):
        p = Path(examples)
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            t = pq.read_table(p, columns=["prompt", "response"]).to_pydict()
            return list(zip(t["prompt"], t["response"]))
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        return [(r["prompt"], r["response"]) for r in rows]
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, dict):
            ex = (ex["prompt"], ex["response"])
        if len(ex) != 2 or not isinstance(ex[0], str) or not isinstance(ex[1], str):
            raise ValueError(f"example {i} is not a (prompt, response) pair of strings: {ex!r}")
        out.append((ex[0], ex[1]))
    return out


def examples_digest(examples: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for p, r in examples:
        h.update(p.encode())
        h.update(b"\x00")
        h.update(r.encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


def tokenize_examples(tokenizer, examples: list[tuple[str, str]], max_length: int | None = None,
                      batch: int = 1024):
    """Per example: input ids (prompt + response + EOS) and labels (-100 on the prompt), as int32
    numpy arrays, truncated to `max_length`. Tokenized `batch` examples at a time, so a round of
    hundreds of thousands of selected responses never holds the tokenizer's full batch output
    (Python lists of every token) at once: 4 bytes a token is what stays."""
    import numpy as np

    from bstar.models.loading import encode_prompts

    eos = tokenizer.eos_token_id
    out = []
    truncated = 0
    for lo in range(0, len(examples), batch):
        part = examples[lo : lo + batch]
        prompt_ids = encode_prompts(tokenizer, [p for p, _ in part])
        resp_ids = tokenizer([r for _, r in part], add_special_tokens=False)["input_ids"]
        for p, r in zip(prompt_ids, resp_ids):
            ids = np.array([*p, *r, eos], dtype=np.int32)
            labels = ids.copy()
            labels[: len(p)] = IGNORE
            if max_length and len(ids) > max_length:
                ids, labels = ids[:max_length].copy(), labels[:max_length].copy()
                truncated += 1
            out.append((ids, labels))
    if truncated:
        log.warning("%d of %d examples truncated to %d tokens", truncated, len(examples), max_length)
    return out


def batch_indices(step: int, round_start: int, n_examples: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of the global batch at `step`: epochs of seeded permutations, no gaps."""
    import torch

    rel = step - round_start
    first, last = rel * batch_size, (rel + 1) * batch_size
    out: list[int] = []
    pos = first
    while pos < last:
        epoch, offset = divmod(pos, n_examples)
        g = torch.Generator().manual_seed(_mix(seed, round_start, epoch))
        perm = torch.randperm(n_examples, generator=g)
        take = min(last - pos, n_examples - offset)
        out.extend(perm[offset : offset + take].tolist())
        pos += take
    return out


def _mix(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") & (2**63 - 1)


def bucket_count(global_items, micro: int, min_rows: int = 16) -> int:
    """Into how many length-sorted parts every process splits its share of a micro-batch: 2 when
    that saves padding on the global micro-batch (the same gradient), else 1. Decided on the
    global micro-batch, which every process knows, so every process runs the same number of
    forward/backward passes (a sharded model's collectives would hang otherwise)."""
    if len(global_items) < 2 * min_rows or micro < 2:
        return 1
    lens = sorted(len(x[0]) for x in global_items)
    half = len(lens) // 2
    padded_one = len(lens) * lens[-1]
    padded_two = half * lens[half - 1] + (len(lens) - half) * lens[-1]
    return 2 if padded_two < 0.85 * padded_one else 1


def length_buckets(items, parts: int):
    """`items` sorted by length and cut into `parts` parts of near-equal size."""
    if parts <= 1:
        return [items]
    items = sorted(items, key=lambda x: len(x[0]))
    half = len(items) // 2
    return [items[:half], items[half:]]


def collate(items, pad_id: int, device):
    """Right-padded (ids, labels). No attention mask is needed: with right padding and a causal
    mask, real tokens never attend to the pads, and pad positions carry no labels."""
    import torch

    n = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(items):
        ids[i, : len(x)] = torch.as_tensor(x)
        labels[i, : len(y)] = torch.as_tensor(y)
    return ids.to(device), labels.to(device)


def response_token_loss(model, ids, labels):
    """Sum of next-token cross entropy over the response tokens (labels != -100)."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, use_cache=False).logits
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")


# ----------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------


def train_sft(
    examples,
    init_checkpoint: str | Path,
    out_dir: str | Path,
    *,
    mode: str = "iterative",
    lr: float = 2e-3,
    batch_size: int = 64,
    grad_accum: int = 1,
    epochs: float | None = None,
    max_steps: int | None = None,
    warmup_steps: int | None = None,
    warmup_ratio: float = 0.05,
    schedule_steps: int | None = None,
    total_rounds: int | None = None,
    min_lr_ratio: float = 0.0,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    max_grad_norm: float | None = 1.0,
    max_length: int | None = None,
    seed: int = 0,
    precision: str = "auto",
    device: str | None = "auto",
    num_processes: int = 1,
    distributed: str = "ddp",
    launch_args: list[str] | None = None,
    gradient_checkpointing: bool = False,
    cpu_offload: bool = False,
    resume_from: str | Path | None = None,
    log_every: int = 10,
    progress: bool = True,
    save_optimizer: bool = True,
) -> CheckpointInfo:
    """Fine-tune `init_checkpoint` on (prompt, response) pairs; save a checkpoint to `out_dir`.

    `examples`: (prompt, response) pairs, dicts with those keys, or a .jsonl/.parquet path.
    `batch_size` is the global batch (examples per optimizer step) whatever `grad_accum` and
    `num_processes` are. Give exactly one of `max_steps` or `epochs` (over this call's examples).
    `mode="online"` continues the optimizer, step and LR schedule stored in `init_checkpoint` (if
    it has them); a first online round fixes the schedule length: `schedule_steps`, else
    `total_rounds` x this round's steps. `restart` and `iterative` start a fresh optimizer and
    schedule (the caller passes the initial checkpoint for `restart`: `round_init_checkpoint`).
    `resume_from` continues an interrupted call of the same round (same examples and
    arguments) from a checkpoint that call saved, bit for bit.
    `distributed`: `ddp` or `fsdp` (FSDP2 per decoder layer; `cpu_offload` keeps its shards in CPU
    memory); `gradient_checkpointing` recomputes each layer's activations in the backward pass;
    `max_length` cuts prompt + response to that many tokens (the count is logged).
    `save_optimizer`: also save the AdamW state (what a later online round or `resume_from` reads).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if resume_from is None and (epochs is None) == (max_steps is None):
        raise ValueError("give exactly one of epochs or max_steps")
    kwargs = {k: v for k, v in locals().items() if k != "examples"}
    pairs = load_examples(examples)
    if distributed not in D.STRATEGIES:
        raise ValueError(f"distributed must be one of {D.STRATEGIES}, got {distributed!r}")
    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from bstar.models.launch import launch_module

        out = Path(out_dir)
        data = launch_module("bstar.models.trainer", [{"prompt": p, "response": r} for p, r in pairs], kwargs,
                             info_file=out / "checkpoint_info.json", launch_args=launch_args)
        return CheckpointInfo(**{k: v for k, v in data.items() if k in CheckpointInfo.__dataclass_fields__})
    return _train_one_call(pairs, **kwargs)


def _train_one_call(pairs, *, init_checkpoint, out_dir, mode, epochs, max_steps, schedule_steps, total_rounds,
                    resume_from, save_optimizer, num_processes=1, launch_args=None, info_path=None,
                    **hp) -> CheckpointInfo:
    t0 = time.time()
    recipe = SFTRecipe(resume_from or init_checkpoint, mode=mode, resume=resume_from is not None, **hp)
    if resume_from is not None:
        losses, tokens = recipe.resume_round(pairs)
    else:
        losses, tokens = recipe.train_round(pairs, epochs=epochs, max_steps=max_steps,
                                            schedule_steps=schedule_steps, total_rounds=total_rounds)
    try:
        recipe.save(out_dir, save_optimizer=save_optimizer)
        info = CheckpointInfo(path=str(out_dir), step=recipe.state.step, mode=mode, losses=losses, tokens=tokens,
                              seconds=round(time.time() - t0, 3))
        if info_path and recipe.procs.is_main:  # launched: the caller reads it back
            Path(info_path).write_text(json.dumps(asdict(info)))
    finally:
        recipe.close()
    return info


def sft_warmup(
    examples,
    init_checkpoint: str | Path,
    out_dir: str | Path,
    *,
    epochs: float | None = None,
    max_steps: int | None = None,
    lr: float = 2e-3,
    batch_size: int = 64,
    **kwargs,
) -> CheckpointInfo:
    """Train the initial policy on gold (prompt, solution) pairs (fresh optimizer and schedule).

    `init_checkpoint="tiny"` first builds the tiny default policy next to `out_dir` (`<out_dir>-init`).
    """
    if str(init_checkpoint) == "tiny":
        from bstar.models.tiny import build_tiny_policy

        init_checkpoint = build_tiny_policy(Path(str(out_dir) + "-init"), seed=kwargs.get("seed", 0))
    if epochs is None and max_steps is None:
        epochs = 1.0
    return train_sft(examples, init_checkpoint, out_dir, mode="iterative", epochs=epochs, max_steps=max_steps,
                     lr=lr, batch_size=batch_size, **kwargs)


# ----------------------------------------------------------------------------------------------
# the recipe: model, optimizer, schedule and the loop, kept in memory across rounds
# ----------------------------------------------------------------------------------------------


class SFTRecipe:
    """Everything one training lineage holds in memory: `train_round` any number of times, `save`.

    Rounds run in memory follow exactly the same path as rounds separated by save + load
    (`train_sft` is `SFTRecipe(...).train_round(...)` then `.save(...)`).
    """

    def __init__(self, checkpoint, *, mode="iterative", resume=False, lr=2e-3, batch_size=64, grad_accum=1,
                 warmup_steps=None, warmup_ratio=0.05, min_lr_ratio=0.0, weight_decay=0.0, betas=(0.9, 0.95),
                 max_grad_norm=1.0, max_length=None, seed=0, precision="auto", device="auto",
                 distributed="ddp", gradient_checkpointing=False, cpu_offload=False, log_every=10, progress=True):

        from bstar.models.loading import load_policy, resolve_device

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.lr, self.batch_size, self.grad_accum = mode, lr, batch_size, grad_accum
        self.warmup_steps, self.warmup_ratio, self.min_lr_ratio = warmup_steps, warmup_ratio, min_lr_ratio
        self.weight_decay, self.betas, self.max_grad_norm = weight_decay, tuple(betas), max_grad_norm
        self.max_length, self.seed, self.log_every, self.progress = max_length, seed, log_every, progress
        self.distributed = distributed
        dev = resolve_device(device)
        self.cpu = dev == "cpu"
        self.precision = D.training_precision(precision, dev)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if batch_size % (grad_accum * world):
            raise ValueError(f"batch_size={batch_size} must be divisible by grad_accum*num_processes="
                             f"{grad_accum * world}")
        self.procs = D.init_processes(dev, distributed)
        try:
            self.world, self.rank = self.procs.world, self.procs.rank
            D.share_cpu_threads(self.procs)
            self.micro = batch_size // (grad_accum * self.world)

            self.checkpoint = Path(checkpoint)
            prev = TrainerState.read(checkpoint)
            # FSDP loads on the CPU and moves only its shard to the GPU; fp32 master weights either way
            model, self.tokenizer = load_policy(checkpoint, device="cpu" if distributed == "fsdp" else str(self.procs.device),
                                                dtype="fp32", for_training=True)
            self.config = model.config
            self.initial_weights = None  # restart mode, in memory: the weights every round starts from (CPU)
            if mode == "restart":
                self.initial_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.no_decay = D.no_decay_names(model)
            self.model = D.wrap(model, self.procs, distributed, precision=self.precision,
                                gradient_checkpointing=gradient_checkpointing, cpu_offload=cpu_offload)
            self.state = TrainerState(mode=mode, seed=seed, batch_size=batch_size, lr=lr, min_lr_ratio=min_lr_ratio)
            self.state.initial_checkpoint = str(checkpoint)
            if prev is not None:
                self.state.step, self.state.rounds = prev.step, prev.rounds
                self.state.initial_checkpoint = prev.initial_checkpoint or str(checkpoint)
            self.optimizer = self.scheduler = None
            # online continues only an online lineage: a warm-up (or iterative) checkpoint's schedule has ended
            if resume or (mode == "online" and prev is not None and prev.mode == "online" and prev.schedule_steps > 0):
                for k in ("schedule_start", "schedule_steps", "warmup_steps", "lr", "min_lr_ratio", "round_start",
                          "round_steps", "examples_digest"):
                    setattr(self.state, k, getattr(prev, k))
                if mode == "online" and not resume and lr != prev.lr:
                    log.info("online mode continues the stored schedule (lr=%g); lr=%g ignored", prev.lr, lr)
                self._new_optimizer()
                if not (self.checkpoint / OPTIMIZER_DIR).is_dir():
                    raise FileNotFoundError(f"{self.checkpoint}: no {OPTIMIZER_DIR}/ to continue the optimizer from "
                                            "(saved only by online rounds and interrupted calls)")
                D.load_optimizer(self.model, self.optimizer, self.checkpoint / OPTIMIZER_DIR)
                self._resume_scheduler()
        except BaseException:
            D.close_processes(self.procs)
            raise

    # -- optimizer and schedule ----------------------------------------------------------------
    def _new_optimizer(self):
        import torch

        st = self.state
        groups = D.decay_groups(self.model, self.no_decay, self.weight_decay)
        opt = torch.optim.AdamW(groups, lr=st.lr, betas=self.betas, eps=1e-8, foreach=not self.cpu)
        warm, length, floor = st.warmup_steps, st.schedule_steps, st.min_lr_ratio
        # LambdaLR counts from the schedule's start: its factor is a pure function of the lineage's step.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, warm, length, floor))
        self.optimizer = opt

    def _resume_scheduler(self):
        """The scheduler where the stored lineage left it: its state is derived, not stored (the
        optimizer's param groups carry the current and initial lr)."""
        sch = self.scheduler
        sch.last_epoch = self.state.step - self.state.schedule_start
        sch.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        sch._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _check_scheduler(self):
        expected = self.state.step - self.state.schedule_start
        if self.scheduler.last_epoch != expected:
            raise RuntimeError(f"LR scheduler at {self.scheduler.last_epoch}, expected {expected}")

    def current_lr(self) -> float:
        return self.scheduler.get_last_lr()[0] if self.scheduler else 0.0

    # -- rounds ----------------------------------------------------------------------------------
    def train_round(self, examples, *, epochs=None, max_steps=None, schedule_steps=None, total_rounds=None,
                    stop_after: int | None = None):
        """One round (one `train_sft` call): returns (loss per step, response tokens trained on).

        `stop_after`: take at most that many steps now (e.g. to checkpoint mid-round); `save` and
        `train_sft(..., resume_from=...)` (or `resume_round`) finish the round.
        """
        examples = load_examples(examples)
        if not examples:
            raise ValueError("no training examples")
        if (epochs is None) == (max_steps is None):
            raise ValueError("give exactly one of epochs or max_steps")
        st = self.state
        n_steps = max_steps if max_steps is not None else max(1, math.ceil(epochs * len(examples) / self.batch_size))
        continue_schedule = self.mode == "online" and self.optimizer is not None
        if self.mode == "restart" and self.initial_weights is not None and st.rounds > 0:
            D.load_full_state_dict(self.model, self.initial_weights)
            st.step = 0  # as if loaded from the initial checkpoint
        if not continue_schedule:  # fresh optimizer + schedule: iterative, restart, first online round
            total = schedule_steps or (n_steps * total_rounds if (self.mode == "online" and total_rounds) else n_steps)
            st.schedule_start, st.schedule_steps = st.step, total
            st.warmup_steps = self.warmup_steps if self.warmup_steps is not None else int(round(self.warmup_ratio * total))
            st.lr, st.min_lr_ratio = self.lr, self.min_lr_ratio
            self._new_optimizer()
        elif st.step + n_steps > st.schedule_start + st.schedule_steps:
            log.warning("online schedule of %d steps ends before step %d; the LR stays at its floor",
                        st.schedule_steps, st.step + n_steps)
        st.round_start, st.round_steps = st.step, n_steps
        st.examples_digest = examples_digest(examples)
        return self._loop(examples, st.step + (min(n_steps, stop_after) if stop_after is not None else n_steps))

    def resume_round(self, examples):
        """Finish the round an interrupted call started (state loaded with `resume=True`)."""
        examples = load_examples(examples)
        st = self.state
        if examples_digest(examples) != st.examples_digest:
            raise ValueError("resume: the examples differ from the interrupted call's")
        st.rounds -= 1  # the interrupted call counted itself already
        return self._loop(examples, st.round_start + st.round_steps)

    def _loop(self, examples, end_step):
        import torch

        from bstar.logs import progress as progress_bar

        procs, st, model = self.procs, self.state, self.model
        self._check_scheduler()
        data = tokenize_examples(self.tokenizer, examples,
                                 self.max_length or getattr(self.config, "max_position_embeddings", None))
        pad_id = self.tokenizer.pad_token_id
        world, rank, micro = self.world, self.rank, self.micro
        losses: list[float] = []
        trained_tokens = 0
        t0 = time.time()
        model.train()
        first_step, n_steps = st.step, end_step - st.step
        name = f"sft[{self.mode}]"
        every = loss_log_every(n_steps)
        main = procs.is_main
        if main:
            log.info("%s: %d optimizer steps (step %d to %d) on %d examples, %d per batch (%d process(es) x %d "
                     "micro-batch(es) of %d, %s), lr %.3e, %d warm-up steps of a %d-step schedule", name, n_steps,
                     first_step, end_step, len(data), self.batch_size, world, self.grad_accum, micro,
                     self.distributed, st.lr, st.warmup_steps, st.schedule_steps)
        bar = progress_bar(n_steps, name, disable=not (self.progress and main), unit="step",
                           logger=log, dynamic_ncols=True)
        while st.step < end_step:
            idx = batch_indices(st.step, st.round_start, len(data), self.batch_size, self.seed)
            n_tok = sum(int((data[i][1][1:] != IGNORE).sum()) for i in idx)
            loss_acc = torch.zeros((), device=procs.device)
            for m in range(self.grad_accum):
                global_micro = idx[m * micro * world : (m + 1) * micro * world]
                parts = length_buckets([data[i] for i in global_micro[rank * micro : (rank + 1) * micro]],
                                       bucket_count([data[i] for i in global_micro], micro))
                for j, items in enumerate(parts):
                    ids, labels = collate(items, pad_id, procs.device)
                    last = m == self.grad_accum - 1 and j == len(parts) - 1
                    with D.gradient_sync(model, last):
                        with D.autocast(procs, self.distributed, self.precision):
                            loss_sum = response_token_loss(model, ids, labels)
                        # gradients are averaged over processes; scale so the result is the global token mean
                        (loss_sum * (world / max(1, n_tok))).backward()
                    loss_acc += loss_sum.detach()
            if self.max_grad_norm:
                D.clip_grad_norm(model, self.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            st.step += 1
            kill_point("step")  # BSTAR_KILL_AT crash point (tests only)
            loss = D.all_reduce_sum(procs, loss_acc).item() / max(1, n_tok)
            losses.append(loss)
            trained_tokens += n_tok
            bar.update(1)
            if st.step % max(1, self.log_every) == 0 or st.step == end_step:
                rec = {"step": st.step, "loss": round(loss, 5), "lr": self.current_lr(), "tokens": trained_tokens,
                       "elapsed_s": round(time.time() - t0, 2)}
                st.log.append(rec)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}")
            done = len(losses)
            if main and (done % every == 0 or st.step == end_step):
                recent = losses[-((done - 1) % every + 1):]  # the steps since the previous line
                bar.info(log, "%s step %d/%d (lineage step %d): loss %.4f%s, lr %.3e", name, done, n_steps, st.step,
                         loss, mean_since(recent), self.current_lr())
        bar.close()
        if main and losses:
            tail = losses[-10:]
            log.info("%s done: %d steps, final loss %.4f (mean of the last %d steps %.4f), %d response tokens, "
                     "%.1f s", name, len(losses), losses[-1], len(tail), sum(tail) / len(tail), trained_tokens,
                     time.time() - t0)
        st.rounds += 1
        return losses, trained_tokens

    # -- checkpoint ------------------------------------------------------------------------------
    def save(self, out_dir, *, save_optimizer: bool = True) -> str:
        """The checkpoint: weights gathered from the shards in the training dtype (bf16 on GPUs),
        the tokenizer, the lineage's state, and (`save_optimizer`) the AdamW shards."""
        import torch

        out = Path(out_dir)
        D.barrier(self.procs)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        full_state = D.full_state_dict(self.model, dtype)  # a collective: every process takes part
        if save_optimizer and self.optimizer is not None:
            D.save_optimizer(self.model, self.optimizer, out / OPTIMIZER_DIR)
        if self.procs.is_main:
            from bstar.models.loading import save_policy

            save_policy(D.unwrap(self.model), self.tokenizer, out, state_dict=full_state, dtype=dtype)
            (out / STATE_FILE).write_text(json.dumps(asdict(self.state), indent=1))
        D.barrier(self.procs)
        return str(out)

    def close(self):
        """Drop the model, optimizer and process group, and hand the device memory back."""
        from bstar.models.loading import release_device_memory

        self.model = self.optimizer = self.scheduler = self.initial_weights = None
        D.close_processes(self.procs)
        release_device_memory()


def main(argv: list[str] | None = None) -> None:
    """`python -m bstar.models.trainer ARGS.json`: what torchrun runs in every process."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    pairs = load_examples(spec.pop("examples_path"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from bstar.faults import inherited_stage

    with inherited_stage():
        _train_one_call(pairs, **spec)


if __name__ == "__main__":
    main()
