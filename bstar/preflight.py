"""Pre-flight checks: what a valid config still needs from the machine, checked before any work.

`bstar.config` catches unknown keys, wrong types and bad ranges; it cannot see that a model
directory is missing, that an S3 secret is wrong, or that the code sandbox cannot start. Left
alone, those fail deep inside a run (after the warm-up, or as a scorer error on every item).
`preflight` looks at each of them once, up front, and names the offending field:

    from bstar.preflight import preflight, PreflightError
    preflight(cfg)                  # raises PreflightError listing every problem, or returns None
    problems = check_run(cfg)       # the same checks as a list of Problem(field, message)

Checks, each reported under the config field's dotted path:
- `model.name_or_path`, `reward.prm`, `reward.prm_train.completer`: `tiny`, an existing
  checkpoint directory (`config.json` or `prm_config.json` inside), or a hub id that is in the
  local cache, or (when the hub may be used) that the hub says exists; for the run's model also a
  GGUF source (`package:NAME` installed and shipping a `.gguf`, the file present, `gguf`
  importable) and, with `model.chat_template`, a tokenizer that has a chat template;
- `data.train.path`, `data.test.N.path`: the file exists (local) or is found (fsspec URL);
  `data.*.name` / `loader` / `verifier` resolve; `reward.verifier` is a known verifier;
- the run's verifier can work here (the code verifier's bubblewrap sandbox);
- `training.batch_size` / `warmup.batch_size` / `reward.prm_train.batch_size`: the processes can
  share them (the trainers would refuse them only when their stage starts);
- GPUs (engine `local`): `sampling.backend: vllm` importable and given a GPU, data x tensor
  parallel GPUs and `training.num_processes` / `reward.prm_train.num_processes` (one GPU each)
  within the visible GPUs, `reward.prm_options.device` a CUDA device that exists;
- memory (bstar.models.memory, docs/gpu-memory.md): every training job (rounds, warm-up, PRM
  training) and the sampler's weights fit one GPU: the smallest visible one's size, else
  `training.gpu_memory_gb`, else nothing is refused; the refusal names the setting to change
  (`training.distributed`, `training.gradient_checkpointing`, ...) and what would fit;
- `storage.root`: writable; on S3 the credentials are tried by listing the root and by writing
  and deleting one probe object, with short network timeouts;
- `execution` (engine `ray`): the cluster at `execution.address` is reachable, some node has the
  CPUs/GPUs each stage asks for (`execution.sampling.num_gpus`, ...), and every node has the same
  bstar, reaches the Prefect API and sees the probe object under the lake's root.

Warnings (`check_warnings`, returned and logged by `preflight`, printed by `bstar check`) never
stop a run: the tiny model's learning rates (>= 1e-4) on a model of more than 1B parameters.

The only write is one probe object `{root}/.bstar-preflight-<uuid>`, removed at once.
Messages never contain credentials.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from bstar.config import ConfigError, RunConfig

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CHECKPOINT_FILES = ("config.json", "prm_config.json")
_S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 15, "retries": {"max_attempts": 2}}
_TRUTHY = ("1", "true", "yes", "on")
# directly under the root, not in a folder: some S3 servers keep a folder marker after a delete
_PROBE_PREFIX = ".bstar-preflight-"
# A learning rate this high is the tiny from-scratch model's (training.lr 1e-3, warm-up 2e-3); a
# pretrained model of more than a billion parameters fine-tuned at it forgets what it knew.
TINY_LR = 1e-4
LARGE_MODEL_PARAMS = 1e9

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"  {self.field}: {self.message}"


class PreflightError(ConfigError):
    """The config is valid but cannot run on this machine; lists every problem by dotted path."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("run cannot start:\n" + "\n".join(str(p) for p in self.problems))


