"""Benchmark: one paper-sized B-STaR round through the real flow, with the model simulated.

    .venv/bin/python benchmarks/bench_paper_round.py                 # 1/8, 1/4, 1/2, 1x; the table
    .venv/bin/python benchmarks/bench_paper_round.py --scale 1       # the paper's round alone
    .venv/bin/python benchmarks/bench_paper_round.py --scoring 10    # the scoring stage alone at 10x M

What runs: `bstar_run` with one iteration of `method: bstar` and `reward: answer+prm`, at the
paper's MATH round shape (§B.2) times F: M = 11,500·F queries × K = 64 samples, the search on
600·F queries × 64 samples at temperatures 0.5–1.2 by 0.1, thresholds −1.0–1.0 by 0.1, N =
67,500·F, then greedy and 64-sample evaluation on 500·F test queries. Every stage is the
product's own: Prefect flow and tasks, lake writes, the gsm8k verifier pool, the balance grid,
selection, a fine-tune, metrics and the report. Two things are simulated, both registered here
and nowhere in the product:
- the policy: a sampler backend (`simulated`) whose responses are built from the real GSM8K rows
  of ../shared/data: the worked solution behind a restated question and an opening line (150–400
  tokens), right or with one of three wrong final answers per query, a few cut off without an
  answer. Accuracy depends on the query (a Beta-distributed skill) and falls above t = 0.8;
  a sample repeats an earlier response of its query with a probability that falls from 0.89 at
  t = 0.5 to 0.12 at t = 1.2. So low temperatures waste samples on duplicates, high ones on wrong
  answers, and the balance score has an interior argmax;
- the PRM: step scores from a hash of each step's text, higher where a solution checks its result
  (right solutions do so more often); prm = 2·min − 1, so reward = 1[correct] + prm spreads over
  [−0.8, 2] and a threshold above 0 also drops right answers with a weak step.
The fine-tune is the tiny policy for 4 optimizer steps; its inputs (the selected examples) are
built at full size.

Printed per stage: wall seconds, peak RSS of this process plus its verifier workers during the
stage, rows and bytes the stage wrote, grader calls; the stage windows come from Prefect's own
task-run records, memory from sampling psutil every 50 ms. "model" is the simulator's own time
(inside the sampling stages) plus the fine-tune; "non-model" is everything else. Each size ends
with one line

    scale=F candidates=N verifications=V distinct=D peak_rss_gib=R wall_s=W

(V: grader calls the scoring stages made; D: distinct (query, extracted answer) pairs per scored
stage, counted by DuckDB over the written rewards). Without --scale, the four sizes run in turn
(each in a fresh process, so peak RSS is that size's) and the growth exponents of wall time and
peak memory over them are printed: the slope of log(value) against log(F).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs a model hub
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from a machine without internet
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")  # as `bstar` sets it: a busy machine

GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
PAPER = {"M": 11_500, "K": 64, "search": 600, "N": 67_500, "test": 500}
SCALES = (0.125, 0.25, 0.5, 1.0)
PROBLEM_RE = re.compile(r"Problem (\d+)\.")
_CALC_RE = re.compile(r"<<[^<>]*>>")

OPENERS = [
    "Let's solve this step by step.",
    "We work through the problem carefully, one quantity at a time.",
    "First, let us write down what the problem gives us.",
    "To answer this, we track each amount in turn.",
    "Let me think about this problem step by step before answering.",
]
CONNECTIVES = ["", "So ", "Then ", "Next, ", "This means ", "Now ", "After that, "]
ASIDES = [
    "We keep the units in mind here.",
    "This uses the numbers given in the problem.",
    "Nothing else changes at this point.",
    "That is the amount we need for the next step.",
    "We can double-check this by estimating.",
]


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def gsm8k_rows() -> list[dict]:
    if not GSM8K.is_file():
        sys.exit(f"needs the real GSM8K rows at {GSM8K}")
    return [json.loads(line) for line in GSM8K.read_text().splitlines() if line.strip()]


def write_queries(path: Path, rows: list[dict], start: int, n: int) -> None:
    """n queries, numbered from `start`: query i is GSM8K row i mod 1,319 under its own id and prompt."""
    with path.open("w") as f:
        for i in range(start, start + n):
            r = rows[i % len(rows)]
            f.write(json.dumps({"id": f"bench-{i:07d}", "question": f"Problem {i}. {r['question']}",
                                "answer": r["answer"]}) + "\n")


# ----------------------------------------------------------------------------------------------
# the simulated policy
# ----------------------------------------------------------------------------------------------


def _query_facts(row: dict, qseed: int) -> dict:
    rng = random.Random(qseed)
    body, final = row["answer"].rsplit("####", 1)
    gold = final.strip().replace(",", "")
    try:
        g = int(float(gold))
    except ValueError:
        g = 7
    wrong = []
    for d in (rng.choice([1, 2, 3, 5, 10]), -rng.choice([1, 2, 4, 6]), g):  # off by a little, or doubled
        w = str(g + d)
        if w != gold and w not in wrong:
            wrong.append(w)
    return {
        "skill": rng.betavariate(1.3, 0.9),
        "gold": gold,
        "wrong": wrong or [str(g + 11)],
        "steps": [s.strip() for s in _CALC_RE.sub("", body).strip().splitlines() if s.strip()],
        "question": row["question"],
    }


def compose(facts: dict, answer: str | None, rng: random.Random, temperature: float) -> tuple[str, str]:
    """One chain-of-thought response (text, finish_reason)."""
    spread = min(1.0, temperature)  # hotter: more paraphrase
    lines = [rng.choice(OPENERS), f"The problem says: {facts['question']}"]
    steps = list(facts["steps"])
    if answer is not None and answer != facts["gold"] and steps:
        steps[-1] = re.sub(r"-?\d[\d,]*(?:\.\d+)?(?!.*\d)", answer, steps[-1]) if re.search(r"\d", steps[-1]) else steps[-1]
    for s in steps:
        lines.append((rng.choice(CONNECTIVES) if rng.random() < spread else "") + s)
        if rng.random() < 0.35 * spread + 0.1:
            lines.append(rng.choice(ASIDES))
    if answer is None:  # ran out of tokens before answering
        text = "\n".join(lines)
        return text[: max(200, int(len(text) * 0.8))], "length"
    checks = rng.random() < (0.8 if answer == facts["gold"] else 0.3)
    if checks:
        lines.append(f"Check: working backwards from {answer} gives the numbers in the problem, so it is consistent.")
    lines.append("Therefore the total is " + answer + ".")
    return "\n".join(lines) + f"\n\n# Answer\n\n{answer}", "stop"


from bstar.models.sampling import Sample, Sampler  # noqa: E402  (after the sys.path line above)


class SimulatedPolicy(Sampler):
    """A `Sampler` for the benchmark: deterministic per (query, temperature, stage seed), so chunked
    or repeated sampling returns the same candidates, like the real backends."""

    model_time = 0.0  # seconds spent inside sample(), over the process
    lock = threading.Lock()

    def __init__(self, model_path: str, **_):
        from bstar.models.loading import load_tokenizer

        self.tokenizer = load_tokenizer(model_path)
        self.rows = gsm8k_rows()
        self.max_batch_rows = None

    def sample(self, prompts, k=1, temperature=1.0, top_p=1.0, max_new_tokens=256, *, seeds=None, base_seed=0,
               stop=None, first_sample_idx=0, progress=True):
        t0 = time.perf_counter()
        out = []
        dup = min(0.95, max(0.05, 1.0 - 1.1 * (temperature - 0.4))) if temperature > 0 else 1.0
        for p, qs in zip(prompts, seeds or [0] * len(prompts)):
            i = int(PROBLEM_RE.search(p).group(1))
            facts = _query_facts(self.rows[i % len(self.rows)], qs)
            rng = random.Random(f"{base_seed}:{qs}")
            # accuracy holds up to t = 0.7 and collapses above it; cut-off and stray answers grow with t
            acc = facts["skill"] * math.exp(-(max(0.0, temperature - 0.7) / 0.3) ** 2)
            stray = 0.4 * max(0.0, temperature - 0.8)
            if temperature == 0:  # greedy: the policy's modal answer
                answer = facts["gold"] if facts["skill"] > 0.5 else facts["wrong"][0]
                text, why = compose(facts, answer, random.Random(qs), 0.0)
                out.append([Sample(text, len(text) // 4, why, first_sample_idx)])
                continue
            modes, row = [], []
            for j in range(k):
                if modes and rng.random() < dup:
                    text, why = modes[min(int(rng.expovariate(1.5)), len(modes) - 1)]
                else:
                    r = rng.random()
                    if r < acc:
                        answer = facts["gold"]
                    elif r > 0.97 - stray / 4:
                        answer = None
                    elif rng.random() < stray:
                        answer = str(rng.randint(0, 999))  # a stray number
                    else:
                        answer = rng.choice(facts["wrong"])
                    text, why = compose(facts, answer, rng, temperature)
                    modes.append((text, why))
                row.append(Sample(text, len(text) // 4, why, first_sample_idx + j))
            out.append(row)
        with self.lock:
            SimulatedPolicy.model_time += time.perf_counter() - t0
        return out

    def close(self):
        pass


class SimulatedPRM:
    """What `bstar.models.prm.scorer_from_options` returns, for the benchmark: per-step scores from
    a hash of the step, a solution that checks its answer scoring higher."""

    delimiter = "\n"
    max_length = None

    def score(self, prompts, responses, delimiter=None):
        from bstar.models.prm import PRMResult

        out = []
        for text in responses:
            steps = [s for s in text.split("\n") if s.strip()] or [text]
            lo = 0.5 if "Check:" in text else 0.1
            scores = []
            for s in steps:
                h = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") / 2**32
                scores.append(lo + (1.0 - lo) * h)
            # min over steps, mapped to [-1, 1] as bstar's PRM scorer does
            out.append(PRMResult(step_scores=scores, prm=2 * min(scores) - 1, n_steps=len(steps), n_truncated=0))
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def install_simulation() -> None:
    import bstar.models.prm as prm
    from bstar.models.sampling import register_sampler

    register_sampler("simulated", SimulatedPolicy)
    prm.scorer_from_options = lambda path, options, **_: SimulatedPRM()


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------


class Memory(threading.Thread):
    """RSS of this process plus its verifier workers, sampled every 50 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def rss(self) -> int:
        total = self.me.memory_info().rss
        for c in self.me.children(recursive=True):
            try:
                if "bstar.verifiers._worker" in " ".join(c.cmdline()):
                    total += c.memory_info().rss
            except Exception:  # a worker that just exited
                pass
        return total

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.time(), self.rss()))
            self.stop.wait(0.05)

    def peak(self, start: float | None = None, end: float | None = None) -> int:
        vals = [r for t, r in self.samples if (start is None or t >= start) and (end is None or t <= end)]
        return max(vals) if vals else 0


