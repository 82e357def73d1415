import datetime as dt
import uuid

import duckdb
import fsspec
import numpy as np
import pytest

from bstar.storage.catalog import connect
from bstar.storage.lake import Lake
from bstar.storage.queries import run_query
from bstar.storage.snapshot_fs import SnapshotFileSystem

from lake_samples import candidates_rows


# -- the filesystem itself, over local files ------------------------------------------------
class _CountingFS(type(fsspec.filesystem("file"))):
    """The local file system, recording every cat_file as (path, start, end)."""

    cachable = False

    def __init__(self):
        super().__init__()
        self.fetches = []

    def cat_file(self, path, start=None, end=None, **kw):
        self.fetches.append((path, start, end))
        return super().cat_file(path, start=start, end=end, **kw)


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def parts(lake):
    """Three part files of different sizes (local paths)."""
    return [lake.write("candidates", candidates_rows(n_queries=n), "r1", i, "train") for i, n in enumerate((3, 30, 60))]


def test_metadata_is_the_listing(parts):
    a, _, c = parts
    fs = SnapshotFileSystem(_CountingFS(), [a])
    info = fs.info(a)
    assert info["size"] == len(_bytes(a)) and info["type"] == "file"
    assert isinstance(fs.modified(a), dt.datetime) and fs.modified(a).tzinfo is not None
    part_dir = a.rsplit("/", 1)[0]
    assert fs.info(part_dir)["type"] == "directory"
    assert fs.ls(part_dir, detail=False) == [a]
    for missing in (c, part_dir + "/part-x.parquet"):  # not listed: does not exist
        assert not fs.exists(missing)
        with pytest.raises(FileNotFoundError):
            fs.open(missing, "rb")
    with pytest.raises(PermissionError, match="read-only"):
        fs.open(a, "wb")


def test_reads_are_exact_ranges_then_served_from_memory(parts):
    a = parts[0]
    data, inner = _bytes(a), _CountingFS()
    fs = SnapshotFileSystem(inner, [a])
    n = len(data)
    with fs.open(a, "rb") as f:
        assert inner.fetches == []  # opening fetches nothing
        f.seek(n - 8)
        assert f.read(8) == data[-8:] and data[-4:] == b"PAR1"
        f.seek(4)
        assert f.read(100) == data[4:104]
    with fs.open(a, "rb") as f:  # a later query: same ranges, no request
        f.seek(4)
        assert f.read(100) == data[4:104]
        f.seek(50)
        assert f.read(20) == data[50:70]  # inside a cached range
        f.seek(0)
        assert f.read() == data  # not covered: one GET of the whole file
        f.seek(1000)
        assert f.read(10) == data[1000:1010]
    assert inner.fetches == [(a, n - 8, n), (a, 4, 104), (a, 0, n)]
    assert fs.cached_bytes == 8 + 100 + n


def test_cache_is_bounded_lru(parts):
    sizes = [len(_bytes(p)) for p in parts]
    inner = _CountingFS()
    # room for the two larger files together but not for all three
    fs = SnapshotFileSystem(inner, parts, max_bytes=sizes[1] + sizes[2])
    for p in parts + [parts[2]]:
        with fs.open(p, "rb") as f:
            assert f.read() == _bytes(p)
        assert fs.cached_bytes <= fs.max_bytes
    assert [p for p, _ in fs._cache] == parts[1:]  # the least recently used went first
    assert fs.cached_bytes == sizes[1] + sizes[2]
    with fs.open(parts[0], "rb") as f:  # evicted: fetched again, and evicts the next oldest
        f.read()
    assert [p for p, _, _ in inner.fetches] == parts + [parts[0]]
    assert [p for p, _ in fs._cache] == [parts[2], parts[0]]


def test_rewritten_part_is_served_from_snapshot_or_refused(lake, parts):
    a, b, _ = parts
    old = _bytes(a)
    fs = SnapshotFileSystem(_CountingFS(), [a, b])
    with fs.open(a, "rb") as f:
        f.read()
    lake.write("candidates", candidates_rows(n_queries=50), "r1", 0, "train")
    lake.write("candidates", candidates_rows(n_queries=5), "r1", 1, "train")
    assert fs.info(a)["size"] == len(old)
    with fs.open(a, "rb") as f:  # already read: the connection keeps its snapshot
        assert f.read() == old
    with pytest.raises(OSError, match="changed since the lake was listed"):
        with fs.open(b, "rb") as f:  # not yet read, and now shorter than listed: refused
            f.read()
    assert SnapshotFileSystem(_CountingFS(), [b]).info(b)["size"] == len(_bytes(b))  # reconnect


