import os

import polars as pl
import pytest

from bstar.storage.lake import Lake, resolve_storage_options
from bstar.storage.schemas import TABLES, SchemaError, spec

from lake_samples import SAMPLE, STAGES, candidates_rows


def _stage(table):
    return STAGES.get(table) or spec(table).default_stage


@pytest.mark.parametrize("table", sorted(TABLES))
def test_round_trip_every_table(lake, table):
    rows = SAMPLE[table]()
    path = lake.write(table, rows, run_id="r1", iteration=2, stage=_stage(table))
    assert path.endswith(f"/{table}/run_id=r1/iteration=2/stage={_stage(table)}/part-00000.parquet")
    assert os.path.isfile(path)
    df = lake.read(table)
    assert df.columns == TABLES[table].full_schema.names
    assert df.height == len(rows)
    assert set(df["run_id"]) == {"r1"} and set(df["iteration"]) == {2} and set(df["stage"]) == {_stage(table)}
    got = df.drop("run_id", "iteration", "stage").to_dicts()
    if table == "runs":
        assert got[0]["created_at"] == rows[0]["created_at"]
    assert got == rows if table != "runs" else got[0]["config"] == rows[0]["config"]


def test_rerun_replaces_its_part(lake):
    lake.write("candidates", candidates_rows(tag=" first"), "r1", 1, "train")
    lake.write("candidates", candidates_rows(tag=" second"), "r1", 1, "train")
    df = lake.read("candidates", run_id="r1", iteration=1, stage="train")
    assert df.height == 12
    assert df["response"].str.ends_with(" second").all()
    assert lake.duplicate_keys("candidates").height == 0
    assert len(lake.parts("candidates")) == 1


def test_partition_filters_and_parts(lake):
    for it in (0, 1):
        for stage in ("search", "train"):
            lake.write("candidates", candidates_rows(), "r1", it, stage)
    lake.write("candidates", candidates_rows(), "r2", 0, "train")
    assert lake.read("candidates").height == 5 * 12
    assert lake.read("candidates", run_id="r1").height == 4 * 12
    assert lake.read("candidates", run_id="r1", iteration=1, stage="search").height == 12
    assert lake.read("candidates", stage="train")["run_id"].unique().sort().to_list() == ["r1", "r2"]
    assert lake.exists("candidates", "r2", 0, "train")
    assert lake.exists("candidates", "r2", 0, "train", part="part-00000")
    assert not lake.exists("candidates", "r2", 1, "train")
    assert lake.read("candidates", run_id="nope").height == 0


def test_scorer_parts_coexist(lake):
    lake.write("rewards", SAMPLE["rewards"](), "r1", 0, "train", part="part-arith")
    lake.write("rewards", SAMPLE["rewards"](scorer="prm"), "r1", 0, "train", part="part-prm")
    df = lake.read("rewards")
    assert df.group_by("scorer").len().sort("scorer").to_dicts() == [{"scorer": "arith", "len": 12}, {"scorer": "prm", "len": 12}]


def test_temp_files_never_read(lake):
    lake.write("candidates", candidates_rows(), "r1", 0, "train")
    d = lake.partition_dir("candidates", "r1", 0, "train")
    # a crashed writer's leftover: a valid parquet file under a temp name
    with open(os.path.join(d, "part-00000.parquet"), "rb") as f:
        data = f.read()
    with open(os.path.join(d, ".tmp-part-00001-dead.parquet"), "wb") as f:
        f.write(data)
    with open(os.path.join(d, "part-00002.parquet.tmp"), "wb") as f:
        f.write(b"garbage")
    assert lake.parts("candidates") == [os.path.join(d, "part-00000.parquet")]
    assert lake.read("candidates").height == 12
    from bstar.storage.catalog import connect

    assert connect(lake.root).execute("SELECT count(*) FROM candidates").fetchall() == [(12,)]


def test_failed_write_leaves_nothing(lake, monkeypatch):
    import bstar.storage.lake as lake_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(lake_mod.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        lake.write("candidates", candidates_rows(), "r1", 0, "train")
    d = lake.partition_dir("candidates", "r1", 0, "train")
    assert os.listdir(d) == []


def test_validation_error_leaves_old_part(lake):
    lake.write("candidates", candidates_rows(), "r1", 0, "train")
    bad = candidates_rows()
    bad[0]["temperature"] = None
    with pytest.raises(SchemaError, match=r"candidates\.temperature"):
        lake.write("candidates", bad, "r1", 0, "train")
    assert lake.read("candidates").height == 12


def test_delete_partition(lake):
    lake.write("rewards", SAMPLE["rewards"](), "r1", 0, "train", part="part-arith")
    lake.write("rewards", SAMPLE["rewards"](scorer="prm"), "r1", 0, "train", part="part-prm")
    lake.write("rewards", SAMPLE["rewards"](), "r1", 1, "train", part="part-arith")
    assert lake.delete_partition("rewards", "r1", 0, "train") == 2
    assert lake.read("rewards")["iteration"].unique().to_list() == [1]


def test_stage_required_and_part_names(lake):
    with pytest.raises(SchemaError, match="candidates: stage is required"):
        lake.write("candidates", candidates_rows(), "r1", 0)
    with pytest.raises(SchemaError, match="part name"):
        lake.write("candidates", candidates_rows(), "r1", 0, "train", part="../evil")
    # tables with a fixed stage default to it
    assert "/stage=run/" in lake.write("runs", SAMPLE["runs"](), "r1")


def test_empty_write_creates_empty_part(lake):
    lake.write("candidates", [], "r1", 0, "train")
    assert lake.read("candidates").height == 0
    assert lake.exists("candidates", "r1", 0, "train")


def test_million_rows_vectorised_write_is_fast(lake):
    import time

    import numpy as np

    n = 200_000
    df = pl.DataFrame({
        "query_id": pl.Series(np.arange(n) // 8).cast(pl.String),
        "sample_idx": np.arange(n) % 8,
        "temperature": np.full(n, 0.7),
        "policy": ["ckpt"] * n,
        "response": ["A: 12+34=46; 46-7=39. so the answer is #### 39"] * n,
    })
    t0 = time.perf_counter()
    lake.write("candidates", df, "r1", 0, "train")
    assert time.perf_counter() - t0 < 2.0
    assert lake.read("candidates", columns=["query_id"]).height == n


def test_storage_options_from_env_and_args(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    o = resolve_storage_options(None)
    assert o == {"key": "envkey", "secret": "envsecret", "endpoint_url": "http://127.0.0.1:1", "client_kwargs": {"region_name": "eu-west-1"}}
    o = resolve_storage_options({"key": "k", "secret": "s", "endpoint_url": "http://x", "region": "us-east-1"})
    assert o["key"] == "k" and o["secret"] == "s" and o["endpoint_url"] == "http://x"
    assert o["client_kwargs"] == {"region_name": "us-east-1"}


def test_repr_hides_credentials():
    lake = Lake("s3://b/p", {"key": "AKIDSECRETKEY", "secret": "verysecretvalue", "endpoint_url": "http://127.0.0.1:1"})
    assert "verysecretvalue" not in repr(lake) and "AKIDSECRETKEY" not in repr(lake)
    assert repr(lake) == "Lake(root='s3://b/p', endpoint_url='http://127.0.0.1:1')"
