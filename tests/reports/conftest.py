"""A small hand-made lake for the report tests (no pipeline run needed).

Runs:
- ``alpha``: B-STaR-like, rounds 0..2, search grid in rounds 1 and 2, sampled metrics;
- ``beta``: online-RFT-like, rounds 0..2, no search table, sampled metrics;
- ``solo``: one round (0 and 1), greedy Pass@1 only (eval k = 0), no search, no selections.
"""

import datetime as dt
import json

import pytest

from bstar.storage.lake import Lake

PASS1 = {
    "alpha": [0.4125, 0.5375, 0.6625],
    "beta": [0.4125, 0.4750, 0.5125],
}
PASS_KS = {  # (k, s) -> per-round values, same for both runs but offset for beta
    (4, 1): [0.70, 0.78, 0.83],
    (4, 2): [0.35, 0.41, 0.47],
}
REWARD_KS = {(4, 1): [0.55, 0.61, 0.69]}
DIVERSITY = {"alpha": [0.91, 0.87, 0.84], "beta": [0.90, 0.80, 0.70]}
# search grid of alpha: temperature x threshold -> balance score per round; chosen = argmax
TEMPS = [0.6, 0.8, 1.0]
THRESHOLDS = [-0.5, 0.0, 0.5]
CHOSEN = {1: (0.8, 0.0), 2: (1.0, 0.5)}
SOLO_PASS1 = [0.3333, 0.4444]


def _metric(split, name, value, k=None, s=None):
    return {"split": split, "name": name, "k": k, "s": s, "value": value}


def balance(it, t, h):
    """Deterministic grid values; the CHOSEN cell of each round is the unique maximum."""
    if (t, h) == CHOSEN[it]:
        return 0.9 + 0.01 * it
    return round(0.1 * TEMPS.index(t) + 0.05 * THRESHOLDS.index(h) + 0.01 * it, 4)


# balance score of each round's configuration on its own training candidates (every method)
ROUND_BALANCE = {"alpha": {1: 0.41, 2: 0.47}, "beta": {1: 0.33, 2: 0.29}}


def _write_run(lake, run_id, method, rounds, sampled=True, search=False, selections=True):
    lake.write("runs", [{"config": json.dumps({"method": method}), "created_at": dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc), "code_version": "test"}], run_id)
    qs = [{"split": "train", "query_id": f"q{i}", "dataset": "arith", "prompt": f"Q: {i}+{i}=? A:", "answer": str(2 * i), "meta": None} for i in range(6)]
    qs += [{"split": "test", "query_id": f"t{i}", "dataset": "arith", "prompt": f"Q: {i}*2=? A:", "answer": str(2 * i), "meta": None} for i in range(4)]
    lake.write("queries", qs, run_id)
    for it in range(rounds):
        if run_id == "solo":
            rows = [_metric("test", "greedy_pass@1", SOLO_PASS1[it], k=1), _metric("test", "n", 9.0)]
        else:
            p = PASS1[run_id][it]
            rows = [
                _metric("test", "greedy_pass@1", p, k=1),
                _metric("test", "greedy_pass@1_se", 0.0125, k=1),
                _metric("test", "n", 100.0),
                _metric("test", "scorer_errors", 0.0),
            ]
        if sampled:
            off = 0.0 if run_id == "alpha" else -0.05
            rows.append(_metric("test", "accuracy", 0.5 + off))
            rows.append(_metric("test", "pass@k", PASS_KS[(4, 1)][it] + off, k=4))
            for (k, s), vals in PASS_KS.items():
                rows.append(_metric("test", "pass@k-s", vals[it] + off, k=k, s=s))
            for (k, s), vals in REWARD_KS.items():
                rows.append(_metric("test", "reward@k-s", vals[it] + off, k=k, s=s))
            rows.append(_metric("test", "diversity", DIVERSITY[run_id][it]))
        if search and it in CHOSEN:
            rows.append(_metric("train", "search_balance_score", balance(it, *CHOSEN[it])))
            grid = [
                {"temperature": t, "threshold": h, "balance_score": balance(it, t, h), "n_selected": 10 + it,
                 "n_unique_correct": 8, "n_queries": 6, "chosen": (t, h) == CHOSEN[it]}
                for t in TEMPS for h in THRESHOLDS
            ]
            lake.write("search", grid, run_id, it)
        if selections and it >= 1:  # the balance score of the configuration the round used
            rows.append(_metric("train", "balance_score", ROUND_BALANCE[run_id][it]))
        lake.write("metrics", rows, run_id, it)
        if selections and it >= 1:
            temp = CHOSEN[it][0] if search else 0.8
            cands, rews, sels = [], [], []
            for qi in range(6):
                for j in range(4):
                    idx = qi * 4 + j
                    # reward spread: unique best (q5/3) and unique worst (q0/0) per round
                    reward = round(-1.0 + (idx / 23) * 2.0, 4) + 0.001 * it
                    correct = reward > 0
                    resp = f"{run_id} r{it} q{qi} s{j}: {'GOOD' if correct else 'BAD'} <answer> #### {qi * 2 if correct else 99}"
                    cands.append({"query_id": f"q{qi}", "sample_idx": j, "temperature": temp, "policy": f"p{it}", "response": resp})
                    rews.append({"query_id": f"q{qi}", "sample_idx": j, "scorer": "arith", "correct": correct, "status": "ok", "reward": reward})
                    # q0 gets none selected; q1 one; others all correct ones
                    if correct and qi != 0 and not (qi == 1 and j > 0):
                        sels.append({"query_id": f"q{qi}", "sample_idx": j, "reward": reward, "temperature": temp, "response": resp})
            lake.write("candidates", cands, run_id, it, "train")
            lake.write("rewards", rews, run_id, it, "train")
            lake.write("selections", sels, run_id, it, "train")


@pytest.fixture(scope="session")
def report_lake(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("report-lake")
    lake = Lake(root)
    _write_run(lake, "alpha", "bstar", 3, search=True)
    _write_run(lake, "beta", "online-rft", 3)
    _write_run(lake, "solo", "iterative-rft", 2, sampled=False, selections=False)
    return str(root)
