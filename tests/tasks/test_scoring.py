"""The scoring stage at 1/100 of a paper round's shape: each distinct (query, answer) graded once,
every candidate its own `rewards` row with the status a per-row call gives, chunked reads and
writes giving the same rows as one chunk, and a rerun with another chunk size leaving no extra rows."""

from __future__ import annotations

import json

import polars as pl
import pytest

from bstar import code_version
from bstar.config import parse_config
from bstar.storage.lake import Lake
from bstar.tasks.data import record_run
from bstar.tasks.scoring import score_candidates
from bstar.verifiers import register_verifier, verify

RUN = "score-test"
K = 8  # samples per query and temperature


@pytest.fixture
def gsm8k_rows(shared_data):
    return [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:30]]


def config(root, shared_data, chunk_rows: int, **reward) -> str:
    path = str(shared_data / "gsm8k" / "test.jsonl")
    raw = {
        "name": "score-test",
        "model": {"name_or_path": "tiny"},
        "data": {"train": {"name": "gsm8k", "path": path, "split": "train", "limit": 30},
                 "test": [{"name": "gsm8k", "path": path, "split": "test", "offset": 30, "limit": 4}]},
        "reward": reward,
        "storage": {"root": str(root), "chunk_rows": chunk_rows},
    }
    return parse_config(raw).to_json()


def responses_for(gold: str, solution: str) -> list[str]:
    """K samples of one query at one temperature: a worked solution three times, the same answer
    written another way twice, a wrong answer twice (two texts), no number once."""
    body = solution.rsplit("####", 1)[0].strip()
    wrong = str(int(float(gold)) + 1)
    return [f"{body}\n#### {gold}"] * 3 + [f"So the answer is {gold}."] * 2 + [
        f"{body}\n#### {wrong}", f"I think it is {wrong}.\n#### {wrong}", "I do not know."]


def write_candidates(lake: Lake, rows: list[dict], stage: str = "search") -> pl.DataFrame:
    """Two temperatures of a stage, one part each (as the sampler writes them)."""
    frames = []
    for t_idx, t in enumerate([0.5, 0.9]):
        qids, texts = [], []
        queries = lake.read("queries", RUN, 0).filter(pl.col("split") == "train")
        sol = {r["question"]: r["answer"] for r in rows}
        for q, prompt, gold in queries.select("query_id", "prompt", "answer").iter_rows():
            for text in responses_for(gold, sol[prompt]):
                qids.append(q)
                texts.append(text)
        df = pl.DataFrame({"query_id": qids, "response": texts}).with_columns(
            (pl.int_range(pl.len()).over("query_id") + t_idx * K).cast(pl.Int32).alias("sample_idx"),
            pl.lit(t).alias("temperature"), pl.lit("policy-0").alias("policy"), pl.lit(50, pl.Int32).alias("n_tokens"),
            pl.lit("stop").alias("finish_reason"),
        )
        lake.write("candidates", df, RUN, 1, stage, part=f"part-{stage}-t{t}")
        frames.append(df)
    return pl.concat(frames)


def rewards_of(root) -> pl.DataFrame:
    return Lake(str(root)).read("rewards", RUN, 1, "search").drop("run_id", "iteration", "stage").sort(
        "query_id", "sample_idx")


def test_each_distinct_answer_graded_once_and_chunks_change_nothing(tmp_path, shared_data, gsm8k_rows):
    outs = {}
    for name, chunk in [("one", 1_000_000), ("chunked", 37)]:
        root = tmp_path / name
        cfg_json = config(root, shared_data, chunk)
        record_run.fn(RUN, cfg_json, code_version())
        cands = write_candidates(Lake(str(root)), gsm8k_rows)
        outs[name] = score_candidates.fn(RUN, 1, "search", "gsm8k", cfg_json)
    one, chunked = outs["one"], outs["chunked"]
    n = 30 * K * 2
    # per query: the right answer, the wrong one, no number, over both temperatures: 3 calls
    assert one["scored"] == chunked["scored"] == n
    assert one["verifications"] == chunked["verifications"] == 30 * 3
    assert one["distinct_responses"] == 30 * 5 * 2
    assert one["chunks"] == 2 and chunked["chunks"] >= n // 37  # whole queries (8 rows) per chunk of ~37
    a, b = rewards_of(tmp_path / "one"), rewards_of(tmp_path / "chunked")
    assert a.height == n and a.equals(b)
    assert len(Lake(str(tmp_path / "chunked")).parts("rewards")) == chunked["chunks"]
    # every row carries the verdict a per-row call gives it
    truth = cands.join(Lake(str(tmp_path / "one")).read("queries", RUN, 0).select("query_id", "answer"), on="query_id")
    truth = truth.sort("query_id", "sample_idx")
    verdicts = [verify("gsm8k", r, g) for r, g in zip(truth["response"], truth["answer"])]
    assert a["status"].to_list() == [v.status for v in verdicts]
    assert a["correct"].to_list() == [v.correct for v in verdicts]
    assert a["reward"].to_list() == [float(v.correct) for v in verdicts]
    assert a["extracted"].to_list() == [v.extracted for v in verdicts]
    assert one["correct"] == 30 * 5 * 2 and one["status"] == {"no_answer": 60, "ok": n - 60}

    # rerun the chunked lake as one chunk: its old parts are pruned, not left as duplicates
    cfg_json = config(tmp_path / "chunked", shared_data, 1_000_000)
    again = score_candidates.fn(RUN, 1, "search", "gsm8k", cfg_json)
    assert again["chunks"] == 2 and len(Lake(str(tmp_path / "chunked")).parts("rewards")) == 2
    assert rewards_of(tmp_path / "chunked").equals(a)


