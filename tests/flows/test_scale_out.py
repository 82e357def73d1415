"""Stages sharded over a real two-node Ray cluster, checkpoints in the lake's object store.

Everything on the loopback: a SeaweedFS S3 server (the only thing the nodes share), two Ray nodes
(`tests/ray_cluster.py`, one CPU each, their own HOME and checkpoint cache), Prefect's test
server. A run with `execution.engine: ray, shards: 2` must give the lake that the same config and
seeds give in one local process, row for row.
"""

from __future__ import annotations

import os
import time

import polars as pl
import pytest

from bstar.storage.lake import Lake
from tests.flows.conftest import SMOKE

pytestmark = pytest.mark.timeout(900)

# one round, small enough to run twice (the reference and the sharded run)
ONE_ROUND = ["iterations=1", "data.train.limit=120", "training.warmup.steps=40", "training.max_steps=4",
             "data.test=[{name: arith, split: test, limit: 30, max_ops: 2, hi: 20}]",
             "selection.queries_per_round=40", "search.queries=16", "search.thresholds=[-0.5, 0.0, 0.5]",
             "eval.k=2", "eval.ks=[1, 2]", "eval.ss=[1]"]
COMPARED = {"queries": ["query_id", "split"], "candidates": ["iteration", "stage", "query_id", "sample_idx"],
            "rewards": ["iteration", "stage", "scorer", "query_id", "sample_idx"],
            "search": ["iteration", "temperature", "threshold"], "selections": ["iteration", "query_id", "sample_idx"],
            "metrics": ["iteration", "stage", "split", "name", "k", "s"]}


@pytest.fixture(scope="module")
def s3():
    from tests.s3server import S3Server, WeedNotFound, find_weed

    try:
        find_weed()
    except WeedNotFound as e:
        pytest.skip(str(e))
    with S3Server(bucket="bstar-scale") as server:
        yield server


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("prefect_ray")
    from tests.ray_cluster import RayCluster

    with RayCluster(nodes=2, cpus=1) as c:
        yield c


@pytest.fixture
def driver_env(s3, tmp_path, monkeypatch):
    """The flow run's machine: the S3 credentials in the environment, its own checkpoint dirs."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    monkeypatch.setenv("BSTAR_CHECKPOINT_DIR", str(tmp_path / "driver-checkpoints"))
    monkeypatch.setenv("BSTAR_CHECKPOINT_CACHE", str(tmp_path / "driver-cache"))
    yield
    import ray

    ray.shutdown()  # the run's driver connection (kept for the process while a run uses it)


def _run(s3, run_id: str, *extra: str) -> dict:
    from bstar.flows.run import bstar_run

    return bstar_run(config=str(SMOKE), run_id=run_id, overrides=[
        f"storage.root=s3://{s3.bucket}/lake", f"storage.endpoint_url={s3.endpoint}", *ONE_ROUND, *extra])


def _rows(lake: Lake, run_id: str, table: str) -> pl.DataFrame:
    # `policy` names the checkpoint, whose URL holds the run id: compare everything else
    frame = lake.read(table, run_id).drop("run_id", "policy", strict=False)
    return frame.sort(COMPARED[table])


def _assert_same_lake(lake: Lake, ref: str, got: str) -> None:
    for table, key in COMPARED.items():
        a, b = _rows(lake, ref, table), _rows(lake, got, table)
        assert a.height > 0, f"the reference run has no {table} rows"
        dup = b.group_by(key).len().filter(pl.col("len") > 1)
        assert dup.is_empty(), f"duplicate {table} keys:\n{dup}"
        assert a.equals(b), f"{table} differs between the local and the sharded run"


def _shard_runs(flow_prefix: str) -> list:
    """Prefect task runs of the shard tasks of one run (by their sub-flow's name)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        flows = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=flow_prefix)),
                                      limit=200)
        flows = [f for f in flows if f.name.startswith(flow_prefix)]
        runs = []
        for f in flows:
            runs += [t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [f.id]}), limit=200)]
        return runs


def test_sharded_on_two_ray_nodes_equals_one_local_process(prefect_harness, s3, cluster, driver_env):
    lake = Lake(f"s3://{s3.bucket}/lake", s3.storage_options)
    local = _run(s3, "scale-local")
    ray_run = _run(s3, "scale-ray", "execution.engine=ray", f"execution.address={cluster.address}",
                   "execution.shards=2")
    _assert_same_lake(lake, "scale-local", "scale-ray")

    # checkpoints live with the lake: the table stores object-store URLs, each with its manifest
    ckpts = lake.read("checkpoints", "scale-ray")
    assert ckpts["path"].str.starts_with(f"s3://{s3.bucket}/lake/_checkpoints/scale-ray/").all()
    assert ray_run["policy"] == f"s3://{s3.bucket}/lake/_checkpoints/scale-ray/iter-1"
    assert local["policy"] == f"s3://{s3.bucket}/lake/_checkpoints/scale-local/iter-1"
    # both nodes sampled from the policy: each downloaded the checkpoints it needed from S3 alone
    for i in range(2):
        entries = [p for p in cluster.cache(i).glob("*") if (p / "MANIFEST.json").is_file()]
        assert entries, f"node {i} loaded no checkpoint from the object store"

    # every shard is a Prefect task run of its own, completed; training ran as one task on a node
    shards = _shard_runs("scale-ray-it")
    names = sorted({t.name.rsplit("-", 1)[0] for t in shards})
    assert names == ["fine-tune-on-node", "sample-shard", "score-shard", "warm-up-on-node"], names
    assert sum(t.name.startswith(("warm-up-on-node", "fine-tune-on-node")) for t in shards) == 2
    # sampling: greedy + eval at the start, search + round + greedy + eval in round 1; 2 shards each
    assert sum(t.name.startswith("sample-shard") for t in shards) == 12
    assert all(t.state.is_completed() for t in shards)

    # the sharded parts: each shard wrote its own, and no unsharded part is left beside them
    parts = lake.part_names("candidates", "scale-ray", 1, "train")
    assert len(parts) == 2 and [p.rsplit("-", 2)[1:] for p in parts] == [["s000", "c00000"], ["s001", "c00000"]], parts


