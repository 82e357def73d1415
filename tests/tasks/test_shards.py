"""The shard abstraction, locally: deterministic bounds and names, sharded stages writing the rows
an unsharded stage writes, reruns with another sharding leaving no extra rows, and the stage
cache not depending on where stages run. (On a real Ray cluster: tests/flows/test_scale_out.py.)"""

from __future__ import annotations

import polars as pl

from bstar import code_version
from bstar.config import parse_config
from bstar.models.tiny import build_tiny_policy
from bstar.storage.lake import Lake
from bstar.tasks.common import chunk_parts_re, stage_cache_key
from bstar.tasks.data import record_run
from bstar.tasks.sampling import sample_candidates
from bstar.tasks.scoring import score_candidates
from bstar.tasks.shards import shard_bounds, shard_name

RUN = "shards"


def test_bounds_are_contiguous_balanced_and_cover_everything():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]  # never an empty shard beside full ones
    assert shard_bounds(0, 4) == [(0, 0)]  # an empty stage still runs once
    assert shard_bounds(7, 1) == [(0, 7)]
    for n in range(0, 40):
        for s in range(1, 9):
            b = shard_bounds(n, s)
            assert b[0][0] == 0 and b[-1][1] == n and all(x[1] == y[0] for x, y in zip(b, b[1:]))
            assert max(hi - lo for lo, hi in b) - min(hi - lo for lo, hi in b) <= 1


def test_shard_part_names_are_pruned_with_the_stage():
    assert shard_name("part-round-t0.8", 0, 1) == "part-round-t0.8"
    assert shard_name("part-round-t0.8", 2, 4) == "part-round-t0.8-s002"
    pattern = chunk_parts_re("part-round-t0.8")
    for name in ("part-round-t0.8", "part-round-t0.8-c00003", "part-round-t0.8-s002-c00003"):
        assert pattern.match(name), name
    for name in ("part-round-t0.85-c00000", "part-round-t0.8-s2-c00000", "part-round-t0.8-x"):
        assert not pattern.match(name), name


