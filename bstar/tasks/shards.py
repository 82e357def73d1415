"""The one shard abstraction of every sharded stage: split, run each shard as a task, gather.

    bounds = shard_bounds(len(query_ids), cfg.execution.shards)      # [(lo, hi), ...] contiguous
    results = run_shards(cfg, sample_shard, [dict(..., shard=i, shards=len(bounds)) ...], "sampling")

A sharded stage is a coordinator task (`sample-candidates`, `score-candidates`, ...) that cuts its
work into deterministic shards and hands each to a shard task (`sample-shard`, `score-shard`,
...). Each shard task writes its own deterministic parts and returns a small dict; the
coordinator merges them and prunes what an earlier run with another sharding left behind.

Where shards run is `execution.engine`:
- `local`: one shard runs inside the coordinator's own task run (exactly the unsharded stage);
  several run one after another in this process, each a cached task run of its own;
- `ray`: every shard is a Prefect task run executed on the Ray cluster through prefect-ray's
  `RayTaskRunner`, inside a sub-flow `bstar-shards` named after the stage, with the stage's
  resources (`execution.sampling` / `scoring` / `training`) as Ray's `num_cpus` / `num_gpus`.
  The Prefect UI shows each shard with its own state, retries and logs. A finished shard is in
  Prefect's cache (the run's result storage), so rerunning the stage redoes only the shards that
  did not finish; a shard whose node dies is retried by Ray on a live node.

Nothing here schedules, queues or talks to workers: Ray places and retries, Prefect records and
caches.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bstar.config import RunConfig

log = logging.getLogger(__name__)

# forwarded to every Ray worker of a run: where the Prefect API is (shard task runs report there
# and read the run's result storage) and the lake's object-store credentials
FORWARDED_ENV = ("PREFECT_API_URL", "PREFECT_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "HF_HUB_OFFLINE", "BSTAR_INJECT_FAULT", "PREFECT_TASKS_REFRESH_CACHE")


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """`shards` contiguous, balanced [lo, hi) ranges over n items (fewer when n < shards; one
    empty range when n == 0, so an empty stage still runs once and records that it ran)."""
    count = max(1, min(shards, n))
    return [(i * n // count, (i + 1) * n // count) for i in range(count)]


def shard_name(base: str, shard: int, shards: int) -> str:
    """The part-name stem of one shard's output: `base` itself when unsharded (a lake written
    before sharding, or with `shards: 1`, has the same names), else `base-sNNN`."""
    return base if shards == 1 else f"{base}-s{shard:03d}"


def run_shards(cfg: RunConfig, shard_task, calls: list[dict[str, Any]], resources: str) -> list[dict]:
    """Run `shard_task(**call)` for every call, on the configured engine; results in call order.

    `resources`: which of `execution.sampling` / `scoring` / `training` the shards ask for."""
    from prefect.context import FlowRunContext, TaskRunContext

    if cfg.execution.engine == "ray":
        return _run_on_ray(cfg, shard_task, calls, resources)
    if len(calls) == 1 and (TaskRunContext.get() is not None or FlowRunContext.get() is None):
        # a single local shard of a stage task is the stage itself: no task run of its own, as
        # before sharding (and outside any flow, e.g. a stage's `.fn` called by a test, plain code)
        return [shard_task.fn(**calls[0])]
    return [shard_task(**call) for call in calls]


def ray_init_kwargs(cfg: RunConfig) -> dict:
    """`ray.init` arguments of a run: its namespace, and the environment every worker needs."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    s = cfg.storage
    # credentials given in the config (not only in the environment) reach the workers the same way
    if s.key is not None:
        env["AWS_ACCESS_KEY_ID"] = s.key.get_secret_value()
    if s.secret is not None:
        env["AWS_SECRET_ACCESS_KEY"] = s.secret.get_secret_value()
    url = prefect_api_url()
    if url:
        env["PREFECT_API_URL"] = url
    return {"namespace": "bstar", "runtime_env": {"env_vars": env}, "log_to_driver": True,
            "configure_logging": False}


def prefect_api_url() -> str | None:
    """The Prefect API this process reports to: PREFECT_API_URL, or the temporary server `bstar
    run` starts without one (so shards report to the run's own server instead of each worker
    starting a server of its own)."""
    try:
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return PREFECT_API_URL.value()
        from prefect.client.orchestration import get_client
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:  # outside a run there is no temporary server to name
            return None

        with get_client(sync_client=True) as client:
            return str(client.api_url).rstrip("/") or None
    except Exception:  # noqa: BLE001 - no Prefect here: the workers use their own settings
        return None


def connect_ray(cfg: RunConfig):
    """This process's connection to the run's Ray cluster (kept for the process: every sharded
    stage of the run reuses it)."""
    import ray

    global _connected
    kwargs = ray_init_kwargs(cfg)
    # the cluster, and the environment its workers get (the Prefect API is known only inside a run)
    wanted = (cfg.execution.address, tuple(sorted(kwargs["runtime_env"]["env_vars"].items())))
    if ray.is_initialized() and _connected != wanted:
        ray.shutdown()  # another cluster, or workers that must report elsewhere: connect again
    if not ray.is_initialized():
        address = cfg.execution.address
        ray.init(address=address, **kwargs) if address else ray.init(**kwargs)
        _connected = wanted
    return ray


_connected: tuple | None = None


