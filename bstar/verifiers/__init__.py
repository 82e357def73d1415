"""Verifiers: is a sampled response correct? One module per answer format behind a small registry.

    from bstar.verifiers import verify, verify_many, check_steps

    verify("gsm8k", response, "18")                      -> Verdict(correct, extracted, status, detail)
    verify_many("math", [(response, gold), ...], workers=2, timeout=10.0) -> [Verdict, ...]
    check_steps("23+45=68; 68-12=56. #### 56", "23+45-12=?") -> [True, True]

Names: `arith`, `gsm8k`, `math`, `multiple_choice`, `code`, anything added with
`register_verifier(name, "pkg.mod:fn")`, or a dotted path `"pkg.mod:fn"` used directly as the name.

Status values (`Verdict.status`): ok, no_answer, timeout, error, compile_error, runtime_error,
wrong_answer, time_limit. `ok` means the grader ran; `correct` says whether the answer matched.
`timeout` and `error` (`SCORER_FAILURES`) mean the grader could not judge: such items get no
reward and are counted apart from wrong answers; `time_limit` is a program that was too slow,
a wrong answer. A verifier
never raises on model output. The exception is `SandboxUnavailable` from `code` when bubblewrap
cannot run and unsandboxed execution was not allowed: that is a machine-setup problem, and a
run should stop rather than score every program as an error.

What `answer` is, per verifier: arith/gsm8k the gold number (gsm8k also takes a full `#### N`
solution); math the gold LaTeX answer (or a solution with `\\boxed{}`); multiple_choice a gold
label or a dict/JSON `{"label", "labels", "choices"}`; code the APPS `input_output` JSON
(string or dict). `bstar.datasets.answer_for_verifier(row)` gives the right one for a dataset row.

Options worth knowing: `question=` (arith: adds a step summary to `detail`); for code
`test_timeout=` (per test, default 4 s), `budget=` (per problem, 60 s), `memory_mb=`,
`allow_unsandboxed=`. `timeout=` of verify/verify_many is always the hard wall-clock kill.

Isolation: `verify_many` always runs items in worker processes with a hard wall-clock kill per
item. `verify` runs in-process, except for verifiers registered with `isolate=True` (math), which
run in a one-item worker so that a sympy hang becomes `timeout` here too (`isolate=False` to opt out).
"""

from __future__ import annotations

from typing import Any, Iterable

from bstar.verifiers.arith import StepCheck, check_steps, step_details
from bstar.verifiers.base import SCORER_FAILURES, STATUSES, Verdict
from bstar.verifiers.registry import (
    SandboxUnavailable,
    VerifierSpec,
    call_verifier,
    get_verifier,
    register_verifier,
    verifier_names,
)

__all__ = [
    "SCORER_FAILURES",
    "STATUSES",
    "SandboxUnavailable",
    "StepCheck",
    "Verdict",
    "VerifierSpec",
    "check_steps",
    "get_verifier",
    "register_verifier",
    "step_details",
    "verifier_names",
    "verify",
    "verify_many",
]


def verify(name: str, response: Any, answer: Any, *, timeout: float | None = None, isolate: bool | None = None, **options) -> Verdict:
    """Grade one response. `options` go to the verifier (e.g. `question=` for arith, `allow_unsandboxed=` for code)."""
    spec = get_verifier(name)
    if isolate if isolate is not None else spec.isolate:
        return verify_many(name, [(response, answer)], workers=1, timeout=timeout, **options)[0]
    return call_verifier(spec.function(), response, answer, options)


def verify_many(
    name: str,
    pairs: Iterable[tuple],
    *,
    workers: int | None = None,
    timeout: float | None = None,
    **options,
) -> list[Verdict]:
    """Grade a batch in a process pool, in order. Each pair is `(response, answer)` or
    `(response, answer, item_options)`; a worker still busy after `timeout` seconds (default:
    the verifier's) is killed and its item recorded as `timeout`."""
    spec = get_verifier(name)
    spec.run_preflight(options)
    items = []
    for p in pairs:
        if len(p) == 3:
            items.append((p[0], p[1], {**options, **(p[2] or {})}))
        else:
            response, answer = p
            items.append((response, answer, options))
    from bstar.verifiers.pool import run_batch

    return run_batch(spec.target, items, workers=workers, timeout=timeout or spec.timeout)
