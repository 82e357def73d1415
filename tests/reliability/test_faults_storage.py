"""Storage faults: a writer killed mid-write, a full disk, the S3 server killed mid-PUT and during a run.

- A writer SIGKILLed between its temp file and the rename leaves the hidden temp file behind;
  no reader (Lake, the DuckDB catalog, `bstar sql`) ever sees it, and the next write replaces
  the part as if nothing happened.
- Full disk: a real tmpfs mounted at the lake root (needs root / CAP_SYS_ADMIN, else skipped).
  A write that does not fit fails with ENOSPC, leaves neither part nor temp file, and keeps the
  previous version of the part; a whole run that fills the disk fails with the error, and once
  the tmpfs is grown (`mount -o remount,size=`) `--resume` completes it, equal to the reference.
- S3 (SeaweedFS `weed mini`): the server SIGKILLed while a large PUT is in flight leaves no
  object (never a partial one); a run whose server dies and comes back resumes to the same lake.

    BSTAR_TORCH_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/pytest tests/reliability/test_faults_storage.py [-m slow] -s
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from bstar.storage.lake import Lake

from .conftest import BIN, REPO, RUN_ID, assert_same_lake, lake_tables, log_tail

ROWS = pl.DataFrame({"query_id": ["q1", "q2"], "sample_idx": [0, 0], "temperature": 0.5, "policy": "p",
                     "response": ["a", "b"], "n_tokens": [1, 1], "finish_reason": ["stop", "stop"]})


def big_rows(n: int, width: int = 200) -> pl.DataFrame:
    """Rows that do not compress away (random text), for writes that must not fit."""
    texts = [os.urandom(width).hex() for _ in range(n)]
    return pl.DataFrame({"query_id": [f"q{i}" for i in range(n)], "sample_idx": 0, "temperature": 0.5,
                         "policy": "p", "response": texts, "n_tokens": 1, "finish_reason": "stop"})


def sql_count(root, table: str = "candidates") -> int:
    out = subprocess.run([str(BIN / "bstar"), "sql", f"SELECT count(*) AS n FROM {table}", "--root", str(root),
                          "--format", "csv"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


# -- a writer killed between temp file and rename -----------------------------------------------


def test_part_left_half_written_by_a_killed_writer_is_never_read(tmp_path):
    root = tmp_path / "lake"
    lake = Lake(root)
    lake.write("candidates", ROWS, "r", 1, "train")
    writer = textwrap.dedent(f"""
        import polars as pl
        from bstar import faults
        from bstar.storage.lake import Lake
        rows = pl.DataFrame({{"query_id": ["q{{i}}".format(i=i) for i in range(50)], "sample_idx": 0,
                             "temperature": 0.5, "policy": "p", "response": "x", "n_tokens": 1,
                             "finish_reason": "stop"}})
        with faults.stage("sample-candidates", {{"iteration": 1, "stage": "train"}}):
            Lake({str(root)!r}).write("candidates", rows, "r", 1, "train")
    """)
    env = {**os.environ, "BSTAR_KILL_AT": "sample-candidates/train@1:write:1"}
    out = subprocess.run([sys.executable, "-c", writer], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    part_dir = Path(lake.partition_dir("candidates", "r", 1, "train"))
    temps = list(part_dir.glob(".tmp-*"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0, list(part_dir.iterdir())
    # and a torn copy of it, as a crash during the temp write itself would leave
    torn = part_dir / ".tmp-part-00000-torn.parquet"
    torn.write_bytes(temps[0].read_bytes()[: temps[0].stat().st_size // 2])

    # readers see the old complete part only: 2 rows, not 50 and no parse error on the torn file
    assert lake.read("candidates").height == 2
    assert [Path(p).name for p in lake.all_parts()["candidates"]] == ["part-00000.parquet"]
    assert sql_count(root) == 2
    # the stage's rerun replaces the part; the leftovers still are never read
    lake.write("candidates", big_rows(50), "r", 1, "train")
    assert lake.read("candidates").height == 50 and sql_count(root) == 50
    assert lake.duplicate_keys("candidates").is_empty()


# -- full disk ----------------------------------------------------------------------------------


class Tmpfs:
    """A real tmpfs at `path`; `resize` changes its size in place (the data stays)."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if out.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {out.stderr.strip()}")

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Tmpfs] = []

    def mount(name: str, size: str) -> Tmpfs:
        mounted.append(Tmpfs(tmp_path / name, size))
        return mounted[-1]

    yield mount
    for m in mounted:
        m.unmount()


def test_write_on_a_full_disk_fails_cleanly_and_keeps_the_old_part(tmpfs):
    disk = tmpfs("disk", "256k")
    lake = Lake(disk.path / "lake")
    lake.write("candidates", ROWS, "r", 1, "train")
    with pytest.raises(OSError) as err:
        lake.write("candidates", big_rows(4000), "r", 1, "train")  # ~1.6 MB of random text
    assert err.value.errno == errno.ENOSPC, err.value
    part_dir = Path(lake.partition_dir("candidates", "r", 1, "train"))
    assert sorted(p.name for p in part_dir.iterdir()) == ["part-00000.parquet"], "temp file left behind"
    assert lake.read("candidates")["response"].to_list() == ["a", "b"], "the old part was damaged"

    disk.resize("8m")  # space returns: the same write goes through
    lake.write("candidates", big_rows(4000), "r", 1, "train")
    assert lake.read("candidates").height == 4000