def _run_on_ray(cfg: RunConfig, shard_task, calls: list[dict], resources: str) -> list[dict]:
    from prefect import flow
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    from bstar.tasks.common import result_storage

    connect_ray(cfg)  # RayTaskRunner reuses an initialized connection
    ask = getattr(cfg.execution, resources)
    run_id = calls[0].get("run_id", "run")
    task = shard_task.with_options(result_storage=result_storage(cfg, run_id))
    stage = calls[0].get("stage") or shard_task.name
    iteration = calls[0].get("iteration", 0)
    log.info("%s %s (round %s): %d shard(s) on Ray, each asking for %g CPU(s), %g GPU(s)", shard_task.name, stage,
             iteration, len(calls), ask.num_cpus, ask.num_gpus)

    @flow(name="bstar-shards", flow_run_name=f"{run_id}-it{iteration}-{shard_task.name}-{stage}",
          task_runner=RayTaskRunner(address=cfg.execution.address, init_kwargs=ray_init_kwargs(cfg)),
          validate_parameters=False)
    def shards_flow() -> list[dict]:
        # Ray retries a shard whose worker or node died (max_retries); Prefect's own retries
        # (the stage task's) cover errors raised by the shard
        with remote_options(num_cpus=ask.num_cpus, num_gpus=ask.num_gpus, max_retries=3):
            futures = [task.submit(**call) for call in calls]
        return [f.result() for f in futures]

    return shards_flow()


# -- what `bstar check` and every run's pre-flight ask of the cluster ----------------------------

RESOURCE_FIELDS = ("sampling", "scoring", "training")


def _tcp_reachable(address: str, timeout: float = 5.0) -> str | None:
    """None when HOST:PORT accepts a connection, else why not (skipped for `auto` / `ray://`)."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def cluster_problems(cfg: RunConfig, *, probe_root: str | None = None) -> tuple[list[tuple[str, str]], str]:
    """(problems as (field, message), a one-line summary of the cluster) for `engine: ray`.

    Connects to the cluster (the connection is kept for the run), checks that some node has the
    resources each stage asks for, and runs a probe on every node: the same bstar version is
    installed, the Prefect API answers (when one is set: a run without PREFECT_API_URL starts a
    temporary server, which the flow run's own pre-flight then probes), and the lake's object
    store is reachable (it reads the object `probe_root` names, written by the caller)."""
    address = cfg.execution.address
    where = address or "a Ray instance started on this machine"
    why = _tcp_reachable(address) if address else None
    if why:
        return [("execution.address", f"cannot reach the Ray cluster at {address!r}: {why}")], ""
    try:
        ray = connect_ray(cfg)
    except Exception as e:  # noqa: BLE001 - ConnectionError, timeouts, version mismatch
        return [("execution.address", f"cannot connect to the Ray cluster at {where}: {type(e).__name__}: "
                                      f"{str(e)[:300]}")], ""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    problems = []
    for stage in RESOURCE_FIELDS:
        ask = getattr(cfg.execution, stage)
        for key, name in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
            want = getattr(ask, key)
            most = max((n["Resources"].get(name, 0.0) for n in nodes), default=0.0)
            if want > most:
                problems.append((f"execution.{stage}.{key}",
                                 f"asks for {want:g} {name}(s) but no node of the cluster has that many "
                                 f"({len(nodes)} node(s); at most {most:g} {name}(s) on one node)"))
    problems += [("execution.address", p) for p in _probe_nodes(cfg, nodes, probe_root)]
    return problems, cluster_summary(cfg)


def cluster_summary(cfg: RunConfig) -> str:
    """The connected cluster in one line (nodes, CPUs, GPUs, shards)."""
    ray = connect_ray(cfg)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    where = cfg.execution.address or "a Ray instance started on this machine"
    return (f"ray at {where}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU(s), "
            f"{total.get('GPU', 0):g} GPU(s); {cfg.execution.shards} shard(s) per sharded stage")


def _probe_nodes(cfg: RunConfig, nodes: list[dict], probe_root: str | None) -> list[str]:
    """What each node cannot reach, as messages naming the node (empty when every node can)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import bstar

    api = ray_init_kwargs(cfg)["runtime_env"]["env_vars"].get("PREFECT_API_URL")
    probe = ray.remote(num_cpus=0, max_retries=0)(_node_probe)
    refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]: probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
        bstar.__version__, api, probe_root, cfg.storage.storage_options() if probe_root else None)
        for n in nodes}
    out = []
    for node, ref in refs.items():
        try:
            out += [f"node {node}: {m}" for m in ray.get(ref, timeout=120)]
        except Exception as e:  # noqa: BLE001 - the node died, or its worker cannot start
            out.append(f"node {node}: the probe did not run: {type(e).__name__}: {str(e)[:200]}")
    return out


def _node_probe(version: str, api_url: str | None, probe_root: str | None, storage_options: dict | None) -> list[str]:
    """Runs on one node: what it lacks to run shards of this run."""
    problems = []
    try:
        import bstar

        if bstar.__version__ != version:
            problems.append(f"bstar {bstar.__version__} is installed, the run uses {version}")
    except ImportError:
        return ["bstar is not installed in the Python environment Ray's workers use"]
    if api_url:
        import urllib.request

        try:
            urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=10).read()
        except Exception as e:  # noqa: BLE001
            problems.append(f"cannot reach the Prefect API at {api_url}: {type(e).__name__}: {e}")
    if probe_root:
        from bstar.storage.lake import Lake

        try:
            lake = Lake(probe_root.rsplit("/", 1)[0], storage_options)
            if not lake.fs.exists(lake._p(probe_root)):
                problems.append(f"the lake's storage is not the driver's: {probe_root} is not visible here")
        except Exception as e:  # noqa: BLE001 - credentials, endpoint, network
            problems.append(f"cannot reach the lake {probe_root.rsplit('/', 1)[0]}: {type(e).__name__}: {str(e)[:200]}")
    return problems