def task_windows() -> list[dict]:
    """Every task run Prefect recorded in this process's server: name, start, end (epoch seconds)."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(limit=200)
        # a sub-flow shows up as a task run of its parent, named after the flow: not a stage
        return [
            {"name": r.name, "start": r.start_time.timestamp(), "end": r.end_time.timestamp()}
            for r in runs if r.start_time and r.end_time and not r.name.startswith("bstar-")
        ]

    return sorted(asyncio.run(read()), key=lambda r: r["start"])


def lake_written(root: str, run_id: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(table, stage) -> (rows, bytes) of the run's parts."""
    import pyarrow.parquet as pq

    out: dict[tuple[str, str], tuple[int, int]] = {}
    for path in Path(root).rglob("*.parquet"):
        parts = path.relative_to(root).parts
        if len(parts) < 5 or parts[1] != f"run_id={run_id}":
            continue
        key = (parts[0], parts[3].removeprefix("stage="))
        rows, size = out.get(key, (0, 0))
        out[key] = (rows + pq.ParquetFile(path).metadata.num_rows, size + path.stat().st_size)
    return out


# the tables each task writes (stage None: the stage the sampling / scoring task handles)
WRITES = {
    "sample-candidates": "candidates",
    "score-candidates": "rewards",
    "search-config": "search",
    "select-data": "selections",
    "fine-tune": "checkpoints",
    "compute-metrics": "metrics",
    "publish-round": "metrics",
}
# the stage each sampling / scoring task run handles, in flow order
STAGE_ORDER = ["search", "train", "greedy", "eval"]


