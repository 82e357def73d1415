"""Stages sharded over a real two-node Ray cluster, checkpoints in the lake's object store.

Everything on the loopback: a SeaweedFS S3 server (the only thing the nodes share), two Ray nodes
(`tests/ray_cluster.py`, one CPU each, their own HOME and checkpoint cache, token authentication
on), Prefect's test server. A run with `execution.engine: ray, shards: 2` must give the lake that
the same config and seeds give in one local process, row for row; a driver with a wrong token or
none gets one line naming what to set; a run served by `bstar serve --gpu-slots 1` completes.
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
def ray_driver(cluster, monkeypatch):
    """This process drives the module's cluster: its token in the environment (token auth is on)."""
    cluster.as_driver(monkeypatch)


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


@pytest.mark.slow  # ~125 s; the Ray path stays in the default suite through the S3 resume and pre-flight tests
def test_sharded_on_two_ray_nodes_equals_one_local_process(prefect_harness, s3, cluster, ray_driver, driver_env):
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


def test_bad_execution_settings_fail_before_any_work(s3, cluster, ray_driver, driver_env, tmp_path):
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

    # the check left the run's connection open: a worker runs torch on this process's thread count,
    # not on the one thread Ray gives a 1-CPU task (OMP_NUM_THREADS=1), so shards sample what a local run does
    import ray

    from bstar.tasks.shards import torch_threads

    @ray.remote(num_cpus=1)
    def worker_threads() -> tuple[str, int]:
        import torch

        from bstar.models.loading import set_cpu_threads

        set_cpu_threads()  # what the CPU sampler does first
        return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()

    assert ray.get(worker_threads.remote(), timeout=120) == ("1", torch_threads())


def test_a_cluster_that_refuses_the_token_is_one_line_naming_what_to_set(cluster, tmp_path):
    """`bstar check` with a wrong token file, then with no token at all: one line each, at once
    (`ray.init` alone would retry for 20 s and say only that it could not connect)."""
    import subprocess

    from tests.prefect_server import BIN
    from tests.ray_cluster import AUTH_VARS

    wrong = tmp_path / "token"
    wrong.write_text("0" * 64)
    base = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    how = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, the path of a file holding it) to "
           "the token the cluster's nodes were started with")
    expected = {
        "wrong": f"the Ray cluster at {cluster.address} refused the token in RAY_AUTH_TOKEN_PATH's file {wrong} "
                 f"(not the cluster's token); {how}",
        "none": f"the Ray cluster at {cluster.address} refused this process: it requires a token (token "
                f"authentication) and RAY_AUTH_MODE is not `token` here, so none was sent; {how}",
    }
    for case, env in (("wrong", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}), ("none", {})):
        t0 = time.monotonic()
        out = subprocess.run([str(BIN / "bstar"), "check", str(SMOKE), "--set", "execution.engine=ray", "--set",
                              f"execution.address={cluster.address}"], env={**base, **env}, capture_output=True,
                             text=True, timeout=180, cwd=tmp_path)
        lines = [line for line in out.stderr.splitlines() if "execution." in line]
        assert out.returncode != 0 and lines == [f"  execution.address: {expected[case]}"], (case, out.stderr[-3000:])
        print(f"{case} token: refused in {time.monotonic() - t0:.1f} s (bstar check, start to exit)")


# -- served through a real Prefect server under `bstar serve --gpu-slots 1` -----------------------
# (two local shards under one slot: tests/flows/test_ui.py, whose served form run has them)

SERVED_TIMEOUT = 600
# the smallest run that still nests every stage: warm-up, start evaluation, one round
SERVED_ROUND = [*ONE_ROUND, "data.train.limit=60", "data.test=[{name: arith, split: test, limit: 12, max_ops: 2, hi: 20}]",
                "training.warmup.steps=20", "training.max_steps=2", "selection.queries_per_round=16",
                "search.queries=8"]


@pytest.fixture(scope="module")
def served(prefect_harness, cluster, tmp_path_factory):
    """`bstar serve` (its default `--gpu-slots 1`) against the session's Prefect server, with the Ray
    cluster's token in its environment; the `gpu` limit it makes is removed at the end."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from tests.prefect_server import Serve, server_env

    env = server_env(tmp_path_factory.mktemp("serve-home"), PREFECT_API_URL=PREFECT_API_URL.value(),
                     **cluster.driver_env())
    serve = Serve({"env": env, "logs": tmp_path_factory.mktemp("serve-logs")})
    serve.start()
    try:
        with get_client(sync_client=True) as client:
            yield {"client": client, "serve": serve, "root": tmp_path_factory.mktemp("served-lake")}
    finally:
        alive = serve.stop_all()
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag("gpu")
        assert not alive, f"bstar serve processes survived: {alive}"


def _served_run(served, run_id: str, *extra: str) -> tuple:
    """Run `bstar-run` on the smoke config through the served deployment; (flow run, seconds)."""
    from prefect.deployments import run_deployment

    from tests.prefect_server import wait_final

    t0 = time.monotonic()
    fr = run_deployment(name="bstar-run/bstar-run", timeout=0, parameters={
        "config": "deployments/configs/smoke.yaml", "run_id": run_id,
        "overrides": [f"storage.root={served['root']}", *SERVED_ROUND, *extra]})
    fr = wait_final(served["client"], fr.id, served["serve"].log, SERVED_TIMEOUT)
    return fr, time.monotonic() - t0


def _holds_gpu(task_runs) -> dict[str, set[bool]]:
    """Task name -> whether its runs carry the `gpu` tag (a set: every run of a task the same)."""
    out: dict[str, set[bool]] = {}
    for t in task_runs:
        out.setdefault(t.name.rsplit("-", 1)[0], set()).add("gpu" in t.tags)
    return out


@pytest.mark.slow
def test_served_ray_shards_under_one_gpu_slot_complete(served, cluster):
    """`bstar serve --gpu-slots 1`, two shards on the two-node cluster (token auth on): no shard,
    warm-up or fine-tune waits for the serving machine's slot (before, `warm-up` held it while
    `warm-up-on-node` waited); Ray places them."""
    from tests.prefect_server import log_tail

    fr, seconds = _served_run(served, "served-ray", "execution.engine=ray", f"execution.address={cluster.address}",
                              "execution.shards=2")
    print(f"served run, Ray engine, 2 shards on 2 nodes: {fr.state.name} in {seconds:.0f} s")
    assert fr.state.is_completed(), f"{fr.state}:\n{log_tail(served['serve'].log)}"
    runs = _shard_runs("served-ray")
    gpu = _holds_gpu(runs)
    for name in ("sample-shard", "score-shard", "warm-up-on-node", "fine-tune-on-node", "sample-candidates",
                 "warm-up"):
        assert gpu[name] == {False}, (name, gpu)
    shard_runs = [t for t in runs if t.name.startswith(("sample-shard", "warm-up-on-node", "fine-tune-on-node"))]
    assert len(shard_runs) == 12 + 2 and all(t.state.is_completed() for t in shard_runs)


@pytest.mark.slow
def test_a_node_lost_mid_stage_costs_its_shard_only(prefect_harness, s3, driver_env, tmp_path, monkeypatch):
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
        c.as_driver(monkeypatch)
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
