"""The `code` verifier: APPS-style programs (call-based and stdin/stdout) and a sandbox attack
suite. Every attack must come back with a non-ok status and leave the host as it was: no
stray processes, no files written outside the sandbox, no secrets read."""

from __future__ import annotations

import json
import os
import socket
import textwrap
import uuid
from pathlib import Path

import pytest

from bstar.verifiers import SandboxUnavailable, verify, verify_many
from bstar.verifiers import sandbox as sb
from bstar.verifiers.code import extract_code

STDIO = json.dumps({"inputs": ["1 2\n", "10 -4\n", "0 0\n"], "outputs": ["3\n", "6\n", "0\n"]})
CALL = json.dumps({"fn_name": "add", "inputs": [[1, 2], [10, -4]], "outputs": [[3], [6]]})

needs_bwrap = pytest.mark.skipif(sb.sandbox_problem() is not None, reason=f"no sandbox here: {sb.sandbox_problem()}")


def fenced(code: str) -> str:
    return "Here is my solution.\n\n```python\n" + textwrap.dedent(code).strip() + "\n```\n"


def sandbox_uid_processes() -> list[int]:
    """Host processes running as the sandbox uid (nobody) or inside a sandbox's user namespace."""
    uid = sb.NOBODY if os.geteuid() == 0 else None
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            status = Path(f"/proc/{d}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and uid is not None and int(line.split()[1]) == uid:
                pids.append(int(d))
    return pids


@pytest.fixture
def clean_host():
    before = set(sandbox_uid_processes())
    yield
    after = set(sandbox_uid_processes()) - before
    assert not after, f"stray sandbox processes: {after}"


# --- extraction and test parsing -------------------------------------------------------------


def test_extract_last_fenced_block():
    text = "```python\nprint(1)\n```\nsample:\n```text\n3\n```\nfinal:\n```py\nprint(2)\n```\nok"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("```python\nprint(4)\n") == "print(4)\n"  # cut off before the closing fence
    assert extract_code("no code") is None
    assert extract_code("```python\n\n```") is None


def test_bad_tests_and_no_code_are_statuses():
    assert verify("code", "no code here", STDIO).status == "no_answer"
    assert verify("code", fenced("print(1)"), "{not json").status == "error"
    assert verify("code", fenced("print(1)"), json.dumps({"inputs": ["1"], "outputs": []})).status == "error"


# --- APPS-style programs ----------------------------------------------------------------------


@needs_bwrap
def test_stdio_and_call_based(clean_host):
    ok = verify("code", fenced("a, b = map(int, input().split())\nprint(a + b)"), STDIO)
    assert ok.correct and ok.status == "ok" and ok.detail == "passed 3/3 tests"
    sys_stdin = verify("code", fenced("import sys\nfor line in sys.stdin:\n    print(sum(map(int, line.split())))"), STDIO)
    assert sys_stdin.correct
    assert verify("code", fenced("def add(a, b):\n    return a + b"), CALL).correct
    leetcode = "class Solution:\n    def add(self, a, b):\n        return a + b"
    assert verify("code", fenced(leetcode), CALL).correct
    tuples = json.dumps({"fn_name": "pair", "inputs": [[1]], "outputs": [[[1, 2]]]})
    assert verify("code", fenced("def pair(x):\n    return (x, x + 1)"), tuples).correct
    floats = json.dumps({"inputs": ["\n"], "outputs": ["0.3333333\n"]})
    assert verify("code", fenced("print(1/3)"), floats).correct
    lines = json.dumps({"inputs": [["1 2"]], "outputs": [["3"]]})  # APPS inputs/outputs as line lists
    assert verify("code", fenced("print(sum(map(int, input().split())))"), lines).correct


@needs_bwrap
def test_failures_have_their_status(clean_host):
    wrong = verify("code", fenced("a, b = map(int, input().split())\nprint(a - b)"), STDIO)
    assert (wrong.correct, wrong.status) == (False, "wrong_answer") and "test 1/3" in wrong.detail
    partial = verify("code", fenced("a, b = map(int, input().split())\nprint(a + b if a else 7)"), STDIO)
    assert partial.status == "wrong_answer" and "passed 2/3" in partial.detail
    assert verify("code", fenced("def add(a, b:\n    return a"), CALL).status == "compile_error"
    rt = verify("code", fenced("def add(a, b):\n    return a / 0"), CALL)
    assert rt.status == "runtime_error" and "ZeroDivisionError" in rt.detail
    assert verify("code", fenced("def plus(a, b):\n    return a + b"), CALL).status == "runtime_error"
    assert verify("code", fenced("import sys\nsys.exit(3)"), STDIO).status == "runtime_error"
    assert verify("code", fenced("print(3)\nraise SystemExit(0)"), json.dumps({"inputs": [""], "outputs": ["3"]})).correct


# --- attack suite -------------------------------------------------------------------------------


def attack(code: str, expected: str = "3\n", **kw):
    io = json.dumps({"inputs": ["1 2\n"], "outputs": [expected]})
    return verify("code", fenced(code), io, **kw)


@needs_bwrap
@pytest.mark.parametrize(
    "name,code,statuses",
    [
        ("infinite loop", "while True:\n    pass", {"time_limit"}),
        ("sleep", "import time\ntime.sleep(600)", {"time_limit"}),
        ("8 GB allocation", "x = bytearray(8 * 1024 ** 3)\nprint(3)", {"runtime_error"}),
        ("recursion", "def f(n):\n    return f(n + 1)\nf(0)", {"runtime_error"}),
        (
            "recursion bomb (limit lifted)",
            "import sys\nsys.setrecursionlimit(10 ** 9)\ndef f(n):\n    return f(n + 1) + 1\nf(0)",
            {"runtime_error", "time_limit"},  # Python 3.11 frames live on the heap: RLIMIT_AS or the clock stops it
        ),
        ("huge output", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", {"runtime_error"}),
        (
            "fork bomb",
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            {"time_limit", "runtime_error"},
        ),
        (
            "kill the judge",
            "import os, signal\nfor pid in (os.getppid(), 1):\n    for s in (signal.SIGKILL, signal.SIGTERM):\n"
            "        try:\n            os.kill(pid, s)\n        except OSError:\n            pass\nprint('judge killed')",
            {"wrong_answer"},
        ),
        (
            "daemonised grandchild",
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(300)\n"
            "    os._exit(0)\nprint('daemon started')",
            {"wrong_answer"},
        ),
    ],
)
def test_attack_is_contained(name, code, statuses, clean_host):
    v = attack(code, test_timeout=2.0)
    assert v.status in statuses and not v.correct, (name, v)


@needs_bwrap
def test_output_is_capped(clean_host):
    v = attack("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", test_timeout=10.0)
    assert v.status == "runtime_error" and "output limit" in v.detail


@needs_bwrap
def test_fork_bomb_hits_rlimit_nproc(clean_host):
    # RLIMIT_NPROC counts per real uid and is ignored for root: this shows the drop worked.
    code = (
        "import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\nprint(n)"
    )
    report = sb.run_tests(textwrap.dedent(code), [{"input": "", "output": "200"}])
    detail = report["results"][0]["detail"]
    forked = int(detail.split("'")[1].strip().split("\\n")[0])
    assert 0 < forked < 64, detail


@needs_bwrap
def test_no_network(clean_host):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
        v = attack(code, expected="connected\n")
        assert v.status == "runtime_error" and not v.correct, v
        v = attack("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\nprint('out')", expected="out\n")
        assert v.status == "runtime_error"
    finally:
        server.close()


@needs_bwrap
def test_no_writes_outside(clean_host, tmp_path):
    tag = uuid.uuid4().hex
    targets = [Path.home() / f"bstar-pwn-{tag}", Path("/tmp") / f"bstar-pwn-{tag}", tmp_path / f"pwn-{tag}", Path.cwd() / f"pwn-{tag}"]
    sentinel = Path("/tmp") / f"bstar-sentinel-{tag}"
    sentinel.write_text("host")
    try:
        code = (
            "import os\nwritten = []\n"
            f"for p in {[str(t) for t in targets]!r}:\n"
            "    try:\n        open(p, 'w').write('x')\n        written.append(p)\n    except OSError:\n        pass\n"
            f"print(os.path.exists({str(sentinel)!r}))"
        )
        # expected 'True': the host's /tmp would be visible only without a private /tmp
        v = attack(code, expected="True\n")
        assert v.status == "wrong_answer" and "False" in v.detail, v
        for t in targets:
            assert not t.exists(), t
    finally:
        sentinel.unlink()


@needs_bwrap
def test_environment_secrets_are_not_visible(clean_host, monkeypatch):
    monkeypatch.setenv("BSTAR_FAKE_SECRET", "hunter2-" + uuid.uuid4().hex)
    secret = os.environ["BSTAR_FAKE_SECRET"]
    code = (
        "import os\nfound = os.environ.get('BSTAR_FAKE_SECRET', '')\n"
        "for p in ('/proc/self/environ', '/proc/1/environ', '/proc/%d/environ' % os.getppid()):\n"
        "    try:\n        found += open(p, 'rb').read().decode('utf-8', 'replace')\n    except OSError:\n        pass\n"
        "print('hunter2' in found)"
    )
    v = attack(code, expected="True\n")
    assert v.status == "wrong_answer" and secret not in v.detail and "False" in v.detail, v


@needs_bwrap
def test_project_and_home_are_not_readable(clean_host):
    code = (
        "import os\n"
        f"print(os.path.exists({str(Path(__file__).resolve())!r}) or os.path.exists('/root') or os.path.exists('/work'))"
    )
    v = attack(code, expected="True\n")
    assert v.status == "wrong_answer" and "False" in v.detail, v


@needs_bwrap
def test_per_problem_budget(clean_host):
    io = json.dumps({"inputs": ["1\n"] * 6, "outputs": ["x\n"] * 6})
    v = verify("code", fenced("import time\ntime.sleep(0.8)\nprint('x')"), io, test_timeout=2.0, budget=2.0)
    assert v.status == "time_limit" and not v.correct, v


@needs_bwrap
def test_verify_many_code(clean_host):
    good = fenced("a, b = map(int, input().split())\nprint(a + b)")
    pairs = [(good, STDIO), (fenced("while True: pass"), STDIO), (fenced("print(1"), STDIO), (good, STDIO)]
    out = verify_many("code", [(p, a, {"test_timeout": 1.0}) for p, a in pairs], workers=2)
    assert [v.status for v in out] == ["ok", "time_limit", "compile_error", "ok"]


# --- no bubblewrap ------------------------------------------------------------------------------


def test_refuses_without_bwrap_unless_allowed(monkeypatch, clean_host):
    real_which = sb.shutil.which
    monkeypatch.setattr(sb.shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real_which(name, *a, **k))
    monkeypatch.delenv("BSTAR_ALLOW_UNSANDBOXED", raising=False)
    sb._probe.cache_clear()
    try:
        good = fenced("a, b = map(int, input().split())\nprint(a + b)")
        with pytest.raises(SandboxUnavailable, match="bubblewrap"):
            verify("code", good, STDIO)
        with pytest.raises(SandboxUnavailable, match="allow_unsandboxed"):
            verify_many("code", [(good, STDIO)], workers=1)
        v = verify("code", good, STDIO, allow_unsandboxed=True)
        assert v.correct and v.status == "ok"
        monkeypatch.setenv("BSTAR_ALLOW_UNSANDBOXED", "1")
        assert verify("code", fenced("while True: pass"), STDIO, test_timeout=1.0).status == "time_limit"
        assert verify("code", fenced("x = bytearray(8 * 1024 ** 3)"), STDIO).status == "runtime_error"
    finally:
        sb._probe.cache_clear()
