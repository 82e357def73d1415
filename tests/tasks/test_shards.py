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
