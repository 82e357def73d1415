"""Two runs writing to one lake root at once, read by two `bstar sql` pollers meanwhile.

Runs with different run ids write disjoint partitions of the same tables; readers glob only
complete `part-*.parquet` files (temp files are hidden and renamed into place), so every poll
must succeed and see row counts that never go down, and the run that shares the reference's
run id must end equal to it.

    BSTAR_TORCH_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/pytest tests/reliability/test_faults_concurrency.py -m slow -s
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from bstar.storage.lake import Lake
from bstar.storage.schemas import TABLES

from .conftest import BIN, REPO, RUN_ID, assert_same_lake, kill_group, lake_tables, log_tail

POLL = "SELECT (SELECT count(*) FROM candidates) AS c, (SELECT count(*) FROM rewards) AS r, " \
       "(SELECT count(*) FROM metrics) AS m"


class Poller(threading.Thread):
    """Runs `bstar sql` in a loop until stopped; records counts and any failure."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root, self.stop, self.counts, self.errors = str(root), threading.Event(), [], []

    def run(self):
        while not self.stop.is_set():
            out = subprocess.run([str(BIN / "bstar"), "sql", POLL, "--root", self.root, "--format", "csv"],
                                 cwd=REPO, capture_output=True, text=True, timeout=120)
            if out.returncode:
                self.errors.append(out.stderr[-2000:])
            else:
                self.counts.append(tuple(int(x) for x in out.stdout.strip().splitlines()[-1].split(",")))


@pytest.mark.slow  # ~2-3 minutes: two runs at once on 2 cores, plus the readers
def test_two_runs_and_two_readers_on_one_root(runner, reference, tmp_path):
    root = tmp_path / "lake"
    root.mkdir()
    pollers = [Poller(root), Poller(root)]
    for p in pollers:
        p.start()
    procs = [runner.start(root, run_id) for run_id in (RUN_ID, "faults-twin")]
    t0 = time.monotonic()
    try:
        for proc, log in procs:
            proc.wait(timeout=900)
            assert proc.returncode == 0, log_tail(log)
    finally:
        for proc, _ in procs:
            kill_group(proc)
        for p in pollers:
            p.stop.set()
        for p in pollers:
            p.join(timeout=180)
    seconds = time.monotonic() - t0

    for p in pollers:
        assert not p.errors, p.errors[:2]
        assert len(p.counts) >= 5, f"a reader polled only {len(p.counts)} times"
        for a, b in zip(p.counts, p.counts[1:]):
            assert all(y >= x for x, y in zip(a, b)), f"counts went down between polls: {a} -> {b}"
    lake = Lake(str(root))
    final = lake.read("candidates").height, lake.read("rewards").height, lake.read("metrics").height
    assert max(p.counts[-1] for p in pollers) <= final
    for table in TABLES:
        assert lake.duplicate_keys(table).is_empty(), table
    assert not list(root.rglob(".tmp-part-*"))
    assert_same_lake(lake_tables(reference[0]), lake_tables(root), "run beside another run")
    twin = lake_tables(root, "faults-twin")
    assert twin["metrics"].height == lake_tables(root)["metrics"].height
    polls = sum(len(p.counts) for p in pollers)
    print(f"\n2 runs at once in {seconds:.0f}s; {polls} `bstar sql` polls, 0 errors, counts monotone; "
          f"final counts {final}; 0 duplicate keys")
