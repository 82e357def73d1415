"""Imported once by the verifier pool's fork server, so that every worker forked from it starts
with the heavy grading libraries already loaded (sympy alone takes about a second to import)."""

try:  # math-verify is a core dependency, but a broken install must not break other verifiers
    import math_verify  # noqa: F401
    import math_verify.grader  # noqa: F401
    import math_verify.parser  # noqa: F401
except Exception:  # pragma: no cover
    pass

try:  # warm the parser caches too (regexes, the ANTLR grammar) so a forked worker's first item is fast
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    math_verify.parse("\\boxed{\\frac{1}{2}}", parsing_timeout=None)
except Exception:  # pragma: no cover
    pass
