"""The sampling stage in chunks: the same candidates as one chunk (per-sample seeds), one part per
chunk, and a rerun with another chunk size leaves no extra rows."""

from __future__ import annotations

import polars as pl

from bstar import code_version
from bstar.config import parse_config
from bstar.models.tiny import build_tiny_policy
from bstar.storage.lake import Lake
from bstar.tasks.data import record_run
from bstar.tasks.sampling import sample_candidates

RUN = "chunks"


def config(root, chunk_rows: int) -> str:
    return parse_config({
        "model": {"name_or_path": "tiny", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        "data": {"train": {"name": "arith", "split": "train", "limit": 40, "max_ops": 2},
                 "test": [{"name": "arith", "split": "test", "limit": 4, "max_ops": 2}]},
        "sampling": {"k": 3, "max_new_tokens": 16, "batch_size": 64},
        "search": {"queries": 20},
        "storage": {"root": str(root), "chunk_rows": chunk_rows},
    }).to_json()


def candidates(root) -> pl.DataFrame:
    return Lake(str(root)).read("candidates", RUN, 1, "search").drop("run_id", "iteration", "stage").sort(
        "query_id", "sample_idx")


def test_chunked_sampling_writes_the_same_candidates(tmp_path):
    policy = str(build_tiny_policy(tmp_path / "policy", hidden=32, layers=1, heads=2, seed=0))
    out = {}
    for name, rows in [("one", 10_000), ("chunked", 7)]:
        cfg_json = config(tmp_path / name, rows)
        record_run.fn(RUN, cfg_json, code_version())
        out[name] = sample_candidates.fn(RUN, 1, "search", "search", policy, [0.7, 1.1], 3, cfg_json)
    assert out["one"]["candidates"] == out["chunked"]["candidates"] == 20 * 3 * 2
    one, chunked = candidates(tmp_path / "one"), candidates(tmp_path / "chunked")
    assert one.equals(chunked)
    # 7 rows a chunk at k=3: 2 queries per part, 10 parts per temperature
    parts = [p.rsplit("/", 1)[1] for p in Lake(str(tmp_path / "chunked")).parts("candidates")]
    assert len(parts) == 20 and "part-search-t0.7-c00009.parquet" in parts
    assert len(Lake(str(tmp_path / "one")).parts("candidates")) == 2
    # rerun in one chunk: the ten small parts of each temperature are replaced, not added to
    sample_candidates.fn(RUN, 1, "search", "search", policy, [0.7, 1.1], 3, config(tmp_path / "chunked", 10_000))
    assert len(Lake(str(tmp_path / "chunked")).parts("candidates")) == 2
    assert candidates(tmp_path / "chunked").equals(one)
