"""Worker process of the verifier pool (bstar.verifiers.pool); not for direct use.

    python -m bstar.verifiers._worker READ_FD WRITE_FD

Reads pickled `(idx, target, response, answer, options, sys_path)` items, answers `(idx, Verdict)`, one at
a time, until the pipe closes. Dies with its parent (PR_SET_PDEATHSIG) so a worker hung in C code
never outlives the process that started it.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # not Linux: the closed pipe still ends the loop
        pass


def main(read_fd: int, write_fd: int) -> None:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import bstar.verifiers._preload  # noqa: F401  (sympy & co. once, before the first item)
    from bstar.verifiers.base import ERROR, Verdict
    from bstar.verifiers.registry import call_verifier, resolve

    rconn = Connection(read_fd, writable=False)
    wconn = Connection(write_fd, readable=False)
    # Tell the parent the imports are done: item deadlines start after this, so a slow start
    # on a busy machine is not charged to the first item.
    wconn.send_bytes(pickle.dumps("ready"))
    cache: dict = {}
    last_paths: list = []
    while True:
        try:
            idx, target, response, answer, options, paths = pickle.loads(rconn.recv_bytes())
        except (EOFError, OSError):
            return
        if paths != last_paths:
            missing = [p for p in paths if p not in sys.path]
            if missing:
                sys.path[:0] = missing
                importlib.invalidate_caches()
            last_paths = paths
        try:
            fn = cache.get(target) if isinstance(target, str) else target
            if fn is None:
                fn = cache[target] = resolve(target)
            verdict = call_verifier(fn, response, answer, options)
        except BaseException as e:  # noqa: BLE001 - the parent must always get an answer
            verdict = Verdict(False, None, ERROR, f"{type(e).__name__}: {str(e)[:300]}")
        try:
            payload = pickle.dumps((idx, verdict))
        except Exception as e:
            payload = pickle.dumps((idx, Verdict(False, None, ERROR, f"cannot send verdict: {e}")))
        wconn.send_bytes(payload)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
