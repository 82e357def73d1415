"""Grade each distinct answer once, give every candidate its own verdict.

    from bstar.verifiers.distinct import VerdictCache, verify_distinct
    cache = VerdictCache()                       # one per stage: shared across its chunks
    verdicts = verify_distinct("gsm8k", frame, cache, workers=2, timeout=5.0)
    # frame: query_id, sample_idx, response, answer -> query_id, sample_idx, correct, extracted, status
    cache.verified, cache.candidates             # grader calls made vs candidates seen

A paper-sized round samples 64 responses per query; many are identical (low temperature) and far
more state the same final answer. Two levels of sharing, both exact:
- identical responses to one query share one verdict (every verifier is a function of its input);
- for answer-only verifiers (registered with an `answer_key`: arith, gsm8k, math,
  multiple_choice) responses of one query with the same extracted answer share one verdict,
  because their verdict depends on that answer and the gold answer alone. The key is computed
  here, in-process, once per distinct response; the grading (sympy for `math`) runs in the
  worker pool once per distinct key.
Verifiers without an answer key (`arith-steps`, `code`) are graded once per distinct response,
keyed by a 128-bit BLAKE2 digest of its text so that the cache holds no response text.

The cache lives as long as a stage: its size is the number of distinct keys, not of candidates.
A scorer failure (`timeout`, `error`) is shared like any verdict: a key that timed out once is not
graded again, so every copy reports the same status.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import polars as pl

from bstar.verifiers.base import SCORER_FAILURES, Verdict
from bstar.verifiers.registry import get_verifier

__all__ = ["VerdictCache", "verify_distinct", "VERDICT_SCHEMA"]

VERDICT_SCHEMA = {"correct": pl.Boolean, "extracted": pl.String, "status": pl.String}


class VerdictCache:
    """(query_id, key) -> Verdict for one stage, with the counts a stage reports."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[str, str], Verdict] = {}
        self.verified = 0  # grader calls made
        self.candidates = 0  # candidate rows seen
        self.distinct_responses = 0  # distinct (query, response) rows, summed over chunks

    def __len__(self) -> int:
        return len(self.verdicts)


def _digest(text) -> str:
    raw = b"\x00" if text is None else text.encode("utf-8", "surrogatepass")
    return "d:" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def _keys(key_fn: Callable | None, responses: list, answers: list) -> list[str]:
    """One cache key per distinct response: its answer key when the verifier declares one."""
    if key_fn is None:
        return [_digest(r) for r in responses]
    out = []
    for r, a in zip(responses, answers):
        try:
            k = key_fn(r, a)
        except Exception:  # a key function must never decide a verdict: grade this response alone
            out.append(_digest(r))
            continue
        out.append("none" if k is None else "k:" + str(k))
    return out


def verify_distinct(
    name: str,
    frame: pl.DataFrame,
    cache: VerdictCache,
    *,
    workers: int | None = None,
    timeout: float | None = None,
) -> pl.DataFrame:
    """Verdict columns for every row of `frame` (query_id, sample_idx, response, answer), in
    `frame`'s order, grading only the (query, key) pairs `cache` has not seen."""
    from bstar.verifiers import verify_many

    spec = get_verifier(name)
    # identical responses to one query: one row, carrying the sample indices it stands for
    distinct = frame.group_by("query_id", "response", maintain_order=True).agg(
        pl.col("sample_idx"), pl.col("answer").first()
    )
    qids = distinct["query_id"].to_list()
    responses = distinct["response"].to_list()
    answers = distinct["answer"].to_list()
    keys = _keys(spec.key_function(), responses, answers)
    todo: dict[tuple[str, str], int] = {}
    for i, qk in enumerate(zip(qids, keys)):
        if qk not in cache.verdicts and qk not in todo:
            todo[qk] = i
    if todo:
        verdicts = verify_many(name, [(responses[i], answers[i]) for i in todo.values()], workers=workers, timeout=timeout)
        cache.verdicts.update(zip(todo, verdicts))
    cache.verified += len(todo)
    cache.candidates += frame.height
    cache.distinct_responses += distinct.height
    got = [cache.verdicts[qk] for qk in zip(qids, keys)]
    failed = [v.status in SCORER_FAILURES for v in got]
    per_distinct = distinct.select("query_id", "sample_idx").with_columns(
        pl.Series("correct", [None if f else bool(v.correct) for v, f in zip(got, failed)], dtype=pl.Boolean),
        pl.Series("extracted", [v.extracted for v in got], dtype=pl.String),
        pl.Series("status", [v.status for v in got], dtype=pl.String),
    )
    return frame.select("query_id", "sample_idx").join(
        per_distinct.explode("sample_idx"), on=["query_id", "sample_idx"], how="left", maintain_order="left"
    )
