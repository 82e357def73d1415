"""How the trainers share a model over processes: the one distributed module that policy SFT
(`bstar.models.trainer`) and PRM training (`bstar.models.prm_train`) both call.

    procs = init_processes("cuda", "fsdp")          # torchrun's env; a 1-process group for fsdp alone
    names = no_decay_names(model)                    # from the unwrapped model, before wrapping
    model = wrap(model, procs, "fsdp", precision="bf16", gradient_checkpointing=True)
    opt = torch.optim.AdamW(decay_groups(model, names, weight_decay=0.1), lr=1e-5)
    with autocast(procs, "fsdp", "bf16"), gradient_sync(model, last_micro_batch):
        loss.backward()
    clip_grad_norm(model, 1.0)
    state = full_state_dict(model, torch.bfloat16)  # collective; the whole model on rank 0 (CPU)
    save_optimizer(model, opt, out / "optimizer")   # per-rank shards, never gathered
    ...
    close_processes(procs)

Strategies (`training.distributed`, `reward.prm_train.distributed`):
- `ddp`: every process holds the whole model, fp32 weights and AdamW state; bf16 is autocast.
- `fsdp`: PyTorch FSDP2 (`fully_shard`) on every decoder layer and then the root, so parameters,
  gradients and AdamW moments are sharded over the processes and one layer's full parameters
  exist at a time. Master weights stay fp32 (sharded); with bf16 the layers compute in bf16
  (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`: gradients are reduced in fp32).
  `cpu_offload` keeps the shards and the optimizer in CPU memory.

Optimizer state goes through torch.distributed.checkpoint (each rank writes its own shard; a later
call may load it into any number of processes). Runs on CPU over gloo (the tests) and on GPUs over
NCCL, launched by torchrun (`bstar.models.launch`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("ddp", "fsdp")


@dataclass
class Processes:
    """This process's place in the training job."""

    world: int
    rank: int
    local_rank: int
    device: object  # torch.device
    owns_group: bool = False  # the process group was created here (and is destroyed by close_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def training_precision(precision: str, device: str) -> str:
    """`bf16` or `fp32`: `auto` is bf16 on a CUDA GPU that supports it, fp32 elsewhere."""
    import torch

    if precision == "auto":
        return "bf16" if device != "cpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("fp32", "no"):
        return "fp32"
    if precision != "bf16":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision


def init_processes(device: str, strategy: str = "ddp") -> Processes:
    """Join the job torchrun started (WORLD_SIZE > 1), or run alone. FSDP2 needs a process group
    even for one process, so `fsdp` alone gets a private 1-process group."""
    import torch
    import torch.distributed as dist

    if strategy not in STRATEGIES:
        raise ValueError(f"distributed must be one of {STRATEGIES}, got {strategy!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        index = local if world > 1 else (torch.device(device).index or 0)
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    owns = False
    if (world > 1 or strategy == "fsdp") and not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        if world > 1:
            dist.init_process_group(backend, device_id=dev if cuda else None)
        else:
            from bstar.models.launch import free_port

            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        owns = True
    return Processes(world, rank, local, dev, owns)


def share_cpu_threads(procs: Processes) -> None:
    """On the CPU, N processes share the cores: each takes its part (BSTAR_TORCH_THREADS, else
    cores / N); one process keeps `set_cpu_threads`' own rule."""
    from bstar.models.loading import set_cpu_threads

    if procs.device.type != "cpu":
        return
    set_cpu_threads(None if procs.world == 1 else
                    int(os.environ.get("BSTAR_TORCH_THREADS", 0)) or max(1, (os.cpu_count() or 1) // procs.world))


def close_processes(procs: Processes) -> None:
    import torch.distributed as dist

    if procs.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        procs.owns_group = False


def barrier(procs: Processes) -> None:
    import torch.distributed as dist

    if dist.is_initialized() and procs.world > 1:
        dist.barrier()


def all_reduce_sum(procs: Processes, value):
    """The sum of a scalar tensor over the processes (the tensor itself with one process)."""
    import torch.distributed as dist

    if procs.world > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def decoder_layers(model) -> list:
    """The repeated transformer blocks FSDP shards one by one: the classes the model names in
    `_no_split_modules` (every transformers decoder does), else the largest ModuleList."""
    import torch

    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def no_decay_names(model) -> set[str]:
    """Parameters AdamW must not decay (biases, norms, any 1-D tensor), by name, read from the
    unwrapped model: names survive wrapping, shapes may not."""
    return {n for n, p in model.named_parameters() if p.ndim < 2 or n.endswith(".bias") or "norm" in n.lower()}


def decay_groups(model, no_decay: set[str], weight_decay: float, **group) -> list[dict]:
    """AdamW parameter groups of a (possibly wrapped) model: decay, then no decay."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (rest if name.removeprefix("module.") in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, **group}, {"params": rest, "weight_decay": 0.0, **group}]


def wrap(model, procs: Processes, strategy: str, *, precision: str = "fp32", gradient_checkpointing: bool = False,
         cpu_offload: bool = False, root=None):
    """The model ready to train under `strategy`. `model` is the causal LM (or backbone) whose
    decoder layers are sharded; `root` (default `model`) is the module the loop calls, when the
    trainable net holds more than the model (the PRM's backbone + head)."""
    import torch

    root = model if root is None else root
    if gradient_checkpointing:
        # non-reentrant: the variant that composes with FSDP2 and with inputs that need no grad
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if getattr(model, "config", None) is not None:
            model.config.use_cache = False
    if cpu_offload and strategy != "fsdp":
        raise ValueError("cpu_offload needs distributed='fsdp'")
    if strategy == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else None,
                                  reduce_dtype=torch.float32)
        offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=mp, offload_policy=offload)
        fully_shard(root, mp_policy=mp, offload_policy=offload)
        return root
    root.to(procs.device)
    if procs.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [procs.device.index] if procs.device.type == "cuda" else None
        return DistributedDataParallel(root, device_ids=ids)
    return root


def is_fsdp(model) -> bool:
    """Whether `model` (or the module DDP wraps) is sharded by FSDP2."""
    return hasattr(unwrap(model), "set_requires_gradient_sync")


def unwrap(model):
    """The module itself (DDP keeps it in `.module`; an FSDP2 module is its own module)."""
    return getattr(model, "module", model)


def autocast(procs: Processes, strategy: str, precision: str):
    """bf16 autocast for DDP and one process; FSDP's mixed-precision policy casts by itself."""
    import torch

    if precision == "bf16" and strategy != "fsdp":
        return torch.autocast(procs.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def gradient_sync(model, enabled: bool):
    """Skip the gradient reduction on all but the last micro-batch of an optimizer step."""
    if enabled:
        yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    else:
        yield


def clip_grad_norm(model, max_norm: float) -> float:
    """Clip the global gradient norm (over every shard); returns the norm before clipping."""
    import torch

    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def full_state_dict(model, dtype=None) -> dict:
    """The whole model's state, gathered from the shards onto rank 0's CPU (a collective: every
    rank calls it; the others get {}). Floating tensors cast to `dtype` when given."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = unwrap(model)
    if is_fsdp(inner):
        state = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {k: v.detach().to("cpu") for k, v in inner.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in state.items()}
    return state


def load_full_state_dict(model, state: dict) -> None:
    """Set every parameter from a full (unsharded) state dict that every rank holds."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    inner = unwrap(model)
    if is_fsdp(inner):
        set_model_state_dict(inner, state, options=StateDictOptions(full_state_dict=True))
    else:
        inner.load_state_dict(state)


@contextlib.contextmanager
def _one_process_is_meant():
    """torch.distributed.checkpoint warns when it runs without a process group: one process is
    what we mean then."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_optimizer(model, optimizer, path: str | Path) -> None:
    """AdamW state, each rank writing its own shard (torch.distributed.checkpoint), never gathered."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    import torch.distributed as dist

    with _one_process_is_meant():
        dcp.save({"optimizer": get_optimizer_state_dict(unwrap(model), optimizer)}, checkpoint_id=str(path),
                 no_dist=not dist.is_initialized())


def load_optimizer(model, optimizer, path: str | Path) -> None:
    """Load what `save_optimizer` wrote, resharded onto however many processes this job has."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    inner = unwrap(model)
    state = {"optimizer": get_optimizer_state_dict(inner, optimizer)}  # the template: shapes and shards
    import torch.distributed as dist

    with _one_process_is_meant():
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_optimizer_state_dict(inner, optimizer, state["optimizer"])
