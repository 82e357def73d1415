"""The checks every finished run's lake must pass, whatever the model: the smoke run and the
real-model runs (tests/flows/test_real_model_runs.py) assert the same things.

    check_run_lake(root, run_id, cfg, iterations=2)
"""

from __future__ import annotations

import polars as pl
import pytest

from bstar.algorithms import balance_grid
from bstar.storage.catalog import connect
from bstar.storage.lake import Lake
from bstar.storage.schemas import TABLES


def check_every_table_filled(root: str, run_id: str, skip: tuple[str, ...] = ("annotations",)) -> None:
    con = connect(root)
    for table in set(TABLES) - set(skip):  # annotations: PRM training data only
        n = con.sql(f"SELECT count(*) FROM {table} WHERE run_id = '{run_id}'").fetchall()[0][0]
        assert n > 0, f"table {table} is empty after run {run_id}"


def check_no_duplicate_keys(root: str, run_id: str) -> None:
    lake = Lake(root)
    for table in TABLES:
        assert lake.duplicate_keys(table, run_id).is_empty(), table


def check_selections_above_threshold(root: str, run_id: str) -> int:
    """Every selected row is a stored candidate whose reward is above the round's chosen
    threshold; returns how many rows were selected."""
    con = connect(root)
    bad = con.sql(
        f"""
        SELECT s.iteration, s.query_id, s.sample_idx, r.reward, g.threshold
        FROM selections s
        JOIN search g ON g.run_id = s.run_id AND g.iteration = s.iteration AND g.chosen
        LEFT JOIN candidates c ON c.run_id = s.run_id AND c.iteration = s.iteration
             AND c.stage = 'train' AND c.query_id = s.query_id AND c.sample_idx = s.sample_idx
        LEFT JOIN rewards r ON r.run_id = s.run_id AND r.iteration = s.iteration AND r.stage = 'train'
             AND r.query_id = s.query_id AND r.sample_idx = s.sample_idx
        WHERE s.run_id = '{run_id}' AND s.sample_idx >= 0 AND (c.response IS NULL OR NOT (r.reward > g.threshold))
        """
    ).pl()
    assert bad.is_empty(), bad
    return con.sql(f"SELECT count(*) FROM selections WHERE run_id = '{run_id}'").fetchall()[0][0]


def check_search_grid(root: str, run_id: str, cfg, iterations: int) -> None:
    """The stored search grid equals the balance score recomputed from the stored search
    candidates, and the chosen cell has the best score."""
    con = connect(root)
    for it in range(1, iterations + 1):
        scored = con.sql(
            f"SELECT query_id, temperature, response, coalesce(correct, false) AS correct, reward "
            f"FROM scored WHERE run_id = '{run_id}' AND iteration = {it} AND stage = 'search'"
        ).pl()
        stored = con.sql(
            f"SELECT temperature, threshold, balance_score, n_selected, n_unique_correct, n_queries, chosen "
            f"FROM search WHERE run_id = '{run_id}' AND iteration = {it} ORDER BY temperature, threshold"
        ).pl()
        assert not stored.is_empty(), f"no search grid for round {it}"
        again = balance_grid(scored, cfg.search.thresholds, cfg.selection.target_per_query)
        assert stored.drop("chosen").equals(again.select(stored.drop("chosen").columns))
        best = stored.filter("chosen").row(0, named=True)
        assert best["balance_score"] == pytest.approx(stored["balance_score"].max())


def check_metrics(root: str, run_id: str, iterations: int, sampled: bool = True) -> pl.DataFrame:
    """Greedy Pass@1 (and, with `sampled`, Pass@k) for the start and every round, in [0, 1]."""
    m = Lake(root).read("metrics", run_id)
    greedy = m.filter(pl.col("name") == "greedy_pass@1")
    assert sorted(greedy["iteration"].to_list()) == list(range(iterations + 1))
    assert all(0.0 <= v <= 1.0 for v in greedy["value"])
    if sampled:
        passk = m.filter(pl.col("name") == "pass@k")
        assert sorted(set(passk["iteration"].to_list())) == list(range(iterations + 1))
    return m