def distinct_answers(root: str, run_id: str) -> tuple[int, int]:
    """(candidates, distinct (stage, query, extracted answer)) of the answer-only rewards."""
    import duckdb

    glob = f"{root}/rewards/run_id={run_id}/*/*/part-gsm8k-*.parquet"
    n, d = duckdb.sql(
        f"SELECT count(*), count(DISTINCT (stage, query_id, coalesce(extracted, '<none>'))) "
        f"FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchall()[0]
    return int(n), int(d)


# ----------------------------------------------------------------------------------------------
# one round
# ----------------------------------------------------------------------------------------------


def round_config(scale: float, work: Path) -> dict:
    rows = gsm8k_rows()
    m, test = round(PAPER["M"] * scale), max(8, round(PAPER["test"] * scale))
    write_queries(work / "train.jsonl", rows, 0, m)
    write_queries(work / "test.jsonl", rows, m, test)
    prm = work / "sim-prm"
    prm.mkdir(exist_ok=True)
    (prm / "prm_config.json").write_text(json.dumps({"simulated": True}))
    return {
        "name": "paper-round",
        "method": "bstar",
        "iterations": 1,
        "model": {"name_or_path": "tiny", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        "data": {"train": {"name": "gsm8k", "path": str(work / "train.jsonl"), "split": "train"},
                 "test": [{"name": "gsm8k", "path": str(work / "test.jsonl"), "split": "test"}]},
        "sampling": {"backend": "simulated", "k": PAPER["K"], "temperature": 0.8, "max_new_tokens": 400},
        "search": {"queries": max(8, round(PAPER["search"] * scale))},  # the paper's grids are the defaults
        "reward": {"kind": "answer+prm", "prm": str(prm), "verify_workers": 2},
        "selection": {"n_target": round(PAPER["N"] * scale), "queries_per_round": m},
        "training": {"batch_size": 4, "max_steps": 4, "warmup": {"examples": 0, "steps": 0}},
        "eval": {"start": False, "k": PAPER["K"], "temperature": 0.8, "ks": [1, 32, 64], "ss": [1, 4]},
        "storage": {"root": str(work / "lake")},
    }


def run_round(scale: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bstar-paper-round-{scale:g}-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))  # a fresh server DB: its task runs are ours
    install_simulation()
    import bstar.verifiers.pool as pool
    from bstar.flows.run import bstar_run

    calls: list[tuple[float, int]] = []
    real = pool.run_batch

    def counting(target, items, **kw):
        calls.append((time.time(), len(items)))
        return real(target, items, **kw)

    pool.run_batch = counting
    cfg = round_config(scale, work)
    mem = Memory()
    mem.start()
    t0 = time.time()
    result = bstar_run(cfg, run_id="paper-round")
    wall = time.time() - t0
    mem.stop.set()
    mem.join()
    root = cfg["storage"]["root"]
    windows = [w for w in task_windows() if w["start"] >= t0 - 1]
    written = lake_written(root, "paper-round")
    order = {"sample-candidates": iter(STAGE_ORDER), "score-candidates": iter(STAGE_ORDER)}
    stages = []
    for w in windows:
        task = w["name"].rsplit("-", 1)[0]
        stage = next(order[task]) if task in order else None
        table = WRITES.get(task)
        # a sampling / scoring task writes its stage's partition; the others are counted once, by the
        # first task that writes their table
        hits = [v for (t, st), v in written.items() if t == table and (stage is None or st == stage)]
        if stage is None and table:
            written = {key: v for key, v in written.items() if key[0] != table}
        calls_in = sum(n for t, n in calls if w["start"] <= t <= w["end"])
        stages.append({"task": task + (f" ({stage})" if stage else ""), "wall_s": w["end"] - w["start"],
                       "peak_rss_gib": mem.peak(w["start"], w["end"]) / 2**30, "rows": sum(h[0] for h in hits),
                       "bytes": sum(h[1] for h in hits), "verifications": calls_in if task == "score-candidates" else 0})
    n_cands, distinct = distinct_answers(root, "paper-round")
    model_s = SimulatedPolicy.model_time + sum(s["wall_s"] for s in stages if s["task"].startswith("fine-tune"))
    return {
        "scale": scale, "stages": stages, "wall_s": wall, "model_s": model_s, "candidates": n_cands,
        "verifications": sum(n for _, n in calls), "distinct": distinct, "peak_rss_gib": mem.peak() / 2**30,
        "chosen": {k: result["rounds"][0].get(k) for k in ("temperature", "threshold", "balance_score", "selected")},
        "work": str(work),
    }


def print_round(r: dict) -> None:
    print(f"\n## scale {r['scale']:g}: M={round(PAPER['M'] * r['scale'])} x K={PAPER['K']}; chose "
          f"t={r['chosen']['temperature']}, tau={r['chosen']['threshold']}, balance "
          f"{(r['chosen']['balance_score'] or 0):.3f}, selected {r['chosen']['selected']}")
    print(f"{'stage':34s} {'wall_s':>8s} {'peak_rss_gib':>12s} {'rows':>10s} {'MB':>8s} {'verifications':>13s}")
    for s in r["stages"]:
        print(f"{s['task']:34s} {s['wall_s']:8.1f} {s['peak_rss_gib']:12.2f} {s['rows']:10d} "
              f"{s['bytes'] / 1e6:8.1f} {s['verifications']:13d}")
    other = r["wall_s"] - sum(s["wall_s"] for s in r["stages"])
    print(f"{'(Prefect and flow code between tasks)':34s} {other:8.1f}")
    print(f"wall {r['wall_s']:.1f} s = model (simulated sampling + tiny fine-tune) {r['model_s']:.1f} s "
          f"+ non-model {r['wall_s'] - r['model_s']:.1f} s")
    print(f"verifications per candidate {r['verifications'] / r['candidates']:.4f}; distinct (query, answer) "
          f"per candidate {r['distinct'] / r['candidates']:.4f}")
    print(f"scale={r['scale']:g} candidates={r['candidates']} verifications={r['verifications']} "
          f"distinct={r['distinct']} peak_rss_gib={r['peak_rss_gib']:.2f} wall_s={r['wall_s']:.1f}")


# ----------------------------------------------------------------------------------------------
# the scoring stage alone, at any multiple of the paper's M
# ----------------------------------------------------------------------------------------------


def run_scoring(scale: float) -> dict:
    """Sample M·scale × 64 candidates with the simulator (chunked writes), then run the scoring
    stage on them alone, measuring its peak RSS."""
    work = Path(tempfile.mkdtemp(prefix=f"bstar-scoring-{scale:g}-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))
    install_simulation()
    from bstar import code_version
    from bstar.config import parse_config
    from bstar.models.tiny import build_tiny_policy
    from bstar.tasks.data import record_run
    from bstar.tasks.sampling import sample_candidates
    from bstar.tasks.scoring import score_candidates

    raw = round_config(scale, work)
    raw["reward"] = {"kind": "answer", "verify_workers": 2}
    cfg_json = parse_config(raw).to_json()
    record_run.fn("scoring", cfg_json, code_version())
    policy = str(build_tiny_policy(work / "policy", hidden=32, layers=1, heads=2))
    t0 = time.time()
    sampled = sample_candidates.fn("scoring", 1, "train", "round", policy, [0.9], PAPER["K"], cfg_json)
    t_sample = time.time() - t0
    mem = Memory()
    base = mem.rss()
    mem.start()
    t0 = time.time()
    out = score_candidates.fn("scoring", 1, "train", "gsm8k", cfg_json)
    wall = time.time() - t0
    mem.stop.set()
    mem.join()
    return {"scale": scale, "candidates": sampled["candidates"], "sample_s": t_sample, "wall_s": wall,
            "verifications": out["verifications"], "chunks": out["chunks"], "rss_before_gib": base / 2**30,
            "peak_rss_gib": mem.peak() / 2**30, "work": str(work)}


# ----------------------------------------------------------------------------------------------


def exponent(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, help="one size (1.0 = the paper's round); default: 1/8, 1/4, 1/2, 1")
    ap.add_argument("--scoring", type=float, metavar="F", help="only the scoring stage, at F times the paper's M")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (lake) of each size")
    args = ap.parse_args()
    if args.scoring:
        r = run_scoring(args.scoring)
        print(f"scoring stage at {args.scoring:g}x M: {r['candidates']} candidates in {r['chunks']} chunks, "
              f"{r['verifications']} grader calls, {r['wall_s']:.1f} s; RSS {r['rss_before_gib']:.2f} GiB before, "
              f"peak {r['peak_rss_gib']:.2f} GiB (process + workers); sampling them took {r['sample_s']:.1f} s")
    elif args.scale:
        r = run_round(args.scale)
        print_round(r)
    else:
        results = []
        for f in SCALES:  # a fresh process per size: its peak RSS is that size's alone
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                cmd = [sys.executable, __file__, "--scale", str(f), "--json", tmp.name] + (["--keep"] if args.keep else [])
                subprocess.run(cmd, check=True)
                results.append(json.loads(Path(tmp.name).read_text()))
        print("\n## growth over scales " + ", ".join(f"{f:g}" for f in SCALES))
        print(f"{'scale':>6s} {'candidates':>10s} {'wall_s':>8s} {'non-model_s':>11s} {'peak_rss_gib':>12s}")
        for r in results:
            print(f"{r['scale']:6g} {r['candidates']:10d} {r['wall_s']:8.1f} {r['wall_s'] - r['model_s']:11.1f} "
                  f"{r['peak_rss_gib']:12.2f}")
        xs = [r["scale"] for r in results]
        print(f"exponent: wall {exponent(xs, [r['wall_s'] for r in results]):.2f}, non-model wall "
              f"{exponent(xs, [r['wall_s'] - r['model_s'] for r in results]):.2f}, peak RSS "
              f"{exponent(xs, [r['peak_rss_gib'] for r in results]):.2f}")
        r = None
    if args.json and r is not None:
        Path(args.json).write_text(json.dumps(r))
    if r is not None and not args.keep:
        import shutil

        shutil.rmtree(r["work"], ignore_errors=True)


if __name__ == "__main__":
    main()
