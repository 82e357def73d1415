"""The test runner that executes inside the code sandbox (bstar.verifiers.sandbox); stdlib only.

The host passes this file's source as `python3 -I -c SOURCE` and the job as JSON on stdin:

    {"code": str, "mode": "stdio" | "call", "fn_name": str | null,
     "tests": [{"input": ..., "output": ...}], "timeout": 4.0, "budget": 60.0,
     "limits": {"as": bytes, "cpu": s, "fsize": bytes, "nofile": n, "nproc": n},
     "workdir": path, "stop_on_failure": true}

and reads one JSON object from its stdout: {"compile_error": str | null, "results": [...]}.

Each test runs in a forked child (no interpreter start-up per test) that sets the rlimits, its
own process group, stdin/stdout/stderr on files, and then runs the program. Inside bubblewrap
this runner is PID 1 of a private PID namespace (`--as-pid-1`): the kernel ignores SIGKILL sent
to it from inside, so a program cannot kill its judge, and after every test the runner kills
every other process in the namespace, daemonised grandchildren included.
"""

import builtins
import ctypes
import io
import json
import math
import os
import resource
import select
import signal
import sys
import time
import traceback

EXIT_OUTPUT_LIMIT = 120  # the child's code for "wrote more than RLIMIT_FSIZE allows"
EXIT_NO_FUNCTION = 121
EXIT_EXCEPTION = 1


def _prctl(option, arg):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except Exception:
        pass


def _set_limits(limits, cpu_seconds):
    pairs = [
        (resource.RLIMIT_AS, limits.get("as")),
        (resource.RLIMIT_FSIZE, limits.get("fsize")),
        (resource.RLIMIT_NOFILE, limits.get("nofile")),
        (resource.RLIMIT_NPROC, limits.get("nproc")),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, cpu_seconds),
    ]
    for which, value in pairs:
        if value is None:
            continue
        value = int(value)
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            # Cannot raise a hard limit that is already lower: keep the lower one.
            soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY and hard < value:
                resource.setrlimit(which, (hard, hard))


