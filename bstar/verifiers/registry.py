"""Name -> verifier function, plus the guarded single call every path goes through.

Built-ins are registered by dotted path so that importing `bstar.verifiers` imports neither
math-verify nor sympy; a verifier's module is imported the first time it is used.

    register_verifier("mine", "my_pkg.grading:verify_mine")       # dotted path, imported lazily
    register_verifier("mine2", my_function, timeout=3.0)            # or a module-level function
    get_verifier("pkg.mod:fn")                                       # a dotted path works as a name
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from bstar.verifiers.base import ERROR, NO_ANSWER, Verdict


class SandboxUnavailable(RuntimeError):
    """The code verifier cannot sandbox programs here and unsandboxed runs were not allowed."""


@dataclass(frozen=True)
class VerifierSpec:
    name: str
    target: str | Callable  # "package.module:function" or the function itself
    # Run `verify()` of this verifier in a worker process with a hard wall-clock kill; set for
    # verifiers that can hang inside C code (math-verify/sympy).
    isolate: bool = False
    timeout: float = 10.0  # default hard limit per item in verify_many (seconds)
    preflight: str | Callable | None = None  # called once with the options before a batch
    description: str = ""
    # `key(response, answer) -> str | None`, for verifiers whose verdict is a function of the
    # answer they extract (and the gold answer) alone: responses of one query with the same key
    # share one verdict, so a stage grades each distinct answer once (bstar.verifiers.distinct).
    # Cheap and pure (it runs in the caller's process); None for verifiers that read the whole
    # response (step checks, programs).
    answer_key: str | Callable | None = None
    _resolved: dict = field(default_factory=dict, compare=False, repr=False)

    def function(self) -> Callable:
        if "fn" not in self._resolved:
            self._resolved["fn"] = resolve(self.target)
        return self._resolved["fn"]

    def key_function(self) -> Callable | None:
        if self.answer_key is None:
            return None
        if "key" not in self._resolved:
            self._resolved["key"] = resolve(self.answer_key)
        return self._resolved["key"]

    def run_preflight(self, options: dict) -> None:
        if self.preflight is not None:
            resolve(self.preflight)(**options)


_REGISTRY: dict[str, VerifierSpec] = {}
_LOCK = threading.Lock()


def resolve(target: str | Callable) -> Callable:
    """`"package.module:function"` -> the function (a callable is returned as is)."""
    if callable(target):
        return target
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"expected 'package.module:function', got {target!r}")
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} for {target!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (from {target!r})") from None
    if not callable(obj):
        raise ValueError(f"{target!r} is not callable")
    return obj


def register_verifier(
    name: str,
    target: str | Callable,
    *,
    isolate: bool = False,
    timeout: float = 10.0,
    preflight: str | Callable | None = None,
    description: str = "",
    answer_key: str | Callable | None = None,
    replace: bool = False,
) -> VerifierSpec:
    """Add a verifier `fn(response, answer, **options) -> Verdict` (or -> bool) under `name`.
    `answer_key(response, answer) -> str | None` declares it answer-only: its verdict depends on
    that key (the extracted answer) and `answer` alone, so a stage grades each distinct key once."""
    if not name or not isinstance(name, str):
        raise ValueError(f"verifier name must be a non-empty string, got {name!r}")
    if isinstance(target, str) and ":" not in target:
        raise ValueError(f"verifier {name!r}: expected 'package.module:function', got {target!r}")
    spec = VerifierSpec(name, target, isolate, float(timeout), preflight, description, answer_key)
    with _LOCK:
        old = _REGISTRY.get(name)
        if old is not None and not replace and old.target != target:
            raise ValueError(f"verifier {name!r} is already registered ({old.target!r}); pass replace=True")
        _REGISTRY[name] = spec
    return spec


def get_verifier(name: str) -> VerifierSpec:
    """The spec registered as `name`; a dotted path `pkg.mod:fn` is registered on first use."""
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if isinstance(name, str) and ":" in name:
        resolve(name)  # fail now, with the import error, rather than per item
        return register_verifier(name, name)
    known = ", ".join(sorted(_REGISTRY))
    raise KeyError(f"unknown verifier {name!r}; known: {known} (or pass 'package.module:function')")


def verifier_names() -> list[str]:
    return sorted(_REGISTRY)


def call_verifier(fn: Callable, response, answer, options: dict) -> Verdict:
    """One guarded call: whatever the model wrote, the result is a Verdict, never an exception."""
    if response is None:
        return Verdict(False, None, NO_ANSWER, "no response")
    try:
        out = fn(response, answer, **options)
    except SandboxUnavailable:
        raise  # a machine-setup problem, not a verdict on the response: fail fast
    except RecursionError:
        return Verdict(False, None, ERROR, "RecursionError in verifier")
    except Exception as e:
        return Verdict(False, None, ERROR, f"{type(e).__name__}: {str(e)[:300]}")
    if isinstance(out, Verdict):
        return out
    if isinstance(out, bool):  # user verifiers may return a plain bool
        return Verdict(out, None, "ok", "")
    return Verdict(False, None, ERROR, f"verifier returned {type(out).__name__}, not Verdict/bool")


# Built-ins. The hard timeouts are per item in verify_many; the code verifier's default is its
# per-problem budget plus room for the sandbox to start and report.
# Answer-only verifiers name their extraction (`answer_key`); arith-steps and code read the whole
# response and are graded once per distinct response instead.
register_verifier(
    "arith", "bstar.verifiers.arith:verify_arith", timeout=5.0, description="#### integer",
    answer_key="bstar.verifiers.arith:answer_key",
)
register_verifier(
    "arith-steps", "bstar.verifiers.arith:verify_arith_steps", timeout=5.0, description="#### integer, every step right"
)
register_verifier(
    "gsm8k", "bstar.verifiers.gsm8k:verify_gsm8k", timeout=5.0, description="GSM8K number",
    answer_key="bstar.verifiers.gsm8k:answer_key",
)
register_verifier(
    "math",
    "bstar.verifiers.math_answer:verify_math",
    isolate=True,
    timeout=10.0,
    description="\\boxed{} / # Answer via math-verify",
    answer_key="bstar.verifiers.math_answer:answer_key",
)
register_verifier(
    "multiple_choice",
    "bstar.verifiers.multiple_choice:verify_multiple_choice",
    timeout=5.0,
    description="answer label through the item's label list",
    answer_key="bstar.verifiers.multiple_choice:answer_key",
)
register_verifier(
    "code",
    "bstar.verifiers.code:verify_code",
    timeout=90.0,
    preflight="bstar.verifiers.code:preflight",
    description="APPS tests in a bubblewrap sandbox",
)
