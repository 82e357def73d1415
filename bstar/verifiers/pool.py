"""A process pool with a hard wall-clock limit per item: a hung item is killed, the batch goes on.

`concurrent.futures` cannot cancel a running task, and math-verify can hang inside one C call
(a huge sympy integer power) where no signal handler runs. So each worker is a process fed one
item at a time over a pipe; the parent watches every item's deadline and SIGKILLs a worker that
passes it, records that item as `timeout`, and starts a fresh worker for the rest.

Workers are plain `python -m bstar.verifiers._worker` subprocesses, not `multiprocessing`
children: spawn/forkserver re-import the caller's `__main__` (a script without an
`if __name__ == "__main__"` guard would recurse), and `fork` is unsafe in a threaded caller
(Prefect runs tasks in threads). Idle workers are kept and reused across calls, so only the
first call (and a replacement after a kill) pays the ~1 s import of sympy/math-verify.
"""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from bstar.verifiers.base import ERROR, TIMEOUT, Verdict

_IDLE: list["_Worker"] = []
_IDLE_LOCK = threading.Lock()
MAX_IDLE = 16
READY_TIMEOUT = 120.0  # importing sympy on a loaded machine can take several seconds


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Worker:
    def __init__(self):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bstar.verifiers._worker", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.conn = Connection(from_child_r, writable=False)
        self.idx: int | None = None
        self.deadline = 0.0
        self.ready = False

    def wait_ready(self, limit: float = READY_TIMEOUT) -> None:
        """Block until the worker has imported the verifier libraries (it says "ready")."""
        if self.ready:
            return
        if not self.conn.poll(limit):
            self.kill()
            raise RuntimeError(f"verifier worker did not start within {limit:g}s")
        try:
            msg = self.recv()
        except (EOFError, OSError):
            code = self.proc.poll()
            self.kill()
            raise RuntimeError(f"verifier worker exited during start-up (exit code {code})") from None
        if msg != "ready":
            self.kill()
            raise RuntimeError(f"verifier worker sent {msg!r} instead of 'ready'")
        self.ready = True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def give(self, idx: int, msg: tuple, limit: float) -> None:
        self.idx = idx
        self.deadline = time.monotonic() + limit
        self.send_conn.send_bytes(pickle.dumps(msg))

    def recv(self):
        return pickle.loads(self.conn.recv_bytes())

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:
            pass
        for c in (self.send_conn, self.conn):
            try:
                c.close()
            except Exception:
                pass


def _take_worker() -> _Worker:
    with _IDLE_LOCK:
        while _IDLE:
            w = _IDLE.pop()
            if w.alive():
                return w
            w.kill()
    return _Worker()


def _return_worker(w: _Worker) -> None:
    with _IDLE_LOCK:
        if w.alive() and len(_IDLE) < MAX_IDLE:
            w.idx = None
            _IDLE.append(w)
            return
    w.kill()


@atexit.register
def shutdown() -> None:
    """Stop the idle workers (they also exit on their own when this process goes away)."""
    with _IDLE_LOCK:
        idle = list(_IDLE)
        _IDLE.clear()
    for w in idle:
        w.kill()


def run_batch(
    target: str | Callable,
    items: Sequence[tuple[Any, Any, dict]],
    *,
    workers: int | None = None,
    timeout: float,
) -> list[Verdict]:
    """Verdicts for `items` = [(response, answer, options)], in order; each item gets `timeout` s."""
    n = len(items)
    results: list[Verdict | None] = [None] * n
    if n == 0:
        return []
    n_workers = max(1, min(workers or default_workers(), n))
    pending = list(range(n - 1, -1, -1))  # a stack, popped from the end: item 0 first
    # Reused workers were started earlier: send our import path so a verifier module added to
    # sys.path since then still imports there.
    paths = [p for p in sys.path if p]
    pool: list[_Worker] = []
    try:
        pool = [_take_worker() for _ in range(n_workers)]
        for w in pool:  # they start in parallel; this waits for the slowest
            w.wait_ready()
        idle = list(pool)
        busy: dict[Any, _Worker] = {}

        def feed() -> None:
            while idle and pending:
                w = idle.pop()
                i = pending.pop()
                response, answer, options = items[i]
                try:
                    msg = (i, target, response, answer, options, paths)
                    pickle.dumps(msg)
                except Exception as e:  # unpicklable input: record it, keep the worker
                    results[i] = Verdict(False, None, ERROR, f"cannot send item to worker: {e}")
                    idle.append(w)
                    continue
                try:
                    w.give(i, msg, timeout)
                except OSError:  # the worker died while idle: replace it and retry the item
                    pending.append(i)
                    replace(w)
                    continue
                busy[w.conn] = w

        def replace(w: _Worker) -> None:
            w.kill()
            pool.remove(w)
            if pending:
                nw = _Worker()
                pool.append(nw)
                nw.wait_ready()
                idle.append(nw)

        feed()
        while busy:
            now = time.monotonic()
            next_deadline = min(w.deadline for w in busy.values())
            ready = wait(list(busy), timeout=max(0.0, next_deadline - now) + 0.01)
            for conn in ready:
                w = busy.pop(conn)
                try:
                    idx, verdict = w.recv()
                except (EOFError, OSError, pickle.UnpicklingError):
                    code = w.proc.poll()
                    results[w.idx] = Verdict(False, None, ERROR, f"verifier process died (exit code {code})")
                    replace(w)
                    continue
                results[idx] = verdict
                w.idx = None
                idle.append(w)
            now = time.monotonic()
            for conn, w in list(busy.items()):
                if now >= w.deadline:
                    busy.pop(conn)
                    results[w.idx] = Verdict(False, None, TIMEOUT, f"killed after {timeout:g}s wall clock")
                    replace(w)
            feed()
    finally:
        for w in pool:
            if w.idx is None:
                _return_worker(w)
            else:  # interrupted mid-item (KeyboardInterrupt): its state is unknown
                w.kill()
    return [r if r is not None else Verdict(False, None, ERROR, "no result") for r in results]
