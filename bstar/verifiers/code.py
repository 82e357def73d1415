"""APPS-style code verifier: the response's last fenced code block, run against the item's tests
in the bubblewrap sandbox (bstar.verifiers.sandbox).

    verify_code(response, input_output)        # input_output: APPS JSON string or dict
    verify_code(response, io, test_timeout=4.0, budget=60.0, allow_unsandboxed=False)

Through the registry: `verify("code", response, io, test_timeout=2.0)`; `timeout=` there is the
hard wall-clock limit of `verify_many` (default 90 s, above the per-problem budget).

`answer` is APPS's `input_output`: `{"inputs": [...], "outputs": [...], "fn_name"?: str}`, as a
JSON string or a dict, or a dict `{"input_output": <that>, "fn_name"?: ...}`. With `fn_name` the
tests are call-based (inputs are argument lists; a top-level function or a `Solution` method);
without it they are stdin/stdout.

Statuses: `ok` (all tests pass; `correct=True`), `compile_error`, `runtime_error`, `time_limit`
(a test ran past `test_timeout`, its CPU limit, or the problem's `budget` ran out: a wrong answer),
`wrong_answer` (the first failing test's), `no_answer` (no fenced block), `error` (bad tests
JSON or a sandbox failure), `timeout` (the sandbox itself had to be killed: no verdict). `detail` says which test failed and how many passed; `extracted`
is the program text.
"""

from __future__ import annotations

import json
import re

from bstar.verifiers.base import COMPILE_ERROR, ERROR, NO_ANSWER, OK, TIME_LIMIT, TIMEOUT, Verdict, as_text
from bstar.verifiers.registry import SandboxUnavailable

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*)\Z", re.DOTALL)
_NON_PYTHON = {"text", "txt", "plaintext", "output", "input", "bash", "sh", "shell", "console", "json"}


def extract_code(response) -> str | None:
    """The last fenced code block (```python ... ``` or ``` ... ```), skipping blocks tagged as
    sample input/output; an unclosed last fence (a truncated generation) runs to the end."""
    text = as_text(response)
    if text is None:
        return None
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(text)]
    if text.count("```") % 2 == 1:  # the last fence was opened and never closed: cut-off generation
        m = _OPEN_FENCE_RE.match(text[text.rfind("```") :])
        if m:
            blocks.append((m.group(1).lower(), m.group(2)))
    code_blocks = [body for lang, body in blocks if lang not in _NON_PYTHON]
    if not code_blocks:
        return None
    code = code_blocks[-1]
    return code if code.strip() else None


def parse_tests(answer) -> tuple[list[dict], str | None]:
    """(tests as [{"input", "output"}], fn_name) from an APPS `input_output` in any accepted form."""
    obj = answer
    if isinstance(obj, (bytes, bytearray)):
        obj = obj.decode("utf-8")
    if isinstance(obj, str):
        obj = json.loads(obj)
    if not isinstance(obj, dict):
        raise ValueError(f"tests must be a JSON object, got {type(obj).__name__}")
    fn_name = obj.get("fn_name")
    if "input_output" in obj:
        inner = obj["input_output"]
        inner = json.loads(inner) if isinstance(inner, str) else inner
        if not isinstance(inner, dict):
            raise ValueError("input_output must be a JSON object")
        fn_name = fn_name or inner.get("fn_name")
        obj = inner
    inputs, outputs = obj.get("inputs"), obj.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError("tests need list fields 'inputs' and 'outputs'")
    if len(inputs) != len(outputs):
        raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
    if not inputs:
        raise ValueError("no tests")
    if fn_name is not None and not isinstance(fn_name, str):
        raise ValueError("fn_name must be a string")
    return [{"input": i, "output": o} for i, o in zip(inputs, outputs)], fn_name or None


def preflight(allow_unsandboxed: bool | None = None, python: str | None = None, **_ignored) -> None:
    """Raise SandboxUnavailable now (before a batch) when programs cannot be sandboxed here."""
    from bstar.verifiers.sandbox import SandboxConfig, sandbox_problem, unavailable_message

    cfg = SandboxConfig(allow_unsandboxed=allow_unsandboxed, python=python)
    problem = sandbox_problem(cfg)
    if problem is not None and not cfg.unsandboxed_allowed():
        raise SandboxUnavailable(unavailable_message(problem))


def verify_code(
    response,
    answer,
    *,
    test_timeout: float = 4.0,
    budget: float = 60.0,
    memory_mb: int = 1024,
    max_tests: int | None = None,
    stop_on_failure: bool = True,
    allow_unsandboxed: bool | None = None,
    sandbox: bool | None = None,
    python: str | None = None,
) -> Verdict:
    from bstar.verifiers.sandbox import SandboxConfig, run_tests

    code = extract_code(response)
    if code is None:
        return Verdict(False, None, NO_ANSWER, "no fenced code block in the response")
    try:
        tests, fn_name = parse_tests(answer)
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        return Verdict(False, code, ERROR, f"bad tests: {e}")
    if max_tests is not None:
        tests = tests[:max_tests]
    cfg = SandboxConfig(
        timeout=float(test_timeout),
        budget=float(budget),
        memory_bytes=int(memory_mb) << 20,
        stop_on_failure=stop_on_failure,
        allow_unsandboxed=allow_unsandboxed,
        python=python,
    )
    n = len(tests)
    try:
        report = run_tests(code, tests, mode="call" if fn_name else "stdio", fn_name=fn_name, config=cfg, sandbox=sandbox)
    except SandboxUnavailable:
        raise
    except OSError as e:
        return Verdict(False, code, ERROR, f"cannot start the sandbox: {e}")
    if report.get("error"):
        status = TIMEOUT if report.get("timed_out") else ERROR
        return Verdict(False, code, status, report["error"])
    if report.get("compile_error"):
        return Verdict(False, code, COMPILE_ERROR, report["compile_error"].strip()[-500:])
    results = report.get("results", [])
    passed = sum(r["status"] == OK for r in results)
    if passed == n:
        return Verdict(True, code, OK, f"passed {n}/{n} tests")
    failing = next((i for i, r in enumerate(results) if r["status"] != OK), None)
    if failing is None:  # the runner stopped early without a failure: should not happen
        return Verdict(False, code, ERROR, f"only {len(results)} of {n} tests ran")
    r = results[failing]
    # the runner says `timeout` for a program over its limits; here that is a judged failure
    status = TIME_LIMIT if r["status"] == TIMEOUT else r["status"]
    return Verdict(False, code, status, f"test {failing + 1}/{n}: {r.get('detail', '')[:300]}; passed {passed}/{n}")
