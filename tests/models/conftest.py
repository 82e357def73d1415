"""Shared fixtures for the model-layer tests: a very small policy (fast) built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread: the models here are tiny (threading costs more than it brings) and the
# suite shares the machine with other test processes.
os.environ.setdefault("BSTAR_TORCH_THREADS", "1")

PLAIN = "Q: {prompt} A: "


def arith_pairs(n: int, seed: int = 0, split: str = "train"):
    from bstar.datasets.arith import generate

    rows = generate(n, seed=seed, split=split)
    return rows, [(PLAIN.format(prompt=r["prompt"]), r["meta"]["solution"]) for r in rows]


def final_answer(text: str):
    return text.split("####", 1)[1].strip() if "####" in text else None


@pytest.fixture(scope="session")
def micro_policy(tmp_path_factory) -> str:
    """A 2-layer, 64-wide random-init policy: what most tests need, cheap to train and sample."""
    from bstar.models.tiny import build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("micro") / "init", hidden=64, layers=2, heads=4, seed=0)


@pytest.fixture(scope="session")
def trained_micro(tmp_path_factory, micro_policy) -> str:
    """The micro policy after a short SFT on arith (it has learned the output format and EOS)."""
    from bstar.models.trainer import train_sft

    _, pairs = arith_pairs(512)
    out = tmp_path_factory.mktemp("micro") / "sft"
    info = train_sft(pairs, micro_policy, out, max_steps=60, batch_size=32, lr=3e-3, log_every=1, progress=False)
    return info.path
