"""GPU memory pre-flight: what training and sampling a decoder model will need per GPU, from its
`config.json` alone (no weights loaded, no torch imported).

    from bstar.models.memory import read_shape, training_memory, TrainingPlan
    shape = read_shape("/models/Qwen2.5-7B")                  # config.json -> ModelShape
    shape.parameters()                                         # 7_615_616_512
    mem = training_memory(shape, TrainingPlan("fsdp", processes=8, micro_batch=8, seq_len=1024,
                                              precision="bf16", gradient_checkpointing=True))
    mem.total / 2**30                                          # GiB per GPU

    python -m bstar.models.memory CONFIG.yaml                  # the table `bstar check` prints

The parameter count is exact for Llama, Mistral, Qwen2 and Qwen3 shaped configs (checked against
transformers in tests/models/test_memory_transformers.py); any other decoder that names the same
fields is counted as if it were Llama-shaped, and the table says so. Every term, its formula and
a worked 7B example are in docs/gpu-memory.md. Sizes are bytes; the report prints GiB (2**30
bytes: what an "80 GB" card really holds, and what `nvidia-smi` counts in).

Training, per GPU, for P parameters over N processes:
- `ddp`: fp32 master weights 4P, fp32 gradients 4P, AdamW's two fp32 moments 8P (16 B/param),
  plus DDP's gradient buckets 4P when N > 1 (a second copy of the gradients that
  DistributedDataParallel all-reduces, as its default `gradient_as_bucket_view=False` keeps them)
  and, with bf16 autocast, the bf16 copies of the weights autocast caches for the step (2P).
- `fsdp` (FSDP2): the 16 B/param of states sharded over N (16P / N), plus the parameters gathered
  in compute precision: the root group (embeddings, final norm, untied lm_head; the root is not
  resharded after the forward) and two decoder layers (the one computing and the prefetched
  next). `cpu_offload` moves the sharded states to CPU memory.
- activations (micro-batch x sequence tokens, see `layer_activation_bytes`), all layers'
  without gradient checkpointing; with it, each layer's input plus one layer recomputed.
- logits: the fp32 copy of tokens x vocab the loss reads (none for a PRM: its head is 1 wide).
- the optimizer step: AdamW's fp32 temporaries, 4 B per (local) parameter, while the activations
  are gone; the peak is the larger of the backward's and the step's.

Sampling: the weights in the sampling dtype, plus the KV cache,
2 (K and V) x layers x kv_heads x head_dim x dtype bytes x rows x (prompt + new tokens).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

GIB = 2**30
# Families whose parameter layout is counted exactly (see ModelShape.layer_parameters).
EXACT_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
# What transformers' config classes assume for a field a config.json leaves out (an explicit
# null means num_attention_heads / hidden_size // num_attention_heads in every family).
ABSENT_DEFAULTS = {"mistral": {"num_key_value_heads": 8}, "qwen2": {"num_key_value_heads": 32},
                   "qwen3": {"num_key_value_heads": 32, "head_dim": 128}}
# Without `training.max_length` the trainer keeps up to max_position_embeddings tokens, but a
# batch is only as long as its longest example: GSM8K / MATH prompts with a solution stay under
# ~1k tokens (the B-STaR code trains at 1024). 2048 covers that twice over without sizing a 128k
# context model for 131072-token examples it never sees.
DEFAULT_SEQ_CAP = 2048
# The precision terms: bytes of one activation / gathered parameter value.
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


class ShapeUnavailable(ValueError):
    """The model's config.json cannot be read here (a hub id offline, a GGUF file, ...)."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only causal LM that decide its size."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: an RMSNorm over head_dim on Q and on K in every layer
    max_position_embeddings: int | None = None

    @property
    def exact(self) -> bool:
        """Whether the parameter count follows this family's real layout (else: Llama-shaped)."""
        return self.model_type in EXACT_FAMILIES

    @classmethod
    def from_config(cls, cfg: dict, name: str = "model") -> "ModelShape":
        """From a transformers `config.json` dict. Optional fields it leaves out take the
        defaults of the family's transformers config class (ABSENT_DEFAULTS; else kv heads =
        heads, head_dim = hidden / heads; an untied head)."""
        if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers: the language model
            cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if not cfg.get(k)]
        if missing:
            raise ShapeUnavailable(f"config.json of {name!r} lacks {', '.join(missing)} "
                                   f"(model_type {cfg.get('model_type')!r} is not a Llama-shaped decoder)")
        try:
            return cls._from_config(cfg, name)
        except (TypeError, ValueError, ZeroDivisionError) as e:  # a field of the wrong type, 0 heads, ...
            raise ShapeUnavailable(f"config.json of {name!r} is not a decoder config this can size: {e}") from None

    @classmethod
    def _from_config(cls, cfg: dict, name: str) -> "ModelShape":
        model_type = str(cfg.get("model_type") or "llama")
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        bias = bool(cfg.get("attention_bias", False))
        absent = ABSENT_DEFAULTS.get(model_type, {})
        if model_type == "qwen2":  # Qwen2Attention: q/k/v always biased, o_proj never
            qkv_bias, o_bias = True, False
        elif model_type == "mistral":
            qkv_bias = o_bias = False
        else:  # Llama, Qwen3 and look-alikes: one `attention_bias` switch for all four projections
            qkv_bias = o_bias = bias
        return cls(
            name=name,
            model_type=model_type,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads", absent.get("num_key_value_heads")) or heads),
            head_dim=int(cfg.get("head_dim", absent.get("head_dim")) or hidden // heads),
            intermediate_size=int(cfg["intermediate_size"]),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)) and model_type in ("llama",),
            qk_norm=model_type == "qwen3",
            max_position_embeddings=cfg.get("max_position_embeddings"),
        )

    # --- parameter count ---------------------------------------------------------------------

    def layer_parameters(self) -> int:
        """One decoder layer: q/k/v/o projections (GQA: k and v are kv_heads x head_dim wide),
        the gated MLP's gate/up/down, two RMSNorm weights (and Qwen3's q/k norms)."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            attention += q + 2 * kv
        if self.o_bias:
            attention += h
        if self.qk_norm:
            attention += 2 * self.head_dim
        mlp = 3 * h * i + (2 * i + h if self.mlp_bias else 0)
        return attention + mlp + 2 * h

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    def lm_head_parameters(self) -> int:
        """0 when tied: the head reuses the embedding matrix."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def root_parameters(self) -> int:
        """What is not in a decoder layer: embeddings, the final norm, an untied lm_head (the group
        FSDP's root module holds)."""
        return self.embedding_parameters() + self.hidden_size + self.lm_head_parameters()

    def parameters(self) -> int:
        return self.num_layers * self.layer_parameters() + self.root_parameters()

    def label(self, detail: str = "") -> str:
        family = self.model_type if self.exact else f"{self.model_type}, counted as Llama-shaped"
        return f"{self.name} ({family}, {format_params(self.parameters())} params" + (f"; {detail})" if detail else ")")

    # --- activations and KV cache ------------------------------------------------------------

    def layer_activation_bytes(self, precision: str = "bf16") -> int:
        """Bytes one token keeps for the backward pass in one decoder layer.

        The method is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
        Transformer Models", eq. 1: sbh(34 + 5as/h) bytes for a GPT layer in 16-bit): count every
        tensor autograd saves. For a Llama-shaped layer there is no dropout (their 2 mask bytes
        per h go), SDPA / flash attention keeps no s x s score matrix (the 5as/h term goes, it
        keeps its output instead), K and V are kv_heads x head_dim wide, and SwiGLU keeps four
        intermediate-wide tensors (gate, up, silu(gate), their product). With e bytes per value
        (2 bf16, 4 fp32), h hidden, k = kv_heads x head_dim, i intermediate:
            8h                      the two RMSNorm inputs, upcast to fp32 inside the norm
          + e x 7h                  both norms' normalized outputs, the q/k/v input, Q, attention
                                    output, o_proj input, gate/up input
          + e x 2k                  K and V
          + e x 4i                  gate, up, silu(gate), gate x up (down_proj input)
        """
        e = DTYPE_BYTES[precision]
        h, i = self.hidden_size, self.intermediate_size
        return 8 * h + e * (7 * h + 2 * self.num_kv_heads * self.head_dim + 4 * i)

    def kv_bytes_per_token(self, precision: str = "bf16") -> int:
        """The KV cache of one token over all layers: K and V, kv_heads x head_dim each."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * DTYPE_BYTES[precision]


def format_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def gib(n: float) -> str:
    """Bytes as GiB: one decimal from 1 GiB up, three below (a tiny model's megabytes)."""
    return f"{n / GIB:.1f}" if n >= GIB or n == 0 else f"{n / GIB:.3f}"


# --- where a shape comes from ---------------------------------------------------------------------


def read_shape(source: str | Path, name: str | None = None) -> ModelShape:
    """The shape in a local `config.json` (a checkpoint directory or the file itself), or for a hub
    id the hub's config.json (the cached one; else downloaded, that one small file, unless
    HF_HUB_OFFLINE is set). Raises ShapeUnavailable saying why not, in one line."""
    src = str(source)
    local = Path(src).expanduser()
    if local.exists():
        path = local / "config.json" if local.is_dir() else local
        if not path.is_file():
            raise ShapeUnavailable(f"{src!r} holds no config.json")
        label = name or (local.name if local.is_dir() else local.parent.name)
    else:
        path, label = Path(_hub_config(src)), name or src.rstrip("/").rsplit("/", 1)[-1]
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShapeUnavailable(f"cannot read {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise ShapeUnavailable(f"{path} is not a config.json mapping")
    return ModelShape.from_config(cfg, label)


def _hub_config(repo_id: str) -> str:
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        raise ShapeUnavailable(f"{repo_id!r} is not a local directory (and huggingface_hub is missing)") from None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id: simply not cached
        found = None
    if isinstance(found, str):
        return found
    why = "HF_HUB_OFFLINE is set"
    if not any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        try:
            return hf_hub_download(repo_id, "config.json")
        except Exception as e:  # noqa: BLE001 - gated, no network, no such repo: the estimate is skipped
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    raise ShapeUnavailable(f"{repo_id!r}: its config.json is not in the hub cache and cannot be fetched ({why})")


def tiny_shape(hidden: int, layers: int, heads: int) -> ModelShape:
    """The run's from-scratch policy (`model.name_or_path: tiny`), as `build_tiny_policy` builds
    it from `model.hidden_size`, `num_layers`, `num_heads`: character vocabulary, tied head,
    the `tiny` size's MLP width (bstar.models.tiny, imported without torch)."""
    from bstar.models.tiny import CHARS, SIZES, SPECIAL_TOKENS

    return ModelShape(name="tiny", model_type="llama", vocab_size=len(SPECIAL_TOKENS) + len(CHARS), hidden_size=hidden,
                      num_layers=layers, num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
                      intermediate_size=SIZES["tiny"]["intermediate"], tie_word_embeddings=True,
                      max_position_embeddings=256)


def policy_shape(model) -> ModelShape:
    """The shape of a run's `model` section (bstar.config.ModelConfig)."""
    from bstar.models.loading import gguf_source
    from bstar.storage.checkpoints import is_remote

    if model.name_or_path == "tiny":
        return tiny_shape(model.hidden_size, model.num_layers, model.num_heads)
    if is_remote(model.name_or_path):
        raise ShapeUnavailable(f"{model.name_or_path!r} is a checkpoint in the lake; its config.json is read "
                               "only when a stage downloads it")
    try:
        gguf = gguf_source(model.name_or_path, model.gguf_file)
    except ValueError as e:
        raise ShapeUnavailable(str(e)) from None
    if gguf is not None:
        raise ShapeUnavailable(f"a GGUF checkpoint ({gguf[1]}) has no config.json until the warm-up de-quantizes it")
    return read_shape(model.name_or_path)


# --- training -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPlan:
    """How one training job runs, per process."""

    strategy: str  # "ddp" | "fsdp"
    processes: int
    micro_batch: int  # examples per process per forward pass
    seq_len: int  # tokens per example (the padded length, at most)
    precision: str = "bf16"  # compute precision: "bf16" (mixed) | "fp32"
    gradient_checkpointing: bool = False
    cpu_offload: bool = False
    logits: bool = True  # a causal LM's loss over the vocabulary; False for a PRM's scalar head
    extra_parameters: int = 0  # trained parameters beyond the causal LM's (a PRM: + head - lm_head)
    resident_parameters: int = 0  # untrained fp32 parameters a ddp process still holds (a PRM's lm_head)

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    def describe(self) -> str:
        return f"{self.processes} process(es), micro-batch {self.micro_batch} x {self.seq_len} tokens, {self.precision}"


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes per GPU, term by term (see the module docstring)."""

    plan: TrainingPlan
    weights: int
    gradients: int
    optimizer: int
    buckets: int  # DDP's gradient communication buckets
    gathered: int  # ddp: autocast's bf16 weight copies; fsdp: parameters all-gathered at once
    activations: int  # every layer's, no gradient checkpointing
    activations_checkpointed: int  # layer inputs + one layer recomputed
    logits: int
    step: int  # AdamW's step: the foreach kernels' fp32 temporaries, one value per (local) parameter
    offloaded: int = 0  # bytes of sharded states kept in CPU memory per process (cpu_offload)

    @property
    def states(self) -> int:
        return self.weights + self.gradients + self.optimizer

    def backward_peak(self, gradient_checkpointing: bool) -> int:
        """States, buckets, gathered parameters, activations and logits all at once: an upper
        bound (the backward frees a layer's activations as it fills that layer's gradients)."""
        act = self.activations_checkpointed if gradient_checkpointing else self.activations
        return self.states + self.buckets + self.gathered + act + self.logits

    def step_peak(self) -> int:
        """The optimizer step: activations are gone, AdamW's temporaries are not."""
        return self.states + self.buckets + self.step

    def total_for(self, gradient_checkpointing: bool) -> int:
        return max(self.backward_peak(gradient_checkpointing), self.step_peak())

    @property
    def total(self) -> int:
        return self.total_for(self.plan.gradient_checkpointing)


def training_memory(shape: ModelShape, plan: TrainingPlan) -> TrainingMemory:
    if plan.strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be ddp or fsdp, got {plan.strategy!r}")
    p = shape.parameters() + plan.extra_parameters
    n = max(1, plan.processes)
    e = DTYPE_BYTES[plan.precision]
    # weights, gradients, AdamW exp_avg + exp_avg_sq: always fp32 (the trainer loads fp32 master
    # weights and keeps mixed precision to the compute)
    weights, grads, opt = 4 * p, 4 * p, 8 * p
    buckets = gathered = offloaded = 0
    # torch's default (foreach) AdamW on CUDA allocates an fp32 temporary the size of the
    # parameters it updates (sqrt of exp_avg_sq, ...): measured as a 20 B/param peak at the step
    step = 4 * p
    if plan.strategy == "ddp":
        weights += 4 * plan.resident_parameters  # FSDP leaves them in CPU memory: they are not in the root
        buckets = 4 * p if n > 1 else 0
        gathered = 2 * p if plan.precision != "fp32" else 0
        # under autocast the residual stream stays fp32 (fp32 embeddings, fp32 adds): a layer's
        # checkpointed input is 4 bytes a value
        e_in = 4
    else:
        weights, grads, opt, step = (math.ceil(x / n) for x in (weights, grads, opt, step))
        gathered = e * (shape.root_parameters() + min(2, shape.num_layers) * shape.layer_parameters()
                        + plan.extra_parameters)
        e_in = e
        if plan.cpu_offload:
            offloaded = weights + grads + opt
            weights = grads = opt = step = 0  # the step runs on the CPU too
    tokens = plan.tokens
    per_layer = shape.layer_activation_bytes(plan.precision)
    activations = shape.num_layers * tokens * per_layer
    checkpointed = shape.num_layers * tokens * shape.hidden_size * e_in + tokens * per_layer
    logits = tokens * shape.vocab_size * 4 if plan.logits else 0
    return TrainingMemory(plan, weights, grads, opt, buckets, gathered, activations, checkpointed, logits, step,
                          offloaded)


# --- sampling -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingMemory:
    backend: str
    precision: str
    tensor_parallel: int
    rows: int  # sequences decoded together (transformers: sampling.batch_size)
    seq_len: int  # prompt + new tokens per row
    weights: int  # per GPU (split over tensor_parallel)
    kv_cache: int  # per GPU, for `rows` x `seq_len`
    kv_per_token: int  # per GPU

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def sampling_memory(shape: ModelShape, *, backend: str, rows: int, seq_len: int, precision: str = "bf16",
                    tensor_parallel: int = 1) -> SamplingMemory:
    tp = max(1, tensor_parallel)
    weights = math.ceil(DTYPE_BYTES[precision] * shape.parameters() / tp)
    per_token = math.ceil(shape.kv_bytes_per_token(precision) / tp)
    return SamplingMemory(backend, precision, tp, rows, seq_len, weights, per_token * rows * seq_len, per_token)


# --- a run config's jobs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One training job of a run, estimated under both strategies."""

    title: str  # "training" | "PRM training"
    prefix: str  # the config section that sets it: "training" | "reward.prm_train"
    configured: str  # the strategy the config asks for
    by_strategy: dict[str, TrainingMemory]

    @property
    def current(self) -> TrainingMemory:
        return self.by_strategy[self.configured]


@dataclass
class MemoryReport:
    """What `bstar check` prints and pre-flight judges, for one run config."""

    shape: ModelShape | None
    unavailable: str | None  # why there is no estimate (one line), when shape is None
    gpu_bytes: int | None  # each GPU's memory, when known
    gpu_source: str  # where gpu_bytes came from
    seq_note: str = ""  # how the sequence length was chosen
    jobs: list[Job] = field(default_factory=list)
    sampling: SamplingMemory | None = None
    memory_fraction: float = 1.0  # vLLM: the part of a GPU it may take (sampling.gpu_memory_utilization)


def sequence_length(cfg, shape: ModelShape) -> tuple[int, str]:
    """Tokens per training example: `training.max_length`, else the model's context capped at
    DEFAULT_SEQ_CAP (a batch is padded to its longest example, never to a 128k context)."""
    if cfg.training.max_length:
        return cfg.training.max_length, "training.max_length"
    mpe = shape.max_position_embeddings or DEFAULT_SEQ_CAP
    return min(mpe, DEFAULT_SEQ_CAP), f"training.max_length unset: min(max_position_embeddings {mpe}, {DEFAULT_SEQ_CAP})"


def _micro(batch: int, explicit: int | None, accum: int, n: int) -> int:
    return explicit if explicit else max(1, math.ceil(batch / (accum * n)))


def training_plan(cfg, shape: ModelShape, precision: str) -> TrainingPlan:
    """The rounds' job as configured; the warm-up's when its micro-batch is the larger one."""
    t = cfg.training
    batches = [t.batch_size] + ([t.warmup.batch_size] if t.warmup.steps else [])
    micro = max(_micro(b, t.micro_batch_size, t.grad_accum, t.num_processes) for b in batches)
    return TrainingPlan(t.distributed, t.num_processes, micro, sequence_length(cfg, shape)[0], precision,
                        t.gradient_checkpointing, t.cpu_offload)


def prm_plan(cfg, shape: ModelShape, precision: str) -> TrainingPlan:
    """PRM training (`reward.prm_train`, bstar.models.prm_train): the policy's backbone (no
    lm_head) + a scalar head of hidden + 1 parameters, BCE at step ends (no vocabulary logits), on
    examples as long as the policy's. Under ddp the causal LM's untrained lm_head stays on the GPU."""
    pt = cfg.reward.prm_train
    micro = _micro(pt.batch_size, pt.micro_batch_size, 1, pt.num_processes)
    head = shape.lm_head_parameters()
    seq = pt.max_length or sequence_length(cfg, shape)[0]
    return TrainingPlan(pt.distributed, pt.num_processes, micro, seq, precision,
                        pt.gradient_checkpointing, logits=False, extra_parameters=shape.hidden_size + 1 - head,
                        resident_parameters=head)


def job(title: str, prefix: str, shape: ModelShape, plan: TrainingPlan) -> Job:
    """`plan` as configured, and the same job under the other strategy (no cpu_offload with ddp)."""
    both = {s: training_memory(shape, replace(plan, strategy=s, cpu_offload=plan.cpu_offload and s == "fsdp"))
            for s in ("ddp", "fsdp")}
    return Job(title, prefix, plan.strategy, both)


def sampling_plan(cfg, shape: ModelShape, precision: str) -> SamplingMemory:
    """Sampling: `sampling.batch_size` rows (the transformers backend; vLLM sizes its own batch
    from the memory left), each as long as a training example (prompt + response) and at least
    `sampling.max_new_tokens`."""
    s = cfg.sampling
    seq = max(sequence_length(cfg, shape)[0], s.max_new_tokens)
    tp = s.tensor_parallel_size if s.backend == "vllm" else 1
    return sampling_memory(shape, backend=s.backend, rows=s.batch_size, seq_len=seq, precision=precision,
                           tensor_parallel=tp)


def run_report(cfg, *, gpu_bytes: int | None = None, gpu_source: str = "", cuda: bool = False,
               bf16_supported: bool = True) -> MemoryReport:
    """Estimates for a run config. `gpu_bytes`: each GPU's memory (None: unknown); `cuda`: the
    jobs run on a visible GPU. Precision follows the trainer: bf16 when `training.bf16`, or on a
    GPU that supports it (a GPU known only by `training.gpu_memory_gb` is taken to); else fp32."""
    try:
        shape = policy_shape(cfg.model)
    except ShapeUnavailable as e:
        return MemoryReport(None, str(e), gpu_bytes, gpu_source)
    on_gpu = cuda or gpu_bytes is not None
    precision = "bf16" if cfg.training.bf16 or (on_gpu and bf16_supported) else "fp32"
    sample_precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
        cfg.model.dtype, "bf16" if on_gpu and bf16_supported else "fp32")
    report = MemoryReport(shape, None, gpu_bytes, gpu_source, sequence_length(cfg, shape)[1])
    report.jobs.append(job("training", "training", shape, training_plan(cfg, shape, precision)))
    if cfg.reward.prm_train is not None and not cfg.reward.prm:
        report.jobs.append(job("PRM training", "reward.prm_train", shape, prm_plan(cfg, shape, precision)))
    report.sampling = sampling_plan(cfg, shape, sample_precision)
    if cfg.sampling.backend == "vllm":
        report.memory_fraction = cfg.sampling.gpu_memory_utilization
    return report


# --- judging --------------------------------------------------------------------------------------


def job_problem(j: Job, shape: ModelShape, gpu: int) -> tuple[str, str] | None:
    """(field, one-line message) when the configured job does not fit one GPU, else None. The
    field is the setting to change first: `distributed` when DDP's replicated states cannot fit
    (or FSDP would), then `gradient_checkpointing`, `cpu_offload`, `micro_batch_size`."""
    cur = j.current
    need = cur.total
    if need <= gpu:
        return None
    plan = cur.plan
    fixed = max(cur.states + cur.buckets + cur.gathered, cur.step_peak())  # what no activation setting changes
    if plan.strategy == "ddp" and (fixed > gpu or j.by_strategy["fsdp"].total_for(plan.gradient_checkpointing) <= gpu):
        where, what = "distributed", "ddp"
    elif not plan.gradient_checkpointing:
        where, what = "gradient_checkpointing", f"{plan.strategy} without gradient checkpointing"
    elif plan.strategy == "fsdp" and j.prefix == "training" and not plan.cpu_offload and fixed > gpu:
        where, what = "cpu_offload", "fsdp"
    elif plan.micro_batch > 1:
        where, what = "micro_batch_size", f"a micro-batch of {plan.micro_batch}"
    else:
        where, what = "num_processes", f"{plan.strategy} over {plan.processes} processes"
    fixes = _fixes(j, shape, gpu)
    hint = f"; use {' or '.join(fixes)}" if fixes else "; no setting of this job fits: use more or larger GPUs"
    return f"{j.prefix}.{where}", (f"{what} needs {gib(need)} GiB per GPU for {shape.label(plan.describe())} "
                                   f"but each GPU has {gib(gpu)} GiB{hint}")


def _fixes(j: Job, shape: ModelShape, gpu: int) -> list[str]:
    """Up to two changes that fit, least intrusive first."""
    cur, fsdp = j.current, j.by_strategy["fsdp"]
    ckpt = cur.plan.gradient_checkpointing
    candidates: list[tuple[str, int]] = []
    if j.configured == "ddp":
        candidates.append(("fsdp", fsdp.total_for(ckpt)))
    if not ckpt:
        candidates.append((f"{j.prefix}.gradient_checkpointing", cur.total_for(True)))
        if j.configured == "ddp":
            candidates.append(("fsdp and gradient_checkpointing", fsdp.total_for(True)))
    if j.prefix == "training" and not fsdp.plan.cpu_offload:
        off = training_memory(shape, replace(fsdp.plan, cpu_offload=True, gradient_checkpointing=True))
        candidates.append(("fsdp, gradient_checkpointing and cpu_offload", off.total))
    if cur.plan.micro_batch > 1:
        one = training_memory(shape, replace(fsdp.plan, micro_batch=1, gradient_checkpointing=True))
        candidates.append((f"fsdp, gradient_checkpointing and {j.prefix}.micro_batch_size 1", one.total))
    return [f"{what} ({gib(need)} GiB)" for what, need in candidates if need <= gpu][:2]


def sampling_problem(report: MemoryReport) -> tuple[str, str] | None:
    """The policy's weights alone must fit the part of a GPU the sampler may use (the transformers
    backend halves its batch on out-of-memory, so its KV cache is never a refusal)."""
    s, gpu = report.sampling, report.gpu_bytes
    if s is None or gpu is None:
        return None
    room = int(gpu * report.memory_fraction)
    if s.weights <= room:
        return None
    full = s.weights * s.tensor_parallel
    tp = 1
    while math.ceil(full / tp) > room and tp < 64:
        tp *= 2
    if s.backend == "vllm":
        return "sampling.tensor_parallel_size", (
            f"{s.tensor_parallel} GPU(s) per engine hold {gib(s.weights)} GiB of {s.precision} weights each for "
            f"{report.shape.label()} but gpu_memory_utilization {report.memory_fraction:g} x {gib(gpu)} GiB leaves "
            f"{gib(room)} GiB; use tensor_parallel_size {tp} or more")
    return "sampling.backend", (
        f"{s.backend} holds all {gib(s.weights)} GiB of {s.precision} weights of {report.shape.label()} on one GPU of "
        f"{gib(gpu)} GiB; use sampling.backend: vllm with tensor_parallel_size {tp}")


def report_problems(report: MemoryReport) -> list[tuple[str, str]]:
    """(field, message) for every job that cannot fit; nothing when the GPU size is unknown."""
    if report.shape is None or report.gpu_bytes is None:
        return []
    found = [job_problem(j, report.shape, report.gpu_bytes) for j in report.jobs]
    found.append(sampling_problem(report))
    return [p for p in found if p is not None]


# --- printing -------------------------------------------------------------------------------------

_ROWS = (
    ("weights (fp32 master)", lambda m: m.weights),
    ("gradients (fp32)", lambda m: m.gradients),
    ("AdamW moments (2 x fp32)", lambda m: m.optimizer),
    ("ddp gradient buckets", lambda m: m.buckets),
    ("gathered params (ddp: bf16 copies; fsdp: root + 2 layers)", lambda m: m.gathered),
    ("activations, all layers", lambda m: m.activations),
    ("activations, gradient checkpointing", lambda m: m.activations_checkpointed),
    ("logits (fp32)", lambda m: m.logits),
    ("AdamW step temporaries (fp32)", lambda m: m.step),
    ("total", lambda m: m.total_for(False)),
    ("total, gradient checkpointing", lambda m: m.total_for(True)),
)


def format_report(report: MemoryReport) -> list[str]:
    """The table `bstar check` prints: GiB per GPU, both strategies side by side ("-": none)."""
    if report.shape is None:
        return [f"memory: not estimated: {report.unavailable}"]
    gpu = (f"each GPU {gib(report.gpu_bytes)} GiB ({report.gpu_source})" if report.gpu_bytes is not None
           else "GPU size unknown (no GPU visible, training.gpu_memory_gb unset): not checked")
    lines = [f"memory per GPU (GiB) for {report.shape.label()}; {gpu}"]
    width = max(len(r[0]) for r in _ROWS) + 2
    for j in report.jobs:
        plan, cur = j.current.plan, j.current
        lines.append(f"  {j.title}: {plan.processes} process(es), micro-batch {plan.micro_batch} x {plan.seq_len} tokens "
                     f"({report.seq_note}), {plan.precision}")
        lines.append(f"    {'':<{width}}{'ddp':>9}{'fsdp':>9}")
        for label, value in _ROWS:
            cells = "".join(f"{gib(v) if (v := value(j.by_strategy[s])) else '-':>9}" for s in ("ddp", "fsdp"))
            lines.append(f"    {label:<{width}}{cells}")
        setting = j.configured + (" + gradient_checkpointing" if plan.gradient_checkpointing else "") + (
            " + cpu_offload" if plan.cpu_offload else "")
        verdict = "" if report.gpu_bytes is None else (
            ": fits" if cur.total <= report.gpu_bytes else f": does not fit in {gib(report.gpu_bytes)} GiB")
        lines.append(f"    configured ({j.prefix}): {setting} -> {gib(cur.total)} GiB{verdict}")
        if cur.offloaded:
            lines.append(f"    cpu_offload keeps {gib(cur.offloaded)} GiB of sharded states in CPU memory per process "
                         f"({gib(cur.offloaded * plan.processes)} GiB on the machine)")
    s = report.sampling
    if s is not None:
        head = f"  sampling ({s.backend}, {s.precision}" + (
            f", tensor_parallel_size {s.tensor_parallel}" if s.backend == "vllm" else "") + f"): weights {gib(s.weights)}"
        if s.backend != "vllm":
            line = f"{head} + KV cache of {s.rows} rows x {s.seq_len} tokens {gib(s.kv_cache)} = {gib(s.total)} GiB"
            if report.gpu_bytes is not None and s.total > report.gpu_bytes >= s.weights:
                line += " (more than a GPU: the batch is halved on out-of-memory; lower sampling.batch_size)"
        else:
            line = f"{head} GiB, KV cache {gib(s.kv_per_token * s.seq_len)} GiB per {s.seq_len}-token row"
            room = int(report.gpu_bytes * report.memory_fraction) - s.weights if report.gpu_bytes else 0
            if room > 0:
                line += (f"; the {gib(room)} GiB left of gpu_memory_utilization {report.memory_fraction:g} hold "
                         f"~{room // s.kv_per_token:,} tokens")
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m bstar.models.memory CONFIG.yaml [--set key=value ...]`: the table, with the GPU
    size from `training.gpu_memory_gb` (`bstar check` also reads a visible GPU's)."""
    import argparse

    from bstar.config import load_config

    parser = argparse.ArgumentParser(prog="python -m bstar.models.memory", description=main.__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, overrides=args.set)
    gb = cfg.training.gpu_memory_gb
    report = run_report(cfg, gpu_bytes=int(gb * GIB) if gb else None, gpu_source="training.gpu_memory_gb")
    print("\n".join(format_report(report)))
    for where, message in report_problems(report):
        print(f"  {where}: {message}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
