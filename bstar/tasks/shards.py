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

The `gpu` slot (`bstar serve --gpu-slots N` makes a concurrency limit for the tag `gpu`) is held
only by the work that runs a model in this process: shard tasks carry the tag, coordinators do
not, because Prefect holds a task's tag slot for the task run's whole life and a coordinator
holding the only slot would wait forever for its own shard. A single shard run inline holds the
slots of the shard task's tags itself (`hold_tag_slots`); on Ray the shards leave the tag behind,
since the devices they use are the nodes', and Ray's `num_gpus` is their queue.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any

from bstar.config import RunConfig

log = logging.getLogger(__name__)

# forwarded to every Ray worker of a run: where the Prefect API is (shard task runs report there
# and read the run's result storage) and the lake's object-store credentials
FORWARDED_ENV = ("PREFECT_API_URL", "PREFECT_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "HF_HUB_OFFLINE", "BSTAR_INJECT_FAULT", "PREFECT_TASKS_REFRESH_CACHE")

GPU_TAG = "gpu"  # the tag whose concurrency limit `bstar serve --gpu-slots N` sets
THREADS_ENV = "BSTAR_TORCH_THREADS"  # torch's CPU threads in every stage (see `torch_threads`)


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
        with hold_tag_slots(shard_task):
            return [shard_task.fn(**calls[0])]
    return [shard_task(**call) for call in calls]


@contextmanager
def hold_tag_slots(task):
    """Hold the concurrency slots of `task`'s tags (the `gpu` slot) in the task run this process is
    in, as a task run of `task` would: a shard run inline in its coordinator's task run, which
    carries no `gpu` tag, still holds the device while it runs the model. Outside a task run
    (plain code, a test calling `.fn`) there is no Prefect API to ask, and nothing is held."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is None or not task.tags:
        yield
        return
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency._sync import concurrency

    # what Prefect's task engine does for a task run's tags, with its own `concurrency` (quiet
    # when the tag has no limit, e.g. a run without `bstar serve`: then nothing is held)
    with concurrency([f"tag:{t}" for t in sorted(task.tags)], occupy=1, lease_duration=60, suppress_warnings=True,
                     holder=ConcurrencyLeaseHolder(type="task_run", id=ctx.task_run.id)):
        yield


def uses_device(task) -> bool:
    """Whether task runs of `task` run a model (they carry the `gpu` tag)."""
    return GPU_TAG in (task.tags or ())


def on_device(task, device: bool = True):
    """`task` with the `gpu` tag when `device` (its runs load a model: PRM scoring), without it
    otherwise (answer-only scoring never waits for the device)."""
    tags = set(task.tags or ()) - {GPU_TAG}
    return with_tags(task, tags | {GPU_TAG} if device else tags)


def with_tags(task, tags: set[str]):
    """A copy of `task` with exactly `tags` (`with_options(tags=[])` would keep the old ones)."""
    copy = task.with_options()
    copy.tags = set(tags)
    return copy


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
    env[THREADS_ENV] = str(torch_threads())
    return {"namespace": "bstar", "runtime_env": {"env_vars": env}, "log_to_driver": True,
            "configure_logging": False}


def torch_threads() -> int:
    """The CPU threads a stage of this process runs torch on, by the rule of
    `bstar.models.loading.set_cpu_threads`: BSTAR_TORCH_THREADS, else OMP_NUM_THREADS, else every
    core of this machine.

    The flow run hands this count to every Ray worker as BSTAR_TORCH_THREADS. On CPU a matrix
    product split over another number of threads sums in another order; the last bits differ and,
    rarely, a sampled token flips. A Ray worker would otherwise run on the CPUs its shard asked
    for (Ray sets OMP_NUM_THREADS to `num_cpus`), the local run on every core: with the count
    handed over, a sharded run samples what the local run on this machine samples."""
    for var in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


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

    ray = connect_ray(cfg)  # RayTaskRunner reuses an initialized connection
    num_cpus, num_gpus = ray_ask(cfg, resources, shard_task, _most_gpus_on_a_node(ray))
    run_id = calls[0].get("run_id", "run")
    # the `gpu` slot is this machine's device: shards on the cluster queue for theirs through Ray
    task = with_tags(shard_task.with_options(result_storage=result_storage(cfg, run_id)),
                     set(shard_task.tags or ()) - {GPU_TAG})
    stage = calls[0].get("stage") or shard_task.name
    iteration = calls[0].get("iteration", 0)
    log.info("%s %s (round %s): %d shard(s) on Ray, each asking for %g CPU(s), %g GPU(s)", shard_task.name, stage,
             iteration, len(calls), num_cpus, num_gpus)

    @flow(name="bstar-shards", flow_run_name=f"{run_id}-it{iteration}-{shard_task.name}-{stage}",
          task_runner=RayTaskRunner(address=cfg.execution.address, init_kwargs=ray_init_kwargs(cfg)),
          validate_parameters=False)
    def shards_flow() -> list[dict]:
        # Ray retries a shard whose worker or node died (max_retries); Prefect's own retries
        # (the stage task's) cover errors raised by the shard
        with remote_options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=3):
            futures = [task.submit(**call) for call in calls]
        return [f.result() for f in futures]

    return shards_flow()


def ray_ask(cfg: RunConfig, resources: str, shard_task, most_gpus: float) -> tuple[float, float]:
    """(num_cpus, num_gpus) one shard of `shard_task` asks of a Ray node: `execution.<resources>`,
    except that PRM scoring (a scoring shard that runs a model) left at `num_gpus: 0` asks for
    one GPU on a cluster where some node has one (`most_gpus`, the most GPUs on one node). A
    cluster without GPUs, or whose nodes were started with `--num-gpus 0`, scores on CPUs; a
    `num_gpus` above 0 is taken as given."""
    ask = getattr(cfg.execution, resources)
    if resources == "scoring" and uses_device(shard_task) and ask.num_gpus == 0 and most_gpus >= 1:
        return ask.num_cpus, 1.0
    return ask.num_cpus, ask.num_gpus


def _most_gpus_on_a_node(ray) -> float:
    """The most GPUs one live node of the connected cluster has (0 on a CPU-only cluster)."""
    return max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)


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

    Connects to the cluster (the connection is kept for the run; a cluster that refuses this
    process's token is one line naming what to set, `ray_auth_problem`), checks that some node
    has the resources each stage asks for, and runs a probe on every node: the same bstar version is
    installed, the Prefect API answers (when one is set: a run without PREFECT_API_URL starts a
    temporary server, which the flow run's own pre-flight then probes), and the lake's object
    store is reachable (it reads the object `probe_root` names, written by the caller)."""
    address = cfg.execution.address
    where = address or "a Ray instance started on this machine"
    why = _tcp_reachable(address) if address else None
    if why:
        return [("execution.address", f"cannot reach the Ray cluster at {address!r}: {why}")], ""
    refused = ray_auth_problem(address)
    if refused:
        return [("execution.address", refused)], ""
    try:
        ray = connect_ray(cfg)
    except Exception as e:  # noqa: BLE001 - ConnectionError, timeouts, version mismatch
        from ray.exceptions import AuthenticationError

        if isinstance(e, AuthenticationError):  # `auto` and `ray://` addresses are not probed first
            return [("execution.address", token_advice(where))], ""
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


AUTH_HOW = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, the path of a file holding it) "
            "to the token the cluster's nodes were started with")


