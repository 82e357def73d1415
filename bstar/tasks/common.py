"""What every stage task shares: the stage decorator (cache key, persisted result, retries),
the run's lake, and the result storage under the run's root.

A stage task is cached on (run_id, iteration, stage, its other inputs, its own source code).
Its small result dict is persisted under `{root}/_prefect/{run_id}/`, so rerunning a failed flow
run (UI Retry, `prefect flow-run retry`, `bstar run --resume RUN_ID`) finds the completed stages
in the cache and skips them; the failed stage and everything after it run again. Stages write
deterministic part names, so a redone stage replaces its own rows and never duplicates them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from bstar import faults, logs
from bstar.config import RunConfig, config_from_json
from bstar.storage.checkpoints import is_remote

# every process that runs stages imports this module (Ray workers too, to unpickle a shard task):
# from here on bstar's log lines reach the Prefect run they are logged in
logs.install()

TRANSIENT_RETRIES = 2
FAULT_ENV = "BSTAR_INJECT_FAULT"  # "<task name>@<iteration>", e.g. "fine-tune@2": for resume tests


CHECK_RELEASE_ENV = "BSTAR_CHECK_RELEASE"  # set: a stage that leaves model weights alive fails


_parameters: dict | None = None  # id -> weak reference, for every torch parameter registered since the first count


def _track(module, name, param) -> None:
    import weakref

    if param is not None and id(param) not in _parameters:
        key = id(param)
        _parameters[key] = weakref.ref(param, lambda _, key=key: _parameters.pop(key, None))


def live_parameters() -> tuple[int, int]:
    """(count, bytes) of the torch parameters registered since this was first called that are
    still alive. Tracked as they are registered on a module (torch's global registration hook),
    so a count costs one garbage collection, not a walk over every object of the process."""
    import gc

    import torch

    global _parameters
    if _parameters is None:
        _parameters = {}
        torch.nn.modules.module.register_module_parameter_registration_hook(_track)
    gc.collect()  # models often hold reference cycles: only what is truly referenced counts
    params = [p for p in (r() for r in list(_parameters.values())) if p is not None]
    return len(params), sum(p.numel() * p.element_size() for p in params)


def check_released(stage_name: str, before: tuple[int, int]) -> None:
    """The stage handed back every model it loaded: no more parameters alive than before it ran
    (the next stage may need the device memory: a vLLM engine checks it is free)."""
    count, size = live_parameters()
    if count > before[0]:
        raise RuntimeError(f"stage {stage_name} left {count - before[0]} model parameters "
                           f"({(size - before[1]) / 2**20:.1f} MiB) alive in this process")


class InjectedFault(RuntimeError):
    """Raised on purpose by a stage named in BSTAR_INJECT_FAULT (tests of resume and retry)."""


def _maybe_inject_fault(name: str, parameters: dict) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    for item in filter(None, (x.strip() for x in spec.split(","))):
        target, _, it = item.partition("@")
        if target == name and (not it or str(parameters.get("iteration", "")) == it):
            raise InjectedFault(f"fault injected into stage {name} (iteration {it or 'any'}) by {FAULT_ENV}")


def stage_cache_key(context, parameters: dict[str, Any]) -> str:
    """(run_id, iteration, stage, inputs, task source) → a stable key. Where a stage runs and
    where its metrics are mirrored (the config's `execution` and `tracking` sections) are not
    inputs: a run resumed on another engine, with its shards on other nodes, or with a tracker
    added, finds the stages it already completed."""
    fn = inspect.unwrap(context.task.fn)
    source = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
    if isinstance(parameters.get("cfg_json"), str):
        parameters = {**parameters, "cfg_json": without_placement(parameters["cfg_json"])}
    inputs = json.dumps(parameters, sort_keys=True, default=str)
    digest = hashlib.sha256(f"{fn.__module__}.{fn.__qualname__}|{source}|{inputs}".encode()).hexdigest()[:24]
    run_id = parameters.get("run_id", "-")
    iteration = parameters.get("iteration", "-")
    return f"{run_id}-it{iteration}-{fn.__name__}-{digest}"


PLACEMENT_SECTIONS = ("execution", "tracking")  # where work runs and reports, not what it computes


def without_placement(cfg_json: str) -> str:
    """A run config's JSON without its `execution` and `tracking` sections (as a config of before
    it had them), so neither changes a stage's cache key."""
    raw = json.loads(cfg_json)
    if not isinstance(raw, dict) or not any(k in raw for k in PLACEMENT_SECTIONS):
        return cfg_json
    for k in PLACEMENT_SECTIONS:
        raw.pop(k, None)
    return json.dumps(raw, separators=(",", ":"))


def retry_transient(task, task_run, state) -> bool:
    """Retry only what may pass on a second try; bad config or bad data fails at once."""
    try:
        state.result()
    except (InjectedFault, ValueError, TypeError, KeyError, FileNotFoundError, PermissionError, NotImplementedError):
        return False
    except Exception:  # noqa: BLE001 - OOM, connection resets, storage hiccups
        return True
    return False


def stage_task(fn: Callable | None = None, *, name: str | None = None, tags: tuple[str, ...] = ()):
    """Declare a pipeline stage: cached by `stage_cache_key`, result persisted, transient retries."""
    from prefect import task

    def wrap(f: Callable):
        stage_name = name or f.__name__.replace("_", "-")

        @functools.wraps(f)
        def run(*args, **kwargs):
            bound = inspect.signature(f).bind(*args, **kwargs).arguments
            _maybe_inject_fault(stage_name, bound)
            before = live_parameters() if os.environ.get(CHECK_RELEASE_ENV) else None
            with faults.stage(stage_name, bound):  # BSTAR_KILL_AT crash points (tests only)
                result = f(*args, **kwargs)
            if before is not None:
                check_released(stage_name, before)
            return result

        return task(
            run,
            name=stage_name,
            cache_key_fn=stage_cache_key,
            persist_result=True,
            retries=TRANSIENT_RETRIES,
            retry_delay_seconds=2,
            retry_condition_fn=retry_transient,
            tags=list(tags),
        )

    return wrap(fn) if fn is not None else wrap


@lru_cache(maxsize=8)
def load_cfg(cfg_json: str) -> RunConfig:
    return config_from_json(cfg_json)


def lake_of(cfg: RunConfig):
    from bstar.storage.lake import Lake

    return Lake(cfg.storage.root, cfg.storage.storage_options())


def result_storage(cfg: RunConfig, run_id: str):
    """Where stage results (and so the resume cache) live: under the run's own root.

    Local roots are plain paths. An S3 root becomes a saved `RemoteFileSystem` block (Prefect
    requires result storage to be saved server-side) that holds only the endpoint: s3fs takes
    the credentials from the environment, so they never reach Prefect's database.
    """
    root = cfg.storage.root
    if not is_remote(root):
        return Path(os.path.abspath(root)) / "_prefect" / run_id
    from prefect.filesystems import RemoteFileSystem

    basepath = f"{root.rstrip('/')}/_prefect/{run_id}"
    settings = {"client_kwargs": {"endpoint_url": cfg.storage.endpoint_url}} if cfg.storage.endpoint_url else {}
    name = "bstar-results-" + hashlib.sha256(basepath.encode()).hexdigest()[:16]
    RemoteFileSystem(basepath=basepath, settings=settings).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def checkpoint_dir(cfg: RunConfig, run_id: str, name: str) -> str:
    """The local directory a stage saves checkpoint `name` into: next to the lake when it is local,
    else a local work directory from which `publish_checkpoint` uploads it."""
    root = cfg.storage.root
    if is_remote(root):
        base = os.environ.get("BSTAR_CHECKPOINT_DIR", os.path.expanduser("~/.cache/bstar/checkpoints"))
    else:
        base = os.path.join(os.path.abspath(root), "_checkpoints")
    return os.path.join(base, run_id, name)


def checkpoint_location(cfg: RunConfig, run_id: str, name: str) -> str:
    """Where every machine finds checkpoint `name`: `{root}/_checkpoints/{run_id}/{name}` in the
    lake's object store for a remote root, the local directory for a local one."""
    root = cfg.storage.root
    if is_remote(root):
        return f"{root.rstrip('/')}/_checkpoints/{run_id}/{name}"
    return checkpoint_dir(cfg, run_id, name)


def publish_checkpoint(cfg: RunConfig, local: str, location: str) -> str:
    """Make the checkpoint saved in `local` readable at `location` (upload, manifest last, for an
    object-store URL; nothing for a local path); returns what the `checkpoints` table stores."""
    if not is_remote(location):
        return local
    from bstar.storage.checkpoints import publish_checkpoint as publish

    return publish(local, location, cfg.storage.storage_options())


def local_checkpoint(cfg: RunConfig, path: str) -> str:
    """A checkpoint `path` as a local directory a model loader takes: an object-store URL is
    downloaded once into this machine's cache; local paths and hub ids pass through."""
    if not is_remote(path):
        return path
    from bstar.storage.checkpoints import fetch_checkpoint

    return fetch_checkpoint(path, cfg.storage.storage_options())


def chunk_part(base: str, chunk: int) -> str:
    """The part holding chunk `chunk` of a stage's output named `base` (`part-round-t0.8-c00002`)."""
    return f"{base}-c{chunk:05d}"


def chunk_parts_re(base: str) -> re.Pattern:
    """Part names of one chunked output: `base-cNNNNN`, `base-sNNN-cNNNNN` (one shard's chunks),
    or `base` alone as older lakes wrote it. A stage that rewrites its output prunes the matches
    it did not write this time."""
    return re.compile(rf"^{re.escape(base)}(?:-s\d{{3}})?(?:-c\d{{5}})?$")
