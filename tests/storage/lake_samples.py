"""Small realistic rows for every lake table (shared by the storage tests)."""

from __future__ import annotations

import datetime as dt


def candidates_rows(n_queries: int = 3, k: int = 4, temperature: float = 0.7, tag: str = "") -> list[dict]:
    return [
        {
            "query_id": f"q{q}",
            "sample_idx": i,
            "temperature": temperature,
            "policy": "ckpt-0",
            "response": f"A: 1+{q}={1 + q}. #### {1 + q if i % 2 == 0 else 0}{tag}",
            "n_tokens": 12 + i,
            "finish_reason": "stop",
        }
        for q in range(n_queries)
        for i in range(k)
    ]


def rewards_rows(n_queries: int = 3, k: int = 4, scorer: str = "arith") -> list[dict]:
    # query q0: samples 0,2 correct; q1: sample 0 correct (1 of 4 after the cut below); q2: none
    rows = []
    for q in range(n_queries):
        for i in range(k):
            correct = (q == 0 and i % 2 == 0) or (q == 1 and i == 0)
            rows.append(
                {
                    "query_id": f"q{q}",
                    "sample_idx": i,
                    "scorer": scorer,
                    "correct": correct,
                    "extracted": str(1 + q) if correct else "0",
                    "status": "ok" if i != 3 else "no_answer",
                    "step_scores": [0.9, 0.8 if correct else 0.1],
                    "prm": 0.6 if correct else -0.8,
                    "reward": (1.0 if correct else 0.0) + (0.6 if correct else -0.8),
                }
            )
    return rows


SAMPLE = {
    "runs": lambda: [{"config": '{"method": "bstar"}', "created_at": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "code_version": "abc123"}],
    "queries": lambda: [
        {"split": "train", "query_id": "q0", "dataset": "arith", "prompt": "Q: 1+0=?", "answer": "1", "meta": '{"steps": 1}'},
        {"split": "test", "query_id": "t0", "dataset": "arith", "prompt": "Q: 2+2=?", "answer": "4", "meta": None},
    ],
    "candidates": candidates_rows,
    "rewards": rewards_rows,
    "search": lambda: [
        {"temperature": t, "threshold": th, "balance_score": 0.1 * i, "n_selected": 10 * i, "n_unique_correct": 5 * i, "n_queries": 600, "chosen": i == 3}
        for i, (t, th) in enumerate([(0.5, 0.0), (0.5, 0.5), (1.0, 0.0), (1.0, 0.5)])
    ],
    "selections": lambda: [{"query_id": "q0", "sample_idx": 0, "reward": 1.6, "temperature": 0.7, "response": "A: 1+0=1. #### 1"}],
    "metrics": lambda: [
        {"split": "test", "name": "pass@1", "k": 1, "s": None, "value": 0.55},
        {"split": "test", "name": "pass@k-s", "k": 8, "s": 2, "value": 0.61},
    ],
    "checkpoints": lambda: [{"step": 100, "path": "runs/r1/ckpt-1", "mode": "online"}],
    "annotations": lambda: [
        {"query_id": "q0", "sample_idx": 0, "step": i, "n_steps": 2, "step_text": text, "prefix": prefix,
         "hard_label": ok, "soft_label": soft, "n_rollouts": 4, "n_correct": int(4 * soft),
         "final_correct": False, "true_label": ok, "completer": "runs/r1/ckpt-1"}
        for i, (text, prefix, ok, soft) in enumerate(
            [("1+2=3", "1+2=3", True, 0.75), ("3+4=8", "1+2=3; 3+4=8", False, 0.0)]
        )
    ],
}
STAGES = {"candidates": "train", "rewards": "train"}