def ray_auth_problem(address: str | None) -> str | None:
    """One line naming what to set when the Ray cluster at HOST:PORT refuses this process (token
    authentication on, the token missing or wrong), else None.

    It asks the cluster's GCS once, which answers at once: `ray.init` retries for about 20 s and
    then reports only that it could not connect. Not for `auto` / `ray://` addresses, nor once
    this process is connected (the connection kept for the run already got in)."""
    import ray

    if not address or address == "auto" or "://" in address or ray.is_initialized():
        return None
    missing = _token_missing()
    if missing:
        return f"the Ray cluster at {address}: {missing}; {AUTH_HOW}"
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        GcsClient(address=address)
    except AuthenticationError:
        return token_advice(address)
    except Exception:  # noqa: BLE001 - not a refused token: `ray.init` reports what it is
        return None
    return None


def _token_missing() -> str | None:
    """Why this process has no token to send though RAY_AUTH_MODE=token asks for one, else None.
    Checked here because Ray, given a RAY_AUTH_TOKEN_PATH it cannot read, aborts the process."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "token" or os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return None
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        try:
            with open(path) as f:
                return None if f.read().strip() else f"RAY_AUTH_TOKEN_PATH names an empty file ({path})"
        except OSError as e:
            return f"RAY_AUTH_TOKEN_PATH names a file this process cannot read ({path}: {e.strerror})"
    if not os.path.isfile(os.path.expanduser("~/.ray/auth_token")):
        return "RAY_AUTH_MODE=token, but neither RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH nor ~/.ray/auth_token gives a token"
    return None


def token_advice(where: str) -> str:
    """The one line for a cluster that refused this process's token (or its lack of one)."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "token":
        return (f"the Ray cluster at {where} refused this process: it requires a token (token authentication) "
                f"and RAY_AUTH_MODE is not `token` here, so none was sent; {AUTH_HOW}")
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        source = "in RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip():
        source = f"in RAY_AUTH_TOKEN_PATH's file {os.environ['RAY_AUTH_TOKEN_PATH'].strip()}"
    else:
        source = "in ~/.ray/auth_token"
    return f"the Ray cluster at {where} refused the token {source} (not the cluster's token); {AUTH_HOW}"


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
