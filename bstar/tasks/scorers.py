"""Scorer names: which verifier a run grades with, and where each scorer's rewards are stored.

    verifier_of(cfg)      -> "arith" or, with reward.kind answer+prm, "arith+prm"
    base_verifier(cfg)    -> the answer verifier alone
    rewards_part("arith+prm", chunk=3) -> "part-arith_prm-c00003"

Shared by the scoring stage and the PRM stages (kept apart from both so neither imports the other).
"""

from __future__ import annotations

from bstar.tasks.common import chunk_part

PRM_SUFFIX = "+prm"


def verifier_of(cfg) -> str:
    """The run's scorer: `reward.verifier`, else the training dataset's verifier; with
    `reward.kind: answer+prm` the name gets `+prm` (e.g. `arith+prm`)."""
    return base_verifier(cfg) + (PRM_SUFFIX if cfg.reward.kind == "answer+prm" else "")


def base_verifier(cfg) -> str:
    """The answer verifier alone (no PRM suffix)."""
    from bstar.datasets import DATASET_VERIFIERS

    ds = cfg.data.train
    if cfg.reward.verifier:
        return cfg.reward.verifier
    if ds.verifier:
        # a dotted-path verifier is registered under the dataset's name when the rows are loaded
        return ds.name if ":" in ds.verifier else ds.verifier
    return DATASET_VERIFIERS.get(ds.name, ds.name)


def rewards_part(scorer: str, chunk: int | None = None) -> str:
    """A scorer's part of `rewards` (part names allow no `+`: `arith+prm` -> `part-arith_prm`);
    with `chunk`, the part of that chunk of the stage's candidates."""
    base = "part-" + scorer.replace("+", "_").replace(":", "_")
    return base if chunk is None else chunk_part(base, chunk)