@pytest.mark.slow  # ~2 minutes: a run that fills its disk, then its resume
def test_run_on_a_full_disk_fails_then_resumes_after_space_returns(runner, reference, tmpfs, tmp_path):
    ref_root, _ = reference
    used = sum(p.stat().st_size for p in Path(ref_root).rglob("*") if p.is_file())
    disk = tmpfs("disk", str(used // 2))  # the run fills it about half way
    root = disk.path / "lake"
    res = runner.run(root)
    assert res.returncode != 0, "the run should not fit on the disk"
    log = log_tail(res.log, 200_000)
    assert "No space left on device" in log, log_tail(res.log)
    lake = Lake(root)
    assert not list(root.rglob(".tmp-part-*")), "the failed write left its temp file"
    written = {t: lake.read(t, RUN_ID).height for t in ("candidates", "rewards", "metrics")}  # every part parses
    assert written["candidates"] > 0, "the disk filled before any candidate was written"
    assert not lake.exists("metrics", RUN_ID, 2), "the run finished although the disk was full"

    disk.resize(str(used * 4))
    res = runner.run(root, resume=True)
    assert res.returncode == 0, log_tail(res.log)
    assert_same_lake(lake_tables(ref_root), lake_tables(root), "resumed after a full disk")
    print(f"\nfull disk at {used // 2} bytes ({written}); resumed in {res.seconds:.0f}s; lake identical")


# -- S3 server faults ---------------------------------------------------------------------------


@pytest.fixture
def s3(tmp_path):
    from tests.s3server import S3Server, WeedNotFound, find_weed

    try:
        find_weed()
    except WeedNotFound as e:
        pytest.skip(str(e))
    server = S3Server(bucket="faults").start()
    yield server
    server.stop()


@pytest.mark.s3
@pytest.mark.slow  # ~1 minute: two server starts
def test_s3_server_killed_mid_put_leaves_no_partial_object(s3):
    lake = Lake(f"s3://{s3.bucket}/lake", s3.storage_options)
    lake.write("candidates", ROWS, "r", 1, "train")
    big = big_rows(300_000, width=100)  # ~60 MB of incompressible text: a PUT that takes a while
    failed: list[BaseException] = []

    def put():
        try:
            lake.write("candidates", big, "r", 1, "train")
        except BaseException as e:  # noqa: BLE001 - the failure is what we check
            failed.append(e)

    writer = threading.Thread(target=put)
    writer.start()
    time.sleep(0.3)  # the PUT is under way (encoding the table takes less)
    s3.kill()
    writer.join(timeout=300)
    assert failed, "the PUT finished before the server was killed: make the table bigger"
    s3.restart()
    lake = Lake(f"s3://{s3.bucket}/lake", s3.storage_options)
    parts = lake.all_parts()["candidates"]
    assert len(parts) == 1, parts
    got = lake.read("candidates")
    # the old version or the whole new one, never a torn object
    assert got.height in (2, big.height), got.height
    print(f"\nS3 killed mid-PUT ({type(failed[0]).__name__}); after restart the part holds the "
          f"{'old' if got.height == 2 else 'new'} version, whole")
    lake.write("candidates", big, "r", 1, "train")
    assert lake.read("candidates").height == big.height


@pytest.mark.s3
@pytest.mark.slow  # ~2-3 minutes: a run on S3 whose server dies mid-run, and its resume
def test_run_on_s3_survives_the_server_dying_and_coming_back(runner, reference, s3, tmp_path):
    ref_root, _ = reference
    root = f"s3://{s3.bucket}/lake"
    opts = s3.storage_options
    creds = dict(AWS_ACCESS_KEY_ID=opts["key"], AWS_SECRET_ACCESS_KEY=opts["secret"], AWS_REGION="us-east-1",
                 BSTAR_CHECKPOINT_DIR=str(tmp_path / "checkpoints"))
    args = ("--set", f"storage.endpoint_url={s3.endpoint}")
    proc, log = runner.start(root, args=args, **creds)
    lake = Lake(root, opts)
    outage = 8.0
    try:
        deadline = time.monotonic() + 600
        while not lake.exists("candidates", RUN_ID, 1, "search"):
            assert proc.poll() is None, log_tail(log)
            assert time.monotonic() < deadline
            time.sleep(0.2)
        s3.kill()  # mid-run: round 1 is scoring / sampling and about to write
        time.sleep(outage)
        s3.restart()
        proc.wait(timeout=600)
    finally:
        from .conftest import kill_group

        kill_group(proc)
    first_rc = proc.returncode
    if first_rc != 0:  # the outage outlasted the stage's retries: the run failed, resume it
        res = runner.run(root, resume=True, args=args, **creds)
        assert res.returncode == 0, log_tail(res.log)
    lake = Lake(root, opts)
    got = lake_tables(None, lake=lake)
    ref = lake_tables(ref_root)
    # checkpoints of an S3 run live in BSTAR_CHECKPOINT_DIR, not under the lake root
    for name in ("checkpoints", "candidates"):
        col = "path" if name == "checkpoints" else "policy"
        ref[name] = ref[name].with_columns(pl.col(col).str.replace(r"^<root>/_checkpoints/", "<ckpt>/"))
        got[name] = got[name].with_columns(
            pl.col(col).str.replace(str(tmp_path / "checkpoints") + "/", "<ckpt>/", literal=True))
    assert_same_lake(ref, got, "S3 run with a server outage")
    print(f"\nS3 server down {outage:.0f}s mid-run: first attempt rc={first_rc}"
          f"{' (resumed)' if first_rc else ' (retried in place)'}; lake identical to the reference")