def preflight(cfg: RunConfig, *, storage: bool = True, log_warnings: bool = True) -> list[Problem]:
    """Raise PreflightError when any check fails (see the module docstring); else return the
    warnings (`check_warnings`), logged as WARNING lines unless `log_warnings` is false."""
    problems = check_run(cfg, storage=storage)
    if problems:
        raise PreflightError(problems)
    warnings = check_warnings(cfg)
    if log_warnings:
        for w in warnings:
            log.warning("pre-flight: %s: %s", w.field, w.message)
    return warnings


def check_run(cfg: RunConfig, *, storage: bool = True) -> list[Problem]:
    problems: list[Problem] = []
    opts = cfg.storage.storage_options()
    problems += check_policy(cfg.model, opts)
    if cfg.reward.prm:
        problems += check_model("reward.prm", cfg.reward.prm, opts)
    if cfg.reward.prm_train is not None and cfg.reward.prm_train.completer:
        problems += check_model("reward.prm_train.completer", cfg.reward.prm_train.completer, opts)
    problems += check_data(cfg)
    problems += check_verifier(cfg)
    problems += check_batches(cfg)
    problems += check_gpus(cfg)
    problems += check_memory(cfg)
    if storage:
        problems += check_storage(cfg)
    if cfg.execution.engine == "ray" and not problems:
        problems += check_execution(cfg, storage=storage)[0]
    return problems


# --- execution ---------------------------------------------------------------------------------


def check_execution(cfg: RunConfig, *, storage: bool = True) -> tuple[list[Problem], str]:
    """`engine: ray`: the cluster is reachable, some node has what each stage asks for, and every
    node reaches the Prefect API and (with `storage`) the lake: it must find a probe object this
    process writes under the root. Returns (problems, a summary of the cluster for `bstar check`)."""
    from bstar.tasks.shards import cluster_problems

    if cfg.execution.engine != "ray":
        return [], "local: every stage in the flow run's own process"
    probe, fs = None, None
    if storage:
        from bstar.storage.lake import Lake

        lake = Lake(cfg.storage.root, cfg.storage.storage_options())
        probe, fs = f"{lake.root}/{_PROBE_PREFIX}{uuid.uuid4().hex}", lake
        lake.fs.makedirs(lake._p(lake.root), exist_ok=True)
        lake.fs.pipe_file(lake._p(probe), b"ok")
    try:
        found, summary = cluster_problems(cfg, probe_root=probe)
    finally:
        if fs is not None:
            fs.fs.rm_file(fs._p(probe))
    return [Problem(f, m) for f, m in found], summary


# --- models ------------------------------------------------------------------------------------


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id: absolute, relative with ./ ../ ~, or more than one '/'."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name or not _HUB_ID.match(name)


def check_policy(model, storage_options: dict | None = None) -> list[Problem]:
    """The run's own model: a GGUF source (package, file, or directory + `gguf_file`) or a
    checkpoint, and a chat template where `model.chat_template` asks for one."""
    from bstar.models.loading import gguf_source
    from bstar.storage.checkpoints import is_remote

    if is_remote(model.name_or_path):  # a checkpoint published with a lake (e.g. a comparison's start)
        return check_model("model.name_or_path", model.name_or_path, storage_options)

    try:
        gguf = gguf_source(model.name_or_path, model.gguf_file)
    except ValueError as e:
        return [Problem("model.name_or_path", str(e))]
    if gguf is None:
        problems = check_model("model.name_or_path", model.name_or_path)
        local = Path(model.name_or_path).expanduser()
        if not problems and model.chat_template and model.name_or_path == "tiny":
            problems.append(Problem("model.chat_template", "the tiny model has no chat template (set it to false)"))
        elif not problems and model.chat_template and local.is_dir() and not _has_chat_template(local):
            problems.append(Problem("model.chat_template", f"the tokenizer in {model.name_or_path!r} has no chat "
                                    "template (set model.chat_template: false for the plain format)"))
        return problems
    directory, file = gguf
    field = "model.gguf_file" if model.gguf_file else "model.name_or_path"
    try:
        import gguf as _gguf  # noqa: F401  transformers reads GGUF files through it
    except ImportError:
        return [Problem(field, "reading a GGUF checkpoint needs the `gguf` package (pip install gguf)")]
    local = Path(directory).expanduser()
    if local.is_dir() or looks_like_path(directory):
        if not (local / file).is_file():
            return [Problem(field, f"GGUF file {file!r} not found in {directory!r}")]
        return []
    return _check_hub_model(field, directory, files=(file,))


