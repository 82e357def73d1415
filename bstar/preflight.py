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
- `storage.root`: writable; on S3 the credentials are tried by listing the root and by writing
  and deleting one probe object, with short network timeouts;
- `execution` (engine `ray`): the cluster at `execution.address` is reachable, some node has the
  CPUs/GPUs each stage asks for (`execution.sampling.num_gpus`, ...), and every node has the same
  bstar, reaches the Prefect API and sees the probe object under the lake's root.

The only write is one probe object `{root}/.bstar-preflight-<uuid>`, removed at once.
Messages never contain credentials.
"""

from __future__ import annotations

import os
import re
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


def preflight(cfg: RunConfig, *, storage: bool = True) -> None:
    """Raise PreflightError when any check fails (see the module docstring)."""
    problems = check_run(cfg, storage=storage)
    if problems:
        raise PreflightError(problems)


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
