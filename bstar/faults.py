"""Deterministic crash points: SIGKILL (or another signal) this process at a named point inside a stage.

The fault tests (tests/reliability/test_faults*.py) kill a real `bstar run` at chosen points and
resume it; a signal sent from outside at a random time could not say *where* the run died.

    BSTAR_KILL_AT="fine-tune@1:step:3" bstar run CONFIG --run-id X   # dies at round 1's 3rd SFT step
    bstar run CONFIG --resume X                                        # completes the run

Spec (comma-separated items): ``<task>[/<data stage>]@<iteration>:<point>[:<n>]``, e.g.
``sample-candidates/search@2:batch:1`` or ``select-data@1:write:1``. The process dies at the
n-th time it reaches ``point`` within that stage task. Points:

- ``start``: the stage task was entered (nothing written yet);
- ``batch``: a sampling chunk was decoded (bstar.models.sampling);
- ``step``: an optimizer step was taken (bstar.models.trainer);
- ``write``: a part's temp file is written and fsynced but not yet renamed (local), or its
  PUT is about to be sent (S3) (bstar.storage.lake);
- ``done``: the stage returned, so its rows are in the lake, but Prefect has not yet recorded
  its result (the resume cache does not know it finished).

`BSTAR_KILL_SIGNAL=TERM` sends SIGTERM instead of SIGKILL (what `kill PID`, a scheduler or a
container stop sends): the run must stop cleanly, temporary Prefect server included.

With the variable unset (always, outside these tests) a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from contextlib import contextmanager

KILL_ENV = "BSTAR_KILL_AT"
SIGNAL_ENV = "BSTAR_KILL_SIGNAL"

# The stage task running in this process (stages run one at a time) and its point counts.
_stage: tuple[str, str | None, str] | None = None
_hits: Counter = Counter()


@contextmanager
def stage(task: str, parameters: dict):
    """Wraps every stage task (`stage_task`): points are counted from zero per stage run."""
    global _stage
    if not os.environ.get(KILL_ENV) or _stage is not None:
        # a shard run inside its stage's own task (bstar.tasks.shards) is part of that stage:
        # its points count as the stage's, under the stage's name
        yield
        return
    _stage = (task, parameters.get("stage"), str(parameters.get("iteration", "")))
    _hits.clear()
    try:
        kill_point("start")
        yield
        kill_point("done")  # only when the stage returned: a failed stage is not "done"
    finally:
        _stage = None


STAGE_ENV = "BSTAR_FAULT_STAGE"  # the stage a launched training process belongs to: "task|stage|iteration"


def stage_env() -> dict[str, str]:
    """What a process this stage launches (torchrun's trainers) needs for its kill points to
    count as the stage's: empty outside the fault tests."""
    if not os.environ.get(KILL_ENV) or _stage is None:
        return {}
    return {STAGE_ENV: "|".join(x or "" for x in _stage)}


@contextmanager
def inherited_stage():
    """In a launched process: count kill points as the launching stage's (see `stage_env`)."""
    global _stage
    spec = os.environ.get(STAGE_ENV)
    if not spec or not os.environ.get(KILL_ENV):
        yield
        return
    task, stage_name, iteration = spec.split("|")
    _stage = (task, stage_name or None, iteration)
    _hits.clear()
    try:
        yield
    finally:
        _stage = None


def _matches(item: str, point: str, n: int) -> bool:
    where, _, rest = item.strip().partition("@")
    iteration, _, rest = rest.partition(":")
    at, _, count = rest.partition(":")
    task, _, data_stage = where.partition("/")
    name, stage, it = _stage
    return (
        task == name
        and (not data_stage or data_stage == stage)
        and iteration == it
        and at == point
        and int(count or 1) == n  # `start` and `done` happen once: no count needed
    )


def kill_point(point: str) -> None:
    """Signal this process (SIGKILL unless BSTAR_KILL_SIGNAL says otherwise) if BSTAR_KILL_AT
    names this point of the running stage."""
    spec = os.environ.get(KILL_ENV)
    if not spec or _stage is None:
        return
    _hits[point] += 1
    for item in spec.split(","):
        if _matches(item, point, _hits[point]):
            sig = signal.Signals[f"SIG{os.environ.get(SIGNAL_ENV, 'KILL').upper().removeprefix('SIG')}"]
            sys.stderr.write(f"{KILL_ENV}: {sig.name} at {item.strip()}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), sig)