def _child(code_obj, mode, fn_name, test_input, files, limits, cpu_seconds):
    """Runs in the forked child; never returns."""
    try:
        os.setpgid(0, 0)
        in_fd = os.open(files["in"], os.O_RDONLY)
        out_fd = os.open(files["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err_fd = os.open(files["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(in_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.closerange(3, 65536)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace", line_buffering=True)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        _set_limits(limits, cpu_seconds)
    except BaseException:
        os._exit(126)
    status = 0
    try:
        if mode == "call":
            g = {"__name__": "__solution__", "__builtins__": builtins}
            exec(code_obj, g)
            fn = g.get(fn_name)
            if fn is None and isinstance(g.get("Solution"), type):
                fn = getattr(g["Solution"](), fn_name, None)
            if not callable(fn):
                sys.stderr.write("no function %r in the program\n" % fn_name)
                sys.stderr.flush()
                os._exit(EXIT_NO_FUNCTION)
            args = test_input if isinstance(test_input, list) else [test_input]
            result = fn(*args)
            try:
                text = json.dumps(result)
            except (TypeError, ValueError):
                text = json.dumps({"__repr__": repr(result)})
            fd = os.open(files["result"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, text.encode("utf-8"))
            os.close(fd)
        else:
            exec(code_obj, {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as e:
        code = e.code
        status = 0 if code is None or code == 0 else (code if isinstance(code, int) and 0 < code < 120 else 1)
        if not isinstance(code, (int, type(None))):
            try:
                sys.stderr.write(str(code) + "\n")
            except BaseException:
                pass
    except OSError as e:
        status = EXIT_OUTPUT_LIMIT if e.errno == 27 else EXIT_EXCEPTION  # EFBIG
        _report_exception()
    except BaseException:
        status = EXIT_EXCEPTION
        _report_exception()
    try:
        sys.stdout.flush()
    except OSError as e:
        status = EXIT_OUTPUT_LIMIT if e.errno == 27 else (status or EXIT_EXCEPTION)
    except BaseException:
        status = status or EXIT_EXCEPTION
    os._exit(status)


def _report_exception():
    try:
        etype, value, _ = sys.exc_info()
        sys.stderr.write("".join(traceback.format_exception_only(etype, value))[-2000:])
        sys.stderr.flush()
    except BaseException:
        pass


def _wait(pid, timeout):
    """(wait status, timed_out)."""
    deadline = time.monotonic() + timeout
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass
    try:
        while True:
            got, st = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                return st, False
            left = deadline - time.monotonic()
            if left <= 0:
                return None, True
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(0.005, left))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_everything_else(pid):
    """Kill the test's process group and, as PID 1 of a private namespace, every other process."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if os.getpid() == 1:
        me = os.getpid()
        for _ in range(3):  # a process forking while we sweep shows up on the next pass
            others = [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != me]
            if not others:
                break
            for p in others:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            _reap()


def _reap():
    while True:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if got == 0:
            return


def _read(path, limit):
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def _float_eq(a, b):
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return False
    if math.isnan(x) or math.isnan(y):
        return False
    return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6)


def _text_of(value):
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def same_stdout(got, expected):
    """APPS-style comparison: exact, then line-wise ignoring trailing spaces, then token-wise with float tolerance."""
    exp = _text_of(expected)
    if got == exp:
        return True
    g_lines = [line.rstrip() for line in got.strip().splitlines()]
    e_lines = [line.rstrip() for line in exp.strip().splitlines()]
    if g_lines == e_lines:
        return True
    g_tok, e_tok = got.split(), exp.split()
    if len(g_tok) != len(e_tok):
        return False
    return all(a == b or _float_eq(a, b) for a, b in zip(g_tok, e_tok))


def _deep_eq(a, b):
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
            return _float_eq(a, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_deep_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_deep_eq(a[k], b[k]) for k in a)
    return a == b


def same_return(got, expected):
    """APPS call-based comparison: equal, or equal to the single element of a one-element list."""
    if _deep_eq(got, expected):
        return True
    return isinstance(expected, list) and len(expected) == 1 and _deep_eq(got, expected[0])


def run_job(job):
    code, mode, fn_name = job["code"], job.get("mode", "stdio"), job.get("fn_name")
    tests = job["tests"]
    limits = job.get("limits", {})
    per_test = float(job.get("timeout", 4.0))
    budget = float(job.get("budget", 60.0))
    stop_on_failure = job.get("stop_on_failure", True)
    out_cap = int(limits.get("fsize") or (16 << 20))
    try:
        code_obj = compile(code, "<solution>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as e:
        return {"compile_error": "".join(traceback.format_exception_only(type(e), e))[-2000:], "results": []}
    work = job.get("workdir") or os.getcwd()
    os.makedirs(work, exist_ok=True)
    os.chdir(work)
    private = os.path.join(work, ".judge")
    os.makedirs(private, exist_ok=True)
    files = {k: os.path.join(private, k) for k in ("in", "out", "err", "result")}
    start = time.monotonic()
    results = []
    while tests:
        test = tests.pop(0)
        left = budget - (time.monotonic() - start)
        if left <= 0:
            results.append({"status": "timeout", "detail": "problem budget of %gs used up" % budget, "time": 0.0})
            if stop_on_failure:
                break
            continue
        limit = min(per_test, left)
        test_input = test.get("input")
        expected = test.pop("output", None)
        with open(files["in"], "w", encoding="utf-8") as f:
            f.write("" if mode == "call" else _text_of(test_input))  # call-based tests pass arguments instead
        for k in ("out", "err", "result"):
            try:
                os.unlink(files[k])
            except OSError:
                pass
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            # Drop every reference to the other tests' expected outputs before running the
            # program, so it cannot find them by walking the interpreter's objects.
            tests.clear()
            job.clear()
            expected = None
            _child(code_obj, mode, fn_name, test_input, files, limits, int(math.ceil(limit)) + 1)
        st, timed_out = _wait(pid, limit)
        elapsed = time.monotonic() - t0
        _kill_everything_else(pid)
        if timed_out:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            res = {"status": "timeout", "detail": "over %gs wall clock" % limit}
        else:
            res = _judge(st, mode, expected, files, out_cap)
        res["time"] = round(elapsed, 4)
        results.append(res)
        if stop_on_failure and res["status"] != "ok":
            break
    return {"compile_error": None, "results": results}


def _stderr_tail(files):
    return _read(files["err"], 1 << 20)[-600:].decode("utf-8", "replace").strip()


def _judge(st, mode, expected, files, out_cap):
    if os.WIFSIGNALED(st):
        sig = os.WTERMSIG(st)
        if sig == signal.SIGXCPU:
            return {"status": "timeout", "detail": "CPU time limit"}
        if sig == signal.SIGXFSZ:
            return {"status": "runtime_error", "detail": "output limit exceeded"}
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return {"status": "runtime_error", "detail": "killed by %s" % name}
    code = os.WEXITSTATUS(st)
    if code == EXIT_OUTPUT_LIMIT:
        return {"status": "runtime_error", "detail": "output limit exceeded"}
    if code == EXIT_NO_FUNCTION:
        return {"status": "runtime_error", "detail": _stderr_tail(files)}
    if code == 126:
        return {"status": "error", "detail": "could not set up the test process"}
    if code != 0:
        return {"status": "runtime_error", "detail": _stderr_tail(files) or "exit code %d" % code}
    if mode == "call":
        raw = _read(files["result"], out_cap)
        try:
            got = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            return {"status": "wrong_answer", "detail": "unreadable return value"}
        if same_return(got, expected):
            return {"status": "ok", "detail": ""}
        return {"status": "wrong_answer", "detail": "returned %s" % raw[:200].decode("utf-8", "replace")}
    got = _read(files["out"], out_cap + 1)
    if len(got) > out_cap:
        return {"status": "runtime_error", "detail": "output limit exceeded"}
    text = got.decode("utf-8", "replace")
    if same_stdout(text, expected):
        return {"status": "ok", "detail": ""}
    return {"status": "wrong_answer", "detail": "printed %r" % text[:200]}


def main():
    _prctl(4, 0)  # PR_SET_DUMPABLE=0: programs (same uid) cannot ptrace us or open /proc/1/fd/*
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raw = sys.stdin.buffer.read()
    job = json.loads(raw.decode("utf-8"))
    del raw
    out = run_job(job)
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