def config(root, shards: int, chunk_rows: int = 10_000, engine: str = "local") -> str:
    return parse_config({
        "model": {"name_or_path": "tiny", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        "data": {"train": {"name": "arith", "split": "train", "limit": 40, "max_ops": 2},
                 "test": [{"name": "arith", "split": "test", "limit": 4, "max_ops": 2}]},
        "sampling": {"k": 3, "max_new_tokens": 16, "batch_size": 64},
        "search": {"queries": 20},
        "storage": {"root": str(root), "chunk_rows": chunk_rows},
        "execution": {"engine": engine, "shards": shards},
    }).to_json()


def rows(root, table: str) -> pl.DataFrame:
    frame = Lake(str(root)).read(table, RUN, 1, "search").drop("run_id", "iteration", "stage")
    return frame.sort(frame.columns)


def test_sharded_stages_write_the_rows_of_one_shard(tmp_path):
    policy = str(build_tiny_policy(tmp_path / "policy", hidden=32, layers=1, heads=2, seed=0))
    out = {}
    for name, shards, chunk in [("one", 1, 10_000), ("three", 3, 10_000), ("three-chunked", 3, 7)]:
        cfg_json = config(tmp_path / name, shards, chunk)
        record_run.fn(RUN, cfg_json, code_version())
        out[name] = (sample_candidates.fn(RUN, 1, "search", "search", policy, [0.7, 1.1], 3, cfg_json),
                     score_candidates.fn(RUN, 1, "search", "arith", cfg_json))
    for name in ("three", "three-chunked"):
        assert rows(tmp_path / name, "candidates").equals(rows(tmp_path / "one", "candidates")), name
        assert rows(tmp_path / name, "rewards").equals(rows(tmp_path / "one", "rewards")), name
    sampled, scored = out["three"]
    assert sampled["candidates"] == 20 * 3 * 2 and sampled["shards"] == 3 and scored["shards"] == 3
    assert scored["scored"] == out["one"][1]["scored"] == 120
    assert scored["correct"] == out["one"][1]["correct"]
    lake = Lake(str(tmp_path / "three"))
    # 20 queries in shards of 7, 7, 6; one part per (temperature, shard)
    assert lake.part_names("candidates", RUN, 1, "search") == [
        f"part-search-t{t}-s00{s}-c00000" for t in ("0.7", "1.1") for s in range(3)]
    assert sorted(lake.read("candidates", RUN, 1, "search").group_by("query_id").len()["len"].unique()) == [6]
    # scoring shards take contiguous groups of the stage's six candidate parts
    assert lake.part_names("rewards", RUN, 1, "search") == [f"part-arith-s00{s}-c0000{c}" for s in range(3)
                                                            for c in range(2)]
    # the same lake redone unsharded: the shard parts are replaced, not added to
    cfg_json = config(tmp_path / "three", 1)
    sample_candidates.fn(RUN, 1, "search", "search", policy, [0.7, 1.1], 3, cfg_json)
    score_candidates.fn(RUN, 1, "search", "arith", cfg_json)
    assert lake.part_names("candidates", RUN, 1, "search") == ["part-search-t0.7-c00000", "part-search-t1.1-c00000"]
    assert lake.part_names("rewards", RUN, 1, "search") == ["part-arith-c00000", "part-arith-c00001"]
    assert rows(tmp_path / "three", "rewards").equals(rows(tmp_path / "one", "rewards"))


def test_where_stages_run_is_not_part_of_the_cache_key(tmp_path):
    class Context:
        class task:
            fn = staticmethod(sample_candidates.fn)

    def key(cfg_json):
        return stage_cache_key(Context, {"run_id": RUN, "iteration": 1, "cfg_json": cfg_json})

    local, ray = config(tmp_path, 1), config(tmp_path, 8, engine="ray")
    assert local != ray and key(local) == key(ray)
    assert key(local) != key(config(tmp_path, 1, chunk_rows=5))  # what a stage computes still counts


def test_only_the_work_that_runs_a_model_carries_the_gpu_tag():
    from bstar.tasks.prm import annotate_chunk, evaluate_prm, train_prm_stage
    from bstar.tasks.sampling import sample_shard
    from bstar.tasks.scoring import score_shard
    from bstar.tasks.shards import on_device
    from bstar.tasks.training import (
        fine_tune,
        fine_tune_on_node,
        warm_up,
        warm_up_on_node,
    )

    # a coordinator waits for its shards: with the slot it would wait for itself under --gpu-slots 1
    for coordinator in (sample_candidates, score_candidates, warm_up, fine_tune):
        assert coordinator.tags == set(), coordinator.name
    for leaf in (sample_shard, warm_up_on_node, fine_tune_on_node, annotate_chunk, train_prm_stage, evaluate_prm):
        assert leaf.tags == {"gpu"}, leaf.name
    # scoring holds the device only when it runs a PRM
    assert score_shard.tags == set() and on_device(score_shard, False).tags == set()
    prm = on_device(score_shard, True)
    assert prm.tags == {"gpu"} and prm.name == "score-shard" and prm.fn is score_shard.fn


def test_prm_scoring_on_ray_asks_a_gpu_only_where_the_cluster_has_one():
    from bstar.tasks.sampling import sample_shard
    from bstar.tasks.scoring import score_shard
    from bstar.tasks.shards import on_device, ray_ask

    cfg = parse_config({"execution": {"engine": "ray", "scoring": {"num_cpus": 2}}})
    prm, answer = on_device(score_shard, True), score_shard
    assert ray_ask(cfg, "scoring", prm, most_gpus=8) == (2.0, 1.0)
    assert ray_ask(cfg, "scoring", prm, most_gpus=0) == (2.0, 0.0)  # a CPU-only cluster scores on CPUs
    assert ray_ask(cfg, "scoring", answer, most_gpus=8) == (2.0, 0.0)  # verifiers never ask for one
    assert ray_ask(cfg, "sampling", sample_shard, most_gpus=8) == (1.0, 0.0)  # other stages: as configured
    given = parse_config({"execution": {"engine": "ray", "scoring": {"num_gpus": 0.5}}})
    assert ray_ask(given, "scoring", prm, most_gpus=8) == (1.0, 0.5)


def test_ray_workers_get_the_flow_runs_torch_thread_count(monkeypatch):
    import os

    from bstar.tasks.shards import ray_init_kwargs

    cfg = parse_config({"execution": {"engine": "ray"}})

    def forwarded() -> str:
        return ray_init_kwargs(cfg)["runtime_env"]["env_vars"]["BSTAR_TORCH_THREADS"]

    monkeypatch.delenv("BSTAR_TORCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert forwarded() == str(os.cpu_count())  # what the local sampler uses: every core
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert forwarded() == "3"
    monkeypatch.setenv("BSTAR_TORCH_THREADS", "5")
    assert forwarded() == "5"


def test_a_token_ray_cannot_read_is_named_before_ray_is_asked(tmp_path, monkeypatch):
    from bstar.tasks.shards import ray_auth_problem

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    assert ray_auth_problem("127.0.0.2:1") == (
        f"the Ray cluster at 127.0.0.2:1: RAY_AUTH_TOKEN_PATH names a file this process cannot read "
        f"({tmp_path / 'none'}: No such file or directory); set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
        "RAY_AUTH_TOKEN_PATH, the path of a file holding it) to the token the cluster's nodes were started with")
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "empty"))
    assert "RAY_AUTH_TOKEN_PATH names an empty file" in ray_auth_problem("127.0.0.2:1")
    assert ray_auth_problem("auto") is None and ray_auth_problem("ray://head:10001") is None