SLOW_GRADER = """
import time
from bstar.verifiers.gsm8k import extract_answer, verify_gsm8k

def grade(response, answer):
    # gsm8k's verdict, but the grader hangs on a wrong answer
    got = extract_answer(response)
    if got is not None and got != answer:
        time.sleep(30)
    return verify_gsm8k(response, answer)
"""


def test_scorer_failures_keep_their_status_on_every_copy(tmp_path, shared_data, gsm8k_rows, monkeypatch):
    # a module of its own: the pool's workers import it inside the item's time limit
    (tmp_path / "slow_grader_mod.py").write_text(SLOW_GRADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    register_verifier("test-slow-wrong", "slow_grader_mod:grade", timeout=5.0,
                      answer_key="bstar.verifiers.gsm8k:answer_key", replace=True)
    root = tmp_path / "slow"
    cfg_json = config(root, shared_data, 100, verifier="test-slow-wrong", verify_timeout_s=1.0, verify_workers=2)
    record_run.fn(RUN, cfg_json, code_version())
    lake = Lake(str(root))
    # three queries only: each wrong answer costs one 1 s timeout
    write_candidates(lake, gsm8k_rows)
    keep = lake.read("candidates", RUN, 1, "search").filter(
        pl.col("query_id").is_in(lake.read("queries", RUN, 0)["query_id"].head(3).to_list()))
    lake.delete_partition("candidates", RUN, 1, "search")
    lake.write("candidates", keep.drop("run_id", "iteration", "stage"), RUN, 1, "search")
    out = score_candidates.fn(RUN, 1, "search", "test-slow-wrong", cfg_json)
    r = rewards_of(root)
    assert out["verifications"] == 3 * 3 and out["scored"] == r.height == 3 * K * 2
    # the two wrong texts of a query (both temperatures) share one timed-out verdict
    assert out["status"] == {"no_answer": 6, "ok": 30, "timeout": 12}
    failed = r.filter(pl.col("status") == "timeout")
    assert failed["correct"].null_count() == failed["reward"].null_count() == failed.height == 12


def test_search_and_selection_read_in_chunks_give_the_same_grid_and_selections(tmp_path, shared_data, gsm8k_rows):
    from bstar.tasks.selection import search_config, select_data

    out = {}
    for name, chunk in [("one", 1_000_000), ("chunked", 29)]:
        root = tmp_path / name
        cfg_json = config(root, shared_data, chunk)
        record_run.fn(RUN, cfg_json, code_version())
        lake = Lake(str(root))
        for stage in ("search", "train"):
            write_candidates(lake, gsm8k_rows, stage)
            score_candidates.fn(RUN, 1, stage, "gsm8k", cfg_json)
        chosen = search_config.fn(RUN, 1, "gsm8k", [-0.5, 0.0, 0.5], {}, cfg_json)
        selected = select_data.fn(RUN, 1, "gsm8k", 0.5, cfg_json)
        out[name] = (chosen, selected, lake.read("search", RUN, 1).drop("run_id", "iteration", "stage"),
                     lake.read("selections", RUN, 1, "train").drop("run_id", "iteration", "stage").sort("query_id", "sample_idx"))
    (c1, s1, g1, sel1), (c2, s2, g2, sel2) = out["one"], out["chunked"]
    assert c1 == c2 and s1 == s2 and g1.equals(g2) and sel1.equals(sel2)
    # per query: the three copies of the worked solution and the two of the short one are one
    # selection each, the same texts at the other temperature no more
    assert s1["selected"] == 30 * 2 and s1["correct"] == s1["selected"]
    assert g1.filter(pl.col("threshold") == 0.5)["n_unique_correct"].to_list() == [60, 60]
