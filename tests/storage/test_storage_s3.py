import uuid

import pytest

from bstar.storage.catalog import connect
from bstar.storage.lake import Lake
from bstar.storage.queries import run_query
from bstar.storage.sql import ReadOnlyError, rows, run_sql

from lake_samples import SAMPLE, candidates_rows, rewards_rows

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_root(s3_server):
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:8]}"


def test_round_trip_and_rerun(s3_server, s3_root):
    lake = Lake(s3_root, s3_server.storage_options)
    p = lake.write("candidates", candidates_rows(tag=" a"), "r1", 0, "train")
    assert p == f"{s3_root}/candidates/run_id=r1/iteration=0/stage=train/part-00000.parquet"
    lake.write("candidates", candidates_rows(tag=" b"), "r1", 0, "train")
    df = lake.read("candidates")
    assert df.height == 12 and df["response"].str.ends_with(" b").all()
    assert lake.duplicate_keys("candidates").height == 0
    for t in ("runs", "queries", "search", "selections", "metrics", "checkpoints"):
        lake.write(t, SAMPLE[t](), "r1")
        assert lake.read(t).height == len(SAMPLE[t]())
    assert lake.exists("runs", "r1", 0, part="part-00000")
    assert lake.delete_partition("runs", "r1", 0) == 1
    assert lake.read("runs").height == 0


def test_temp_objects_never_read(s3_server, s3_root):
    lake = Lake(s3_root, s3_server.storage_options)
    lake.write("candidates", candidates_rows(), "r1", 0, "train")
    d = lake.partition_dir("candidates", "r1", 0, "train")
    lake.fs.pipe_file(lake._p(d) + "/.tmp-part-00001-x.parquet", b"not parquet")
    assert lake.read("candidates").height == 12
    assert connect(s3_root, s3_server.storage_options).execute("SELECT count(*) FROM candidates").fetchall() == [(12,)]


def test_catalog_and_sql_over_s3(s3_server, s3_root):
    lake = Lake(s3_root, s3_server.storage_options)
    lake.write("candidates", candidates_rows(), "r1", 0, "train")
    lake.write("rewards", rewards_rows(), "r1", 0, "train", part="part-arith")
    con = connect(s3_root, s3_server.storage_options)
    assert con.execute("SELECT count(*) FROM scored").fetchall() == [(12,)]
    assert con.execute("SELECT count(*) FROM metrics").fetchall() == [(0,)]  # empty view
    r = run_query(con, "pass_at_k_dashboard").to_dicts()[0]
    assert r["pass_at_k"] == pytest.approx(2 / 3) and r["n_queries"] == 3
    assert rows("SELECT count(*) AS n FROM candidates", s3_root, s3_server.storage_options) == [{"n": 12}]
    with pytest.raises(ReadOnlyError):
        run_sql("COPY candidates TO 's3://x/y.csv'", s3_root, s3_server.storage_options)


def test_wrong_credentials_fail_and_do_not_leak(s3_server, s3_root):
    good = Lake(s3_root, s3_server.storage_options)
    good.write("candidates", candidates_rows(), "r1", 0, "train")
    wrong_secret = "wrong-" + s3_server.secret[::-1]
    bad = Lake(s3_root, {**s3_server.storage_options, "secret": wrong_secret})
    with pytest.raises(PermissionError) as e:
        bad.read("candidates")
    assert wrong_secret not in str(e.value) and s3_server.secret not in str(e.value)
    with pytest.raises(PermissionError):
        bad.write("candidates", candidates_rows(), "r1", 1, "train")
    unknown_key = Lake(s3_root, {**s3_server.storage_options, "key": "NOSUCHKEY"})
    with pytest.raises(PermissionError):
        unknown_key.parts("candidates")
    assert s3_server.secret not in repr(good)


def test_env_credentials(s3_server, s3_root, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    lake = Lake(s3_root)
    lake.write("metrics", SAMPLE["metrics"](), "r1", 3)
    assert lake.read("metrics")["iteration"].to_list() == [3, 3]