def test_bad_execution_settings_fail_before_any_work(s3, cluster, driver_env, tmp_path):
    from bstar.config import load_config
    from bstar.preflight import check_run

    def fields(*overrides):
        cfg = load_config(str(SMOKE), [f"storage.root={tmp_path / 'lake'}", *overrides])
        return {p.field: p.message for p in check_run(cfg)}

    unreachable = fields("execution.engine=ray", "execution.address=127.0.0.2:1")
    assert list(unreachable) == ["execution.address"]
    assert "cannot reach the Ray cluster at '127.0.0.2:1'" in unreachable["execution.address"]
    gpus = fields("execution.engine=ray", f"execution.address={cluster.address}", "execution.sampling.num_gpus=1")
    assert gpus == {"execution.sampling.num_gpus":
                    "asks for 1 GPU(s) but no node of the cluster has that many (2 node(s); at most 0 GPU(s) on one node)"}
    from bstar.config import ConfigError

    with pytest.raises(ConfigError, match=r"execution\.shards: Input should be greater than 0"):
        load_config(str(SMOKE), ["execution.shards=0"])
    assert not (tmp_path / "lake" / "candidates").exists()  # nothing ran


@pytest.mark.slow
def test_a_node_lost_mid_stage_costs_its_shard_only(prefect_harness, s3, driver_env, tmp_path):
    """SIGKILL the second node as the first part of round 1's training sampling lands: Ray retries
    the shard on the live node, the run completes without --resume, and its lake equals the
    uninterrupted run with no duplicate key."""
    import contextvars
    import threading

    import ray

    from tests.ray_cluster import RayCluster

    small_parts = ["storage.chunk_rows=16"]  # 4 queries a part: a shard is still running when one lands
    lake = Lake(f"s3://{s3.bucket}/lake", s3.storage_options)
    _run(s3, "kill-ref", *small_parts)
    with RayCluster(nodes=2, cpus=1) as c:
        result: dict = {}

        def run():
            try:
                result["out"] = _run(s3, "kill-ray", "execution.engine=ray", f"execution.address={c.address}",
                                     "execution.shards=2", *small_parts)
            except BaseException as e:  # noqa: BLE001 - reported below
                result["error"] = e

        worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
        worker.start()
        deadline, victim = time.monotonic() + 600, None
        while time.monotonic() < deadline and worker.is_alive() and victim is None:
            if lake.exists("candidates", "kill-ray", 1, "train"):
                # the node this process's driver is not attached to
                mine = ray.get_runtime_context().get_node_id()
                for n in ray.nodes():
                    if n["Alive"] and n["NodeID"] != mine:
                        victim = next(i for i in range(2) if str(c.node_home(i)) in n["ObjectStoreSocketName"])
                c.kill_node(victim)
            time.sleep(0.2)
        assert victim is not None, "the training sampling never started on the cluster"
        worker.join(timeout=900)
        assert not worker.is_alive(), "the run did not finish after the node was lost"
        assert "error" not in result, f"the run failed after losing a node: {result.get('error')!r}"
        assert not c.running_processes(victim), "the lost node's processes still run"
        _assert_same_lake(lake, "kill-ref", "kill-ray")
        shards = _shard_runs("kill-ray-it1-sample-shard-train")
        # still one Prefect task run per shard (Ray's retry runs the same task run again), all completed
        assert len(shards) == 2 and all(t.state.is_completed() for t in shards), shards


def test_a_second_machine_resumes_an_s3_run_from_the_object_store_alone(prefect_harness, s3, tmp_path,
                                                                        monkeypatch):
    """Machine A runs until round 1's fine-tune fails, and is gone with its disks; machine B, with
    empty checkpoint directories, resumes the run: the fine-tune starts from the warm-up checkpoint it
    downloads from the object store, and the run completes (local engine)."""
    import shutil

    from bstar.tasks.common import InjectedFault

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)

    def machine(name: str):
        monkeypatch.setenv("BSTAR_CHECKPOINT_DIR", str(tmp_path / name / "checkpoints"))
        monkeypatch.setenv("BSTAR_CHECKPOINT_CACHE", str(tmp_path / name / "cache"))

    machine("a")
    monkeypatch.setenv("BSTAR_INJECT_FAULT", "fine-tune@1")
    with pytest.raises(InjectedFault):
        _run(s3, "scale-resume")
    shutil.rmtree(tmp_path / "a")
    monkeypatch.delenv("BSTAR_INJECT_FAULT")
    machine("b")
    out = _run(s3, "scale-resume")
    lake = Lake(f"s3://{s3.bucket}/lake", s3.storage_options)
    url = f"s3://{s3.bucket}/lake/_checkpoints/scale-resume"
    assert out["policy"] == f"{url}/iter-1"
    assert sorted(lake.read("checkpoints", "scale-resume")["path"].to_list()) == [f"{url}/iter-1", f"{url}/warmup"]
    # B downloaded the warm-up checkpoint (it started the fine-tune from it) and never saw A's disk
    fetched = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "b" / "cache").iterdir() if not p.name.startswith("."))
    assert "warmup" in fetched and "iter-1" in fetched
    assert lake.read("metrics", "scale-resume", 1).height > 0
