"""Benchmark: the demo's round-1 training sampling in 1, 2 and 4 shards, locally and on a
two-node Ray cluster.

    .venv/bin/python benchmarks/bench_shards.py                  # the table (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_shards.py --queries 600 --shards 1 2

Set-up, not timed: a SeaweedFS S3 server and a two-node Ray cluster on the loopback
(`tests/s3server.py`, `tests/ray_cluster.py`: one CPU per node, each node its own HOME and
checkpoint cache), Prefect's test server, the demo's base config (deployments/configs/demo.yaml)
with its lake on S3, the run recorded and its initial tiny policy built and published to the
object store. The policy is not warmed up (`--warmup-steps` trains it first): sampling costs per
generated token, and an untrained policy writes to the token cap as often as a trained one.

Timed: `sample_candidates` of round 1's subset (3,000 queries x K = 4, 48 new tokens, t = 0.8)
once per setting, with Prefect's task cache refreshed, in the order printed. Local runs use
this process (torch on both cores); Ray shards ask for one CPU each (Ray gives each worker one
torch thread), so `ray` with 1 shard uses one node and with 2 shards both.

Printed per setting: the stage's wall seconds; its shard task runs' durations as Prefect
recorded them (min-max) and their sum; overhead = wall - sum / P, with P = 1 locally (shards run
one after another) and min(shards, nodes) on Ray (sub-flow, Ray submission, Prefect's records,
result return); candidates per second. Before the Ray settings, each node's first task (worker start,
the policy's download into its cache, torch import and model load) is timed once and printed on
its own. Last: the
speed-up of 2 Ray nodes over 1 (ray x2 vs ray x1), and every figure as JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"  # every setting samples again (workers get it too)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _shard_durations(since: float) -> list[float]:
    """Run times of the `sample-shard` task runs that started after `since` (Prefect's records)."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="sample-shard")),
                                     limit=200)
    return [r.total_run_time.total_seconds() for r in runs
            if r.start_time and r.start_time.timestamp() >= since and r.state and r.state.is_completed()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=None, help="round-1 queries (default: the demo's 3,000)")
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from bstar import code_version
    from bstar.config import load_compare_config
    from bstar.tasks.data import record_run
    from bstar.tasks.sampling import sample_candidates
    from bstar.tasks.shards import connect_ray
    from bstar.tasks.training import warm_up
    from tests.ray_cluster import RayCluster
    from tests.s3server import S3Server

    with S3Server(bucket="bench-shards") as s3, RayCluster(nodes=2, cpus=1) as cluster, \
            prefect_test_harness(server_startup_timeout=180):
        os.environ.update(AWS_ACCESS_KEY_ID=s3.key, AWS_SECRET_ACCESS_KEY=s3.secret)
        cluster.as_driver()  # the cluster's token (token authentication is on)
        work = Path(cluster.node_home(0)).parent / "driver"
        os.environ.update(BSTAR_CHECKPOINT_DIR=str(work / "checkpoints"), BSTAR_CHECKPOINT_CACHE=str(work / "cache"))
        base = load_compare_config(str(REPO / "deployments/configs/demo.yaml")).base
        base.storage.root, base.storage.endpoint_url = f"s3://{s3.bucket}/lake", s3.endpoint
        base.training.warmup.steps = args.warmup_steps
        if args.queries:
            base.selection.queries_per_round = args.queries
        run_id = "bench-shards"
        record_run.fn(run_id, base.to_json(), code_version())
        policy = warm_up.fn(run_id, base.to_json())["policy"]
        t, k = base.sampling.temperature, base.sampling.k

        def setting(engine: str, shards: int):
            cfg = base.model_copy(deep=True)
            cfg.execution.engine, cfg.execution.shards = engine, shards
            if engine == "ray":
                cfg.execution.address = cluster.address
            return cfg

        @flow(name="bench-shards")
        def one(cfg_json: str) -> dict:
            return sample_candidates(run_id, 1, "train", "round", policy, [t], k, cfg_json)

        rows = []
        for engine in ("local", "ray"):
            if engine == "ray":
                rows.append(_prime_nodes(connect_ray(setting("ray", 2)), policy, base))
            for shards in args.shards:
                cfg = setting(engine, shards)
                since = time.time()
                t0 = time.perf_counter()
                out = one(cfg.to_json())
                wall = time.perf_counter() - t0
                durations = _shard_durations(since) if (engine == "ray" or shards > 1) else [wall]
                # local shards run one after another; Ray runs one shard per node at a time
                parallel = 1 if engine == "local" else min(shards, cluster.nodes)
                rows.append({"setting": f"{engine} x{shards}", "wall_s": round(wall, 1),
                             "shard_s": [round(min(durations), 1), round(max(durations), 1)] if durations else None,
                             "shard_sum_s": round(sum(durations), 1),
                             "overhead_s": round(wall - sum(durations) / parallel, 1) if durations else None,
                             "candidates": out["candidates"],
                             "candidates_per_s": round(out["candidates"] / wall, 1)})
                print(json.dumps(rows[-1]), flush=True)

    _print_table(rows)
    if args.json:
        print(json.dumps(rows, indent=1))


def _prime_nodes(ray, policy: str, cfg) -> dict:
    """Each node's first task: a worker process starts, downloads the policy into its cache and
    loads it (torch imported); later shards reuse the worker."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def first_task(url: str, options: dict) -> float:
        t0 = time.perf_counter()
        from bstar.storage.checkpoints import fetch_checkpoint

        local = fetch_checkpoint(url, options)
        fetched = time.perf_counter() - t0
        from bstar.models.loading import load_policy  # what a shard does next: torch, the weights

        load_policy(local, device="cpu")
        return fetched

    remote = ray.remote(num_cpus=1)(first_task)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    t0 = time.perf_counter()
    fetch = ray.get([remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                     .remote(policy, cfg.storage.storage_options()) for n in nodes])
    row = {"setting": "ray: first task per node", "wall_s": round(time.perf_counter() - t0, 1),
           "checkpoint_fetch_s": [round(f, 2) for f in fetch]}
    print(json.dumps(row), flush=True)
    return row


def _print_table(rows: list[dict]) -> None:
    print("\n| setting | wall s | shard task s (min-max, sum) | overhead s | candidates/s |")
    print("|---|---|---|---|---|")
    by = {r["setting"]: r for r in rows}
    for r in rows:
        if "checkpoint_fetch_s" in r:
            print(f"| {r['setting']} | {r['wall_s']} | policy download {r['checkpoint_fetch_s']} s | | |")
            continue
        span = ("-".join(str(x) for x in r["shard_s"]) + f", {r['shard_sum_s']}") if r["shard_s"] else ""
        print(f"| {r['setting']} | {r['wall_s']} | {span} | {r['overhead_s']} | {r['candidates_per_s']} |")
    if "ray x1" in by and "ray x2" in by:
        print(f"\nspeed-up of 2 Ray nodes over 1 (ray x2 vs ray x1): {by['ray x1']['wall_s'] / by['ray x2']['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