def _has_chat_template(directory: Path) -> bool:
    import json

    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return True
    cfg = directory / "tokenizer_config.json"
    try:
        return bool(cfg.is_file() and json.loads(cfg.read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def check_model(field: str, name: str, storage_options: dict | None = None) -> list[Problem]:
    from bstar.storage.checkpoints import MANIFEST, is_remote, manifest_exists

    if name == "tiny":
        return []
    if is_remote(name):
        try:
            if manifest_exists(name, storage_options):
                return []
            return [Problem(field, f"no checkpoint at {name!r}: it has no {MANIFEST} (never published, or being "
                                   "rewritten)")]
        except Exception as e:  # noqa: BLE001 - credentials, endpoint, network
            return [Problem(field, f"cannot read {name!r}: {type(e).__name__}: {str(e)[:200]}")]
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            return [Problem(field, f"{name!r} is a file, not a checkpoint directory")]
        if not any((local / f).is_file() for f in _CHECKPOINT_FILES):
            return [Problem(field, f"directory {name!r} holds no checkpoint (no {' or '.join(_CHECKPOINT_FILES)})")]
        return []
    if looks_like_path(name):
        return [Problem(field, f"checkpoint directory {name!r} does not exist")]
    return _check_hub_model(field, name)


def _check_hub_model(field: str, repo_id: str, files: tuple[str, ...] = _CHECKPOINT_FILES) -> list[Problem]:
    try:
        from huggingface_hub import file_exists, try_to_load_from_cache
    except ImportError:  # transformers depends on it; without it nothing could load the model anyway
        return [Problem(field, f"{repo_id!r} is neither a local directory nor loadable (huggingface_hub missing)")]
    for f in files:
        cached = try_to_load_from_cache(repo_id, f)
        if isinstance(cached, str):
            return []
    if _hub_offline():
        return [
            Problem(
                field,
                f"{repo_id!r} is not a local directory and not in the hub cache, and HF_HUB_OFFLINE is set "
                "(download it first, or give the checkpoint's path)",
            )
        ]
    try:
        if file_exists(repo_id, files[0]):
            return []
    except Exception as e:  # gated, network down, rate-limited: the run could not load it either
        return [Problem(field, f"cannot check hub model {repo_id!r}: {type(e).__name__}: {str(e)[:200]}")]
    return [Problem(field, f"no local directory {repo_id!r} and no such model ({files[0]}) on the hub")]


# --- data and verifiers ------------------------------------------------------------------------


def check_data(cfg: RunConfig) -> list[Problem]:
    from bstar.datasets import dataset_names
    from bstar.verifiers.registry import resolve

    problems: list[Problem] = []
    specs = [("data.train", cfg.data.train), *[(f"data.test.{i}", d) for i, d in enumerate(cfg.data.test)]]
    for where, ds in specs:
        if ds.loader:
            try:
                resolve(ds.loader)
            except ValueError as e:
                problems.append(Problem(f"{where}.loader", str(e)))
        elif ds.name not in dataset_names():
            problems.append(Problem(f"{where}.name", f"unknown dataset {ds.name!r} (built-ins: {', '.join(dataset_names())}); or give a loader"))
        if ds.path:
            problems += _check_data_file(f"{where}.path", ds.path)
        if ds.verifier:
            problems += _check_verifier_name(f"{where}.verifier", ds.verifier)
    if cfg.reward.verifier:
        problems += _check_verifier_name("reward.verifier", cfg.reward.verifier)
    return problems


def _check_data_file(field: str, path: str) -> list[Problem]:
    if "://" not in path:
        p = Path(path).expanduser()
        if not p.exists():
            return [Problem(field, f"dataset file {path!r} does not exist")]
        if not p.is_file():
            return [Problem(field, f"{path!r} is not a file")]
        if not os.access(p, os.R_OK):
            return [Problem(field, f"dataset file {path!r} is not readable")]
        return []
    try:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        if not fs.exists(p):
            return [Problem(field, f"dataset file {path!r} not found")]
    except Exception as e:
        return [Problem(field, f"cannot reach {path!r}: {type(e).__name__}: {str(e)[:200]}")]
    return []


def _check_verifier_name(field: str, name: str) -> list[Problem]:
    from bstar.verifiers.registry import get_verifier, resolve

    try:
        if ":" in name:
            resolve(name)
        else:
            get_verifier(name)
    except (KeyError, ValueError) as e:
        return [Problem(field, str(e).strip("'\""))]
    return []


def check_verifier(cfg: RunConfig) -> list[Problem]:
    """The run's answer verifier can run here (the code sandbox is the one that may not)."""
    from bstar.tasks.scorers import base_verifier
    from bstar.verifiers.registry import SandboxUnavailable, get_verifier

    name = base_verifier(cfg)
    field = "reward.verifier" if cfg.reward.verifier else "data.train.verifier"
    try:
        spec = get_verifier(name)
    except (KeyError, ValueError):
        return []  # already reported by check_data under the field that named it
    try:
        spec.run_preflight({})
    except SandboxUnavailable as e:
        return [Problem(field, f"verifier {name!r} cannot run here: {e}")]
    except Exception as e:
        return [Problem(field, f"verifier {name!r} pre-flight failed: {type(e).__name__}: {str(e)[:300]}")]
    return []


# --- batches, GPUs and memory ------------------------------------------------------------------


def check_batches(cfg: RunConfig) -> list[Problem]:
    """Global batches that the processes cannot share evenly: the trainer would refuse them
    only when the stage starts (training's micro_batch_size case is already a config error)."""
    t, problems = cfg.training, []
    if t.micro_batch_size is None:
        split = t.grad_accum * t.num_processes
        batches = [("training.batch_size", t.batch_size)]
        if t.warmup.steps:
            batches.append(("training.warmup.batch_size", t.warmup.batch_size))
        for where, batch in batches:
            if batch % split:
                problems.append(Problem(where, f"{batch} is not a multiple of grad_accum x num_processes = "
                                               f"{t.grad_accum} x {t.num_processes} (or set training.micro_batch_size)"))
    pt = cfg.reward.prm_train
    if pt is not None and not cfg.reward.prm:
        if pt.micro_batch_size is not None and pt.batch_size % (pt.micro_batch_size * pt.num_processes):
            problems.append(Problem("reward.prm_train.batch_size", f"{pt.batch_size} is not a multiple of "
                                    f"micro_batch_size x num_processes = {pt.micro_batch_size} x {pt.num_processes}"))
        elif pt.batch_size < pt.num_processes:
            problems.append(Problem("reward.prm_train.batch_size", f"{pt.batch_size} examples cannot be shared by "
                                    f"{pt.num_processes} processes (reward.prm_train.num_processes)"))
    return problems


@dataclass(frozen=True)
class GPU:
    name: str
    total_bytes: int
    bf16: bool


def _nvidia_driver() -> bool:
    """Whether this machine could have an NVIDIA GPU at all: on one without the driver, importing
    torch (seconds) to learn that there is none would slow every `bstar check`."""
    return ("torch" in sys.modules or os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")
            or shutil.which("nvidia-smi") is not None)


@functools.lru_cache(maxsize=1)
def visible_gpus() -> tuple[GPU, ...]:
    """The CUDA GPUs this process sees (after CUDA_VISIBLE_DEVICES); () when none. Asking names and
    sizes creates no CUDA context (no GPU memory is taken: 4 MiB used before and after on an
    H200), though torch then counts CUDA as initialised here, as every in-process GPU stage does;
    the multi-GPU trainers and vLLM's engines start in fresh processes."""
    if not _nvidia_driver():
        return ()
    try:
        import torch

        if not torch.cuda.is_available():
            return ()
        bf16 = torch.cuda.is_bf16_supported()
        return tuple(GPU(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory, bf16)
                     for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - a broken driver or CUDA install: the stages would report it
        return ()


def _vllm_missing() -> str | None:
    """Why the vLLM workers could not start here (their interpreter, `BSTAR_VLLM_PYTHON` or this
    one, cannot import vllm), or None; looked up without importing vllm (seconds, and CUDA)."""
    from bstar.models.vllm_backend import PYTHON_ENV, check_engine_module

    try:
        check_engine_module(os.environ.get(PYTHON_ENV) or sys.executable, "vllm")
    except ImportError as e:
        return str(e)
    return None


def check_gpus(cfg: RunConfig) -> list[Problem]:
    """What the config asks of this machine's GPUs: vLLM installed and a GPU for it, the sampler's
    data x tensor parallel GPUs and the training processes (one GPU each) within the visible GPUs,
    a CUDA PRM device that exists. With `execution.engine: ray` the stages run on the cluster's
    nodes, whose GPUs `check_execution` looks at instead."""
    if cfg.execution.engine != "local":
        return []
    problems: list[Problem] = []
    gpus = visible_gpus()
    s = cfg.sampling
    if s.backend == "vllm":
        missing = _vllm_missing()
        if missing:
            problems.append(Problem("sampling.backend", missing))
        elif not gpus:
            problems.append(Problem("sampling.backend", "vllm needs a CUDA GPU and none is visible here "
                                    "(check the driver and CUDA_VISIBLE_DEVICES)"))
        if gpus and s.data_parallel_size * s.tensor_parallel_size > len(gpus):
            where = "sampling.tensor_parallel_size" if s.tensor_parallel_size > len(gpus) else "sampling.data_parallel_size"
            problems.append(Problem(where, f"data_parallel_size x tensor_parallel_size = {s.data_parallel_size} x "
                                           f"{s.tensor_parallel_size} GPUs but {len(gpus)} are visible"))
    if gpus:  # no GPU: multi-process training runs on the CPU (gloo), which is allowed
        pt = cfg.reward.prm_train if not cfg.reward.prm else None
        for where, n in (("training.num_processes", cfg.training.num_processes),
                         ("reward.prm_train.num_processes", pt.num_processes if pt else 1)):
            if n > len(gpus):
                problems.append(Problem(where, f"{n} processes, one per GPU, but {len(gpus)} GPU(s) are visible"))
    device = cfg.reward.prm_options.device
    if cfg.reward.kind == "answer+prm" and device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
        if not gpus:
            problems.append(Problem("reward.prm_options.device", f"{device!r} but no CUDA GPU is visible here"))
        elif index >= len(gpus):
            problems.append(Problem("reward.prm_options.device", f"{device!r} but {len(gpus)} GPU(s) are visible"))
    return problems


def memory_report(cfg: RunConfig):
    """bstar.models.memory's estimate for this config, against each GPU's size: the smallest
    visible GPU's (local engine), else `training.gpu_memory_gb`, else unknown."""
    from bstar.models.memory import GIB, run_report

    gpus = visible_gpus() if cfg.execution.engine == "local" else ()
    if gpus:
        small = min(gpus, key=lambda g: g.total_bytes)
        return run_report(cfg, gpu_bytes=small.total_bytes, gpu_source=f"{small.name}, visible", cuda=True,
                          bf16_supported=small.bf16)
    gb = cfg.training.gpu_memory_gb
    if gb:
        return run_report(cfg, gpu_bytes=int(gb * GIB), gpu_source="training.gpu_memory_gb")
    return run_report(cfg)


def check_memory(cfg: RunConfig) -> list[Problem]:
    """A training job (the rounds, the warm-up, PRM training) or the sampler that cannot fit one
    GPU: one line naming the setting to change, the numbers, and what would fit."""
    from bstar.models.memory import report_problems

    return [Problem(f, m) for f, m in report_problems(memory_report(cfg))]


def check_warnings(cfg: RunConfig) -> list[Problem]:
    """Settings that run but are very likely wrong: the tiny model's learning rates on a model of
    more than a billion parameters."""
    from bstar.models.memory import ShapeUnavailable, format_params, policy_shape

    try:
        params = policy_shape(cfg.model).parameters()
    except ShapeUnavailable:
        return []
    if params <= LARGE_MODEL_PARAMS:
        return []
    t, pt = cfg.training, cfg.reward.prm_train
    rates = [("training.lr", t.lr, True), ("training.warmup.lr", t.warmup.lr, t.warmup.steps > 0),
             ("reward.prm_train.lr", pt.lr if pt else 0.0, pt is not None and not cfg.reward.prm)]
    return [Problem(where, f"{lr:g} is the tiny model's learning rate, for a {format_params(params)}-parameter model; "
                           "the B-STaR code trains Mistral-7B at 5e-6 (warm-up), 4.12e-6 (rounds) and its PRM at 2e-6")
            for where, lr, used in rates if used and lr >= TINY_LR]


# --- storage -----------------------------------------------------------------------------------


def check_storage(cfg: RunConfig) -> list[Problem]:
    root = cfg.storage.root
    if root.startswith(("s3://", "s3a://")):
        return _check_s3(root, cfg.storage.storage_options())
    return _check_local(root)


def _check_local(root: str) -> list[Problem]:
    base = Path(root).expanduser()
    probe = base / f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        base.mkdir(parents=True, exist_ok=True)  # the run would create it anyway
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        return [Problem("storage.root", f"cannot write under {root!r}: {e.strerror or e}")]
    return []


def _check_s3(root: str, storage_options: dict) -> list[Problem]:
    import s3fs

    from bstar.storage.lake import resolve_storage_options

    options = resolve_storage_options(storage_options)
    options["config_kwargs"] = {**_S3_TIMEOUTS, **(options.get("config_kwargs") or {})}
    secrets = [v for k, v in options.items() if k in ("key", "secret", "token") and v]
    path = root.split("://", 1)[1].strip("/")
    bucket = path.split("/", 1)[0]
    if not bucket:
        return [Problem("storage.root", f"{root!r} names no bucket")]
    probe = f"{path}/{_PROBE_PREFIX}{uuid.uuid4().hex}"
    step = "list"
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        fs.ls(path, refresh=True) if fs.exists(path) else fs.ls(bucket, refresh=True)
        step = "write"
        fs.pipe_file(probe, b"ok")
        step = "delete"
        fs.rm_file(probe)
    except Exception as e:
        return [Problem("storage.root", _s3_message(root, step, e, secrets))]
    return []


def _s3_message(root: str, step: str, err: Exception, secrets: list[str]) -> str:
    if isinstance(err, PermissionError):
        why = "access denied: check the key and secret (storage.key / storage.secret or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    elif isinstance(err, FileNotFoundError):
        why = "no such bucket"
    else:
        why = f"{type(err).__name__}: {str(err)[:300]}"
    for s in secrets:  # an SDK error may quote a signature input; never show a credential
        why = why.replace(str(s), "***")
    action = {"list": "cannot list", "write": "cannot write to", "delete": "cannot delete a probe object in"}[step]
    return f"{action} {root!r}: {why}"
