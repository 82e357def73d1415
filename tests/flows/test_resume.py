"""Resume: a failed or killed run, rerun with its run id, redoes only what did not finish.

Completed stages are not run again (their part files keep their bytes and mtimes), the lake
never holds a duplicate key, and the resumed run completes.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bstar.storage.lake import Lake
from bstar.storage.schemas import TABLES

from .conftest import REPO, SMOKE


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every data and checkpoint file under the lake: (mtime_ns, sha256)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "_prefect" not in p.parts:
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def assert_untouched(before: dict, after: dict) -> None:
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"completed stages were rewritten: {changed[:5]}"


def assert_same_bytes(before: dict, after: dict) -> None:
    changed = [p for p in before if p not in after or after[p][1] != before[p][1]]
    assert not changed, f"stored rows changed on resume: {changed[:5]}"


def assert_no_duplicates(root: Path, run_id: str) -> None:
    lake = Lake(str(root))
    for table in TABLES:
        assert lake.duplicate_keys(table, run_id).is_empty(), table


def test_injected_failure_then_resume_redoes_only_the_failed_stage(prefect_harness, tmp_path, monkeypatch):
    from bstar.flows.run import bstar_run

    root = tmp_path / "lake"
    args = dict(config=str(SMOKE), run_id="fault", overrides=[f"storage.root={root}"])
    monkeypatch.setenv("BSTAR_INJECT_FAULT", "fine-tune@2")
    with pytest.raises(Exception, match="fault injected into stage fine-tune"):
        bstar_run(**args)
    lake = Lake(str(root))
    assert lake.exists("selections", "fault", 2), "stages before the fault must have written their rows"
    assert not lake.exists("checkpoints", "fault", 2)
    before = snapshot(root)

    monkeypatch.delenv("BSTAR_INJECT_FAULT")
    result = bstar_run(**args)
    assert [r["policy"] for r in result["rounds"]][-1].endswith("iter-2")
    after = snapshot(root)
    assert_untouched(before, after)
    new = set(after) - set(before)
    assert any(p.startswith("checkpoints/run_id=fault/iteration=2/") for p in new)
    assert any(p.startswith("metrics/run_id=fault/iteration=2/") for p in new)
    # nothing of round 1 or of round 2's sampling was produced again
    assert not any(p.startswith(("candidates/run_id=fault/iteration=1", "selections/")) for p in new)
    assert_no_duplicates(root, "fault")


def _bstar(*args: str) -> list[str]:
    return [sys.executable, "-m", "bstar.cli", *args]


@pytest.mark.slow  # ~95 s; kill and resume stay in the default suite through test_faults_kill
def test_sigkill_mid_run_then_resume(tmp_path):
    root = tmp_path / "lake"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    cmd = _bstar("run", str(SMOKE), "--root", str(root), "--run-id", "killed")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = root / "candidates" / "run_id=killed" / "iteration=1" / "stage=train"
    try:
        deadline = time.time() + 600
        while not (marker.is_dir() and any(marker.glob("part-*.parquet"))):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the run never reached round 1's training samples"
            time.sleep(0.05)
        # now inside the stages after sampling (scoring / selection / fine-tuning)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = snapshot(root)
    assert not Lake(str(root)).exists("checkpoints", "killed", 2)
    # The kill may land after a stage wrote its rows but before its result was recorded: that
    # stage is redone and must rewrite the very same bytes. Earlier stages are not touched at all.
    finished = {
        p: v
        for p, v in before.items()
        if "iteration=0/" in p or ("iteration=1/stage=search" in p)
    }
    assert finished, "the run should have finished its warm-up and round 1's search before the kill"

    done = subprocess.run(_bstar("run", str(SMOKE), "--root", str(root), "--resume", "killed"),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run killed" in done.stdout
    after = snapshot(root)
    assert_same_bytes(before, after)
    assert_untouched(finished, after)
    assert Lake(str(root)).exists("checkpoints", "killed", 2)
    assert_no_duplicates(root, "killed")