def check_round_monitoring(root: str, run_id: str, cfg, iterations: int) -> None:
    """Every round's `balance_score` metric is the balance score of the configuration it used,
    recomputed from its own stored training candidates; the search estimate and the selection
    counts sit beside it."""
    con = connect(root)
    m = Lake(root).read("metrics", run_id).filter(pl.col("split") == "train")
    value = {(r["iteration"], r["name"]): r["value"] for r in m.iter_rows(named=True)}
    for it in range(1, iterations + 1):
        scored = con.sql(
            f"SELECT query_id, temperature, response, coalesce(correct, false) AS correct, reward "
            f"FROM scored WHERE run_id = '{run_id}' AND iteration = {it} AND stage = 'train'"
        ).pl()
        chosen = con.sql(f"SELECT threshold, balance_score FROM search WHERE run_id = '{run_id}' "
                         f"AND iteration = {it} AND chosen").fetchall()
        threshold = chosen[0][0] if chosen else cfg.search_plan()["thresholds"][0]
        again = balance_grid(scored, [threshold], cfg.selection.target_per_query)["balance_score"][0]
        assert value[(it, "balance_score")] == pytest.approx(again, abs=1e-12)
        if chosen:
            assert value[(it, "search_balance_score")] == pytest.approx(chosen[0][1], abs=1e-12)
        own = con.sql(f"SELECT count(*) FROM selections WHERE run_id = '{run_id}' AND iteration = {it} "
                      "AND sample_idx >= 0").fetchall()[0][0]
        assert value[(it, "selected")] == own and value[(it, "policy_kept")] == float(own == 0 and not cfg.selection.include_gold)


def check_run_lake(root: str, run_id: str, cfg, iterations: int) -> None:
    check_every_table_filled(root, run_id)
    check_no_duplicate_keys(root, run_id)
    check_selections_above_threshold(root, run_id)
    check_search_grid(root, run_id, cfg, iterations)
    check_metrics(root, run_id, iterations, sampled=bool(cfg.eval.k))
    check_round_monitoring(root, run_id, cfg, iterations)


# A fresh interpreter that imports nothing of bstar: what a user's script, or vLLM's loader, sees.
_FRESH_LOAD = r"""
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path, chat = sys.argv[1], sys.argv[2] == "1"
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
text = "What is 2+3?"
if chat:
    text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
ids = tok(text, return_tensors="pt", add_special_tokens=not chat)
out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
print(json.dumps({"new_tokens": int(out.shape[1] - ids["input_ids"].shape[1]), "arch": type(model).__name__,
                  "chat_template": tok.chat_template is not None}))
"""


def check_hf_checkpoint(path: str, chat: bool = False) -> dict:
    """A checkpoint a run wrote is a standard Hugging Face directory: the files vLLM's loader
    reads (config with architectures, safetensors weights, tokenizer, generation config, and the
    chat template for an instruct model), loadable with AutoModelForCausalLM / AutoTokenizer alone
    in a fresh process."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    p = Path(path)
    config = json.loads((p / "config.json").read_text())
    assert config.get("architectures") and config.get("model_type"), config
    weights = sorted(f.name for f in p.glob("*.safetensors"))
    assert weights, f"no safetensors weights in {path}"
    if len(weights) > 1:
        assert (p / "model.safetensors.index.json").is_file()
    assert (p / "tokenizer_config.json").is_file() and ((p / "tokenizer.json").is_file() or (p / "tokenizer.model").is_file())
    assert (p / "generation_config.json").is_file()
    if chat:
        assert (p / "chat_template.jinja").is_file() or "chat_template" in json.loads((p / "tokenizer_config.json").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _FRESH_LOAD, str(p), "1" if chat else "0"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["new_tokens"] >= 1, out
    if chat:
        assert out["chat_template"], out
    return out