# -- through the catalog on a real S3 server -------------------------------------------------
def _write_same(lakes, seed=0):
    """Random but identical candidates/rewards in several partitions and scorers on each lake."""
    rng = np.random.default_rng(seed)
    for it in range(3):
        for stage in ("train", "eval"):
            n_q, k = 40, 8
            cands = [
                {"query_id": f"q{q}", "sample_idx": i, "temperature": 0.7, "policy": f"ckpt-{it}",
                 "response": f"answer {q}-{i}", "n_tokens": 10 + i, "finish_reason": "stop"}
                for q in range(n_q) for i in range(k)
            ]
            for lake in lakes:
                lake.write("candidates", cands, "r1", it, stage)
            for scorer, p in (("arith", 0.3 + 0.2 * it), ("prm", 0.5)):
                correct = rng.random(n_q * k) < p
                rewards = [
                    {"query_id": c["query_id"], "sample_idx": c["sample_idx"], "scorer": scorer,
                     "correct": bool(ok), "extracted": "1", "status": "ok", "reward": float(ok)}
                    for c, ok in zip(cands, correct)
                ]
                for lake in lakes:
                    lake.write("rewards", rewards, "r1", it, stage, part=f"part-{scorer}")


@pytest.fixture
def s3_and_local(s3_server, tmp_path):
    s3 = Lake(f"s3://{s3_server.bucket}/snap-{uuid.uuid4().hex[:8]}", s3_server.storage_options)
    local = Lake(tmp_path / "lake")
    _write_same([s3, local])
    return s3, local


@pytest.mark.s3
def test_dashboard_identical_on_s3_and_local(s3_and_local):
    s3, local = s3_and_local
    con_s3, con_local = connect(s3), connect(local)
    for name, params in [("pass_at_k_dashboard", {}), ("pass_at_k_dashboard", {"iteration": 1, "stage": "eval"}),
                         ("pass_at_k", {"k": 4}), ("candidates_per_status", {})]:
        a, b = run_query(con_s3, name, **params), run_query(con_local, name, **params)
        assert a.schema == b.schema and a.height == b.height > 0, name
        floats = [c for c, t in a.schema.items() if t.is_float()]
        assert a.drop(floats).equals(b.drop(floats)), name
        for c in floats:  # parallel sums may add in another order: equal to the last bits
            assert a[c].to_list() == pytest.approx(b[c].to_list(), rel=1e-12, abs=0), (name, c)
    df = run_query(con_s3, "pass_at_k_dashboard")
    assert df.height == 3 * 2 * 2  # iterations x stages x scorers
    assert set(df["n_candidates"]) == {320} and set(df["k"]) == {8} and set(df["n_queries"]) == {40}
    assert 0.0 < df["pass_at_1"].min() <= df["pass_at_k"].min()
    q = "SELECT iteration, stage, scorer, count(*), sum(reward) FROM scored GROUP BY ALL ORDER BY ALL"
    assert con_s3.execute(q).fetchall() == con_local.execute(q).fetchall()


@pytest.mark.s3
def test_s3_queries_are_served_from_memory(s3_and_local):
    s3, _ = s3_and_local
    calls = []

    def counting(name):
        real = getattr(s3.fs, name)

        def wrapper(*a, **kw):
            calls.append(name)
            return real(*a, **kw)
        return wrapper

    for name in ("open", "info", "size", "modified", "ls", "exists", "cat_file"):
        setattr(s3.fs, name, counting(name))
    con = connect(s3)
    n_parts = 3 * 2 * 3
    assert calls.count("info") == n_parts  # one per listed part, from the listing's cache
    assert calls.count("cat_file") <= n_parts  # DuckDB reads these small parts whole, once
    calls.clear()
    for _ in range(3):
        run_query(con, "pass_at_k_dashboard")
    # DuckDB reopens every file and asks its size and mtime on each query, and rereads parts
    # written seconds ago: all from memory now, no request
    assert calls == []


@pytest.mark.s3
def test_s3_connection_is_a_snapshot(s3_and_local):
    s3, _ = s3_and_local
    con = connect(s3)
    n = "SELECT count(*) FROM rewards"
    assert con.execute(n).fetchone()[0] == 3 * 2 * 2 * 320
    s3.write("rewards", [{"query_id": "q0", "sample_idx": 0, "scorer": "new", "correct": True,
                          "extracted": "1", "status": "ok", "reward": 1.0}], "r1", 3, "train", part="part-new")
    assert con.execute(n).fetchone()[0] == 3 * 2 * 2 * 320  # part written after connect: invisible
    unlocked = connect(s3, read_only=False)
    s3.write("rewards", [{"query_id": "q0", "sample_idx": 0, "scorer": "new", "correct": True,
                          "extracted": "1", "status": "ok", "reward": 1.0}], "r1", 4, "train", part="part-new")
    new = f"{s3.root}/rewards/run_id=r1/iteration=4/stage=train/part-new.parquet"
    with pytest.raises(duckdb.IOException, match="No files found"):  # exists on S3, not in the listing
        unlocked.execute(f"SELECT count(*) FROM read_parquet('{new}')")
    assert connect(s3).execute(n).fetchone()[0] == 3 * 2 * 2 * 320 + 2  # reconnect sees it
