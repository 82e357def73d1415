"""Stages for process reward models: Math-Shepherd step annotation, PRM training, PRM evaluation,
PRM scoring of stored candidates, and side-by-side ranking metrics (answer-only vs PRM).

- `annotate_chunk`: for one chunk of the annotation queries, sample N solutions from the policy
  (stored as `candidates`, stage `annotate`), roll out M completions from every step prefix with
  the completer, and write one `annotations` row per (query, sample, step): hard label (any
  rollout reaches the gold answer), soft label (the fraction that does), and on arith the step's
  true label (the arith step checker, cumulative: this step and every step before it right).
- `train_prm_stage`: train a `bstar-scalar` PRM on those labels (bstar.models.prm_train).
- `evaluate_prm`: on test queries, PRM step accuracy / AUC against the arith truth, the
  Math-Shepherd labels' own agreement with the truth, Best-of-K with the PRM vs random vs oracle,
  and throughput; written to `metrics` (stage `prm`).
- `prm_rewarder`: the PRM, opened once per stage, that `score_candidates` adds to the answer
  reward for an `<verifier>+prm` scorer, chunk by chunk.
- `prm_ranking_metrics`: Reward@K-S / Best-of-K of a round's eval candidates ranked by answer-only,
  answer+prm and PRM-only rewards, side by side (`metrics`, stage `prm-compare`).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import polars as pl

from bstar.tasks.common import (checkpoint_dir, checkpoint_location, is_remote, lake_of, load_cfg, local_checkpoint,
                                publish_checkpoint, stage_task)
from bstar.tasks.data import SPLIT_TRAIN, _rank, as_rows, read_queries, test_splits
from bstar.tasks.prompts import render_prompts
from bstar.tasks.scorers import base_verifier, verifier_of
from bstar.tasks.shards import GPU_TAG

ANNOTATE_STAGE = "annotate"
PRM_EVAL_STAGE = "prm-eval"

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def prm_checkpoint_name(iteration: int = 0) -> str:
    return "prm" if iteration == 0 else f"prm-{iteration}"


def prm_checkpoint_dir(cfg, run_id: str, iteration: int = 0) -> str:
    """Where the run's PRM of `iteration` lives (an object-store URL for a remote lake)."""
    return checkpoint_location(cfg, run_id, prm_checkpoint_name(iteration))


def annotation_queries(cfg, run_id: str) -> pl.DataFrame:
    """The fixed, seeded subset of training queries that gets step annotations."""
    train = read_queries(cfg, run_id, SPLIT_TRAIN).unique("query_id", keep="first")
    n = cfg.reward.prm_train.queries
    return (
        train.with_columns(_rank(train["query_id"], f"prm:{cfg.seed}").alias("_r"))
        .sort("_r")
        .head(n)
        .drop("_r")
    )


def n_chunks(cfg, run_id: str) -> int:
    t = cfg.reward.prm_train
    n = min(t.queries, read_queries(cfg, run_id, SPLIT_TRAIN)["query_id"].n_unique())
    return max(1, -(-n // t.chunk_queries))


def _delimiter_for(cfg, dataset: str, spec_delimiter: str | None = None) -> str:
    from bstar.models.prm import default_delimiter

    return cfg.reward.prm_options.step_delimiter or spec_delimiter or default_delimiter(dataset)


def _prompt_of(cfg, queries: pl.DataFrame, policy: str) -> dict[str, str]:
    """query_id -> the prompt `policy` was (or is) sampled from: what the PRM scores behind."""
    return dict(zip(queries["query_id"].to_list(), render_prompts(cfg, queries, policy)))


def true_step_labels(verifier: str, response: str, question: str, n_steps: int) -> list[bool | None]:
    """Step truth where it is known, else nulls. Arith: a step is right when it and every step
    before it are (the cumulative step check); the last step, which carries the final answer, is
    right only when the whole solution is: one right step per operation and the final answer
    equal to the gold. Without that, "23+45=68. #### 68" for "23+45-12=?" would be all-right
    steps with a wrong answer, and a PRM could not learn that stopping early is a mistake."""
    if verifier not in ("arith", "arith-steps"):
        return [None] * n_steps
    from bstar.datasets.arith import solve
    from bstar.verifiers.arith import check_steps, verify_arith_steps

    labels = check_steps(response, question, cumulative=True)
    if len(labels) != n_steps:
        return [None] * n_steps
    if labels:
        gold = {"answer": str(solve(question)[1]), "question": question}
        labels[-1] = labels[-1] and verify_arith_steps(response, gold).correct
    return labels


def _verify(verifier: str, pairs: list[tuple[str, str]], cfg) -> list[bool]:
    from bstar.verifiers import verify_many

    if not pairs:
        return []
    verdicts = verify_many(verifier, pairs, workers=cfg.reward.verify_workers, timeout=cfg.reward.verify_timeout_s)
    return [bool(v.correct) for v in verdicts]


# ----------------------------------------------------------------------------------------------
# annotation (Math-Shepherd)
# ----------------------------------------------------------------------------------------------


@stage_task(tags=(GPU_TAG,))
def annotate_chunk(run_id: str, iteration: int, chunk: int, policy: str, completer: str, cfg_json: str) -> dict:
    """Annotate the steps of N sampled solutions for one chunk of the annotation queries."""
    from bstar.datasets import answer_for_verifier
    from bstar.models.prm import split_steps
    from bstar.models.sampling import get_sampler, seed_for
    from bstar.tasks.sampling import sampler_options

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    t, s = cfg.reward.prm_train, cfg.sampling
    verifier = base_verifier(cfg)
    frame = annotation_queries(cfg, run_id).slice(chunk * t.chunk_queries, t.chunk_queries)
    rows = as_rows(frame)
    qids = frame["query_id"].to_list()
    # rows name the checkpoints as given (object-store URLs for a remote lake); models load local copies
    named, policy, completer = policy, local_checkpoint(cfg, policy), local_checkpoint(cfg, completer)
    prompts = render_prompts(cfg, frame, policy)
    answers = [answer_for_verifier(r, verifier) for r in rows]
    part = f"part-c{chunk:04d}"
    t0 = time.time()
    samplers = {}
    try:
        samplers[policy] = get_sampler(s.backend, policy, **sampler_options(cfg))
        if completer not in samplers:
            samplers[completer] = get_sampler(s.backend, completer, **sampler_options(cfg))
        outs = samplers[policy].sample(
            prompts, k=t.samples, temperature=t.temperature, top_p=s.top_p if t.temperature > 0 else 1.0,
            max_new_tokens=s.max_new_tokens, seeds=[seed_for(q) for q in qids],
            base_seed=seed_for(cfg.seed, s.seed, iteration, ANNOTATE_STAGE), stop=s.stop, progress=False,
        )
        t_sample = time.time() - t0
        cands = pl.DataFrame(
            {
                "query_id": [q for q, o in zip(qids, outs) for _ in o],
                "sample_idx": [x.sample_idx for o in outs for x in o],
                "temperature": float(t.temperature),
                "policy": named,
                "response": [x.text for o in outs for x in o],
                "n_tokens": [x.n_tokens for o in outs for x in o],
                "finish_reason": [x.finish_reason for o in outs for x in o],
            }
        )
        lake.write("candidates", cands, run_id, iteration, ANNOTATE_STAGE, part=part)

        # every (query, sample, step); rollouts once per distinct (query, prefix) before the last step
        delim_of = {r["query_id"]: _delimiter_for(cfg, r.get("dataset")) for r in rows}
        items, prefixes = [], {}
        for qi, (r, o) in enumerate(zip(rows, outs)):
            delim = delim_of[r["query_id"]]
            for x in o:
                steps = split_steps(x.text, delim)
                truth = true_step_labels(verifier, x.text, r["prompt"], len(steps))
                for i, step in enumerate(steps):
                    prefix = delim.join(steps[: i + 1])
                    last = i == len(steps) - 1
                    items.append((qi, x.sample_idx, i, len(steps), step, prefix, last, truth[i], x.text))
                    if not last:
                        prefixes.setdefault((qi, prefix + delim), None)
        keys = list(prefixes)
        t1 = time.time()
        rollouts = samplers[completer].sample(
            [prompts[qi] + p for qi, p in keys], k=t.rollouts, temperature=t.rollout_temperature,
            top_p=s.top_p if t.rollout_temperature > 0 else 1.0, max_new_tokens=s.max_new_tokens,
            seeds=[seed_for(qids[qi], p) for qi, p in keys],
            base_seed=seed_for(cfg.seed, s.seed, iteration, "rollout"), stop=s.stop,
        ) if keys else []
        t_roll = time.time() - t1
    finally:
        for sm in samplers.values():
            sm.close()
    pairs = [(p + c.text, answers[qi]) for (qi, p), outs_k in zip(keys, rollouts) for c in outs_k]
    ok = _verify(verifier, pairs, cfg)
    n_ok, j = {}, 0
    for key, outs_k in zip(keys, rollouts):
        n_ok[key] = sum(ok[j : j + len(outs_k)])
        j += len(outs_k)
    final_ok = _verify(verifier, [(x.text, answers[qi]) for qi, o in enumerate(outs) for x in o], cfg)
    final_of = {(qi, x.sample_idx): c for (qi, x), c in zip(((qi, x) for qi, o in enumerate(outs) for x in o), final_ok)}
    out = []
    for qi, sidx, i, n, step, prefix, last, truth, _ in items:
        fin = final_of[(qi, sidx)]
        if last:
            n_roll, n_corr = 0, int(fin)
            soft = float(fin)
        else:
            n_roll = t.rollouts
            n_corr = n_ok[(qi, prefix + delim_of[qids[qi]])]
            soft = n_corr / n_roll
        out.append(
            {
                "query_id": qids[qi], "sample_idx": sidx, "step": i, "n_steps": n, "step_text": step,
                "prefix": prefix, "hard_label": soft > 0, "soft_label": soft, "n_rollouts": n_roll,
                "n_correct": n_corr, "final_correct": fin, "true_label": truth, "completer": completer,
            }
        )
    lake.write("annotations", out, run_id, iteration, ANNOTATE_STAGE, part=part)
    n_hard = sum(r["hard_label"] for r in out)
    log.info("annotate chunk %d (round %d): %d steps labelled (%d hard-positive, mean soft label %.3f) in %d "
             "solutions of %d queries; %d step prefixes x %d rollouts = %d rollouts; sampling %.1f s, rollouts %.1f s",
             chunk, iteration, len(out), n_hard, sum(r["soft_label"] for r in out) / max(1, len(out)), cands.height,
             len(qids), len(keys), t.rollouts, len(pairs), t_sample, t_roll)
    return {
        "chunk": chunk, "queries": len(qids), "solutions": cands.height, "steps": len(out),
        "prefixes_rolled_out": len(keys), "rollouts": len(pairs),
        "sample_s": round(t_sample, 2), "rollout_s": round(t_roll, 2), "seconds": round(time.time() - t0, 2),
    }


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def prm_examples(cfg, run_id: str, iteration: int, policy: str, label: str = "hard") -> list[dict]:
    """(prompt, steps, labels) per annotated solution, from the `annotations` table; prompts
    rendered for `policy` (the checkpoint the PRM is trained from shares its tokenizer)."""
    lake = lake_of(cfg)
    ann = lake.read("annotations", run_id, iteration, ANNOTATE_STAGE)
    if ann.is_empty():
        raise ValueError(f"no annotations for run {run_id} iteration {iteration}; run annotate_steps first")
    col = "hard_label" if label == "hard" else "soft_label"
    queries = read_queries(cfg, run_id, SPLIT_TRAIN).unique("query_id", keep="first")
    prompt_of = _prompt_of(cfg, queries, policy)
    grouped = (
        ann.sort("query_id", "sample_idx", "step")
        .group_by("query_id", "sample_idx", maintain_order=True)
        .agg(pl.col("step_text"), pl.col(col).cast(pl.Float64).alias("labels"))
    )
    return [
        {"prompt": prompt_of[q], "steps": st, "labels": lab}
        for q, st, lab in zip(grouped["query_id"], grouped["step_text"], grouped["labels"])
    ]


@stage_task(tags=(GPU_TAG,))
def train_prm_stage(run_id: str, iteration: int, init: str, cfg_json: str) -> dict:
    """Train a bstar-scalar PRM from `init` (a policy or PRM) on this iteration's annotations."""
    from bstar.models.prm_train import train_prm

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    t = cfg.reward.prm_train
    init = local_checkpoint(cfg, init)
    examples = prm_examples(cfg, run_id, iteration, init, t.label)
    out = cfg.reward.prm if (iteration == 0 and cfg.reward.prm) else prm_checkpoint_dir(cfg, run_id, iteration)
    # an object-store PRM is trained into a local work directory, then published to `out`
    local_out = checkpoint_dir(cfg, run_id, prm_checkpoint_name(iteration)) if is_remote(out) else out
    info = train_prm(
        examples, init, local_out, step_delimiter=_delimiter_for(cfg, cfg.data.train.name), max_steps=t.steps, lr=t.lr,
        batch_size=t.batch_size, num_processes=t.num_processes, distributed=t.distributed,
        micro_batch_size=t.micro_batch_size, gradient_checkpointing=t.gradient_checkpointing, max_length=t.max_length,
        precision="bf16" if cfg.training.bf16 else "auto", seed=cfg.seed,
        provenance={"run_id": run_id, "iteration": iteration, "labels": t.label, "annotations": "math-shepherd"},
    )
    path = publish_checkpoint(cfg, info.path, out)
    tail = info.losses[-10:]
    log.info("PRM training (round %d): %d steps on %d annotated solutions (%d step labels, %.1f%% positive, %d "
             "dropped by truncation), final loss %.4f (mean of the last %d steps), %.1f s -> %s", iteration,
             info.steps, info.examples, info.step_labels, 100 * info.positive_rate, info.truncated_labels,
             sum(tail) / max(1, len(tail)), len(tail), info.seconds, path)
    lake.write("checkpoints", [{"step": info.steps, "path": path, "mode": "prm"}], run_id, iteration, stage="prm")
    return {"prm": path, "examples": info.examples, "step_labels": info.step_labels,
            "positive_rate": round(info.positive_rate, 4), "final_loss": round(sum(info.losses[-10:]) / 10, 4),
            "seconds": info.seconds}


# ----------------------------------------------------------------------------------------------
# scoring stored candidates
# ----------------------------------------------------------------------------------------------


@contextmanager
def prm_rewarder(cfg, run_id: str):
    """Open the run's PRM once for a scoring stage; yields `add(frame, rewards, scorer)`, which
    turns answer-only reward rows of one chunk into `scorer` rows with step_scores, prm and
    reward = 1[correct] + prm.

    A response longer than the PRM's context is left-truncated: its first steps get no score (its
    step_scores are those of its last steps, and prm aggregates those only). How many steps of how
    many responses that hit is logged as a warning per chunk."""
    from bstar.models.prm import scorer_from_options

    if not cfg.reward.prm:
        raise ValueError(
            "reward.prm is not set: give a PRM checkpoint, or train one first with `bstar prm run CONFIG`"
        )
    queries = read_queries(cfg, run_id).unique("query_id", keep="first")
    dataset_of = dict(zip(queries["query_id"].to_list(), queries["dataset"].to_list()))
    prompts: dict[str, dict[str, str]] = {}  # policy -> query_id -> prompt

    with scorer_from_options(local_checkpoint(cfg, cfg.reward.prm), cfg.reward.prm_options) as prm:

        def add(frame: pl.DataFrame, rewards: pl.DataFrame, scorer: str) -> pl.DataFrame:
            policies = frame["policy"].unique().to_list()
            if len(policies) > 1:
                raise ValueError(f"candidates of one stage come from {len(policies)} policies: {policies[:3]}")
            if policies and policies[0] not in prompts:
                # the PRM scores a response behind the prompt its policy was sampled from
                prompts[policies[0]] = _prompt_of(cfg, queries, local_checkpoint(cfg, policies[0]))
            prompt_of = prompts[policies[0]] if policies else {}
            qids = frame["query_id"].to_list()
            delims = [_delimiter_for(cfg, dataset_of.get(q), prm.delimiter) for q in qids]
            results = prm.score([prompt_of[q] for q in qids], frame["response"].to_list(), delimiter=delims)
            _warn_truncated(results, prm.max_length, "scoring")
            scored = frame.select("query_id", "sample_idx").with_columns(
                pl.Series("step_scores", [r.step_scores for r in results], dtype=pl.List(pl.Float64)),
                pl.Series("prm", [r.prm for r in results], dtype=pl.Float64),
            )
            return (
                rewards.drop("step_scores", "prm", "reward")
                .join(scored, on=["query_id", "sample_idx"], how="left")
                .with_columns(
                    pl.lit(scorer).alias("scorer"),
                    (pl.col("correct").cast(pl.Float64) + pl.col("prm")).alias("reward"),  # null when the verifier failed
                )
                .select(rewards.columns)
            )

        yield add


def _warn_truncated(results, max_length, what: str) -> int:
    """Steps left unscored by left truncation over `results` (PRMResults); a warning when any."""
    steps = sum(r.n_truncated for r in results)
    if steps:
        hit = sum(1 for r in results if r.n_truncated)
        log.warning("PRM %s: %d steps of %d of %d responses not scored: their step-end token was cut off by "
                    "left truncation to the PRM's max length %s (rewards use the remaining last steps)",
                    what, steps, hit, len(results), max_length)
    return steps


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------

METRIC_SCHEMA = {"split": pl.String, "name": pl.String, "k": pl.Int32, "s": pl.Int32, "value": pl.Float64}


def ranking_metrics(scored: pl.DataFrame, ks, ss) -> pl.DataFrame:
    """Reward@K-S under three rankings of the same samples (columns split, query_id, sample_idx,
    response, correct, prm, reward): `answer` (1[correct]), `answer+prm` (reward), `prm` (prm only);
    plus `accuracy` (a random pick) and `pass@k` (an oracle pick)."""
    from bstar.algorithms import sample_metrics

    frames = []
    rankings = {
        "answer": pl.col("correct").cast(pl.Float64).fill_null(0.0),
        "answer+prm": pl.col("reward"),
        "prm": pl.col("prm"),
    }
    for tag, expr in rankings.items():
        m = sample_metrics(scored.with_columns(expr.alias("reward")), ks, ss)
        if tag == "answer":
            frames.append(m.filter(pl.col("name").is_in(["accuracy", "pass@k"])))
        m = m.filter(pl.col("name") == "reward@k-s").with_columns(pl.lit(f"reward@k-s[{tag}]").alias("name"))
        frames.append(m)
    return pl.concat([f.cast(METRIC_SCHEMA) for f in frames]).select(list(METRIC_SCHEMA))


def compare_rankings(lake, cfg, run_id: str, iteration: int, stage: str = "eval") -> pl.DataFrame:
    """`ranking_metrics` of one round's stored eval candidates (needs both the `<verifier>` and the
    `<verifier>+prm` rewards, which `score_candidates` writes for an answer+prm run)."""

    cands = lake.read("candidates", run_id, iteration, stage)
    rewards = lake.read("rewards", run_id, iteration, stage)
    prm_rows = rewards.filter(pl.col("scorer") == verifier_of(cfg)).select("query_id", "sample_idx", "prm", "reward")
    ans_rows = rewards.filter(pl.col("scorer") == base_verifier(cfg)).select("query_id", "sample_idx", "correct")
    splits = test_splits(lake, run_id)
    scored = (
        cands.select("query_id", "sample_idx", "response")
        .join(ans_rows, on=["query_id", "sample_idx"])
        .join(prm_rows, on=["query_id", "sample_idx"])
        .join(splits, on="query_id")
    )
    return ranking_metrics(scored, cfg.eval.ks, cfg.eval.ss)


@stage_task
def prm_ranking_metrics(run_id: str, iteration: int, cfg_json: str) -> dict:
    """This round's eval candidates ranked by answer-only, answer+PRM and PRM-only rewards."""
    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    if not cfg.eval.k:
        return {"iteration": iteration, "rows": 0}
    metrics = compare_rankings(lake, cfg, run_id, iteration)
    lake.write("metrics", metrics, run_id, iteration, stage="prm-compare")
    best = metrics.filter(pl.col("name").str.starts_with("reward@k-s") & (pl.col("s") == 1) & (pl.col("k") == max(cfg.eval.ks)))
    return {"iteration": iteration, "rows": metrics.height,
            "best_of_k": {r["name"]: round(r["value"], 4) for r in best.iter_rows(named=True)}}


@stage_task(tags=(GPU_TAG,))
def evaluate_prm(run_id: str, iteration: int, prm_path: str, policy: str, cfg_json: str) -> dict:
    """PRM quality on the run's first test split: step accuracy / AUC vs the truth (arith), the
    AUC for sound solutions among right answers, Math-Shepherd label agreement with the truth,
    Best-of-K (PRM vs random vs oracle), throughput."""
    from bstar.datasets import answer_for_verifier
    from bstar.models.prm import roc_auc, scorer_from_options, split_steps
    from bstar.models.sampling import get_sampler, seed_for
    from bstar.tasks.sampling import sampler_options

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    t, s = cfg.reward.prm_train, cfg.sampling
    verifier = base_verifier(cfg)
    split = f"test-{cfg.data.test[0].name}"
    frame = read_queries(cfg, run_id, split).unique("query_id", keep="first").sort("query_id").head(t.eval_queries)
    policy, prm_path = local_checkpoint(cfg, policy), local_checkpoint(cfg, prm_path)
    rows, qids, prompts = as_rows(frame), frame["query_id"].to_list(), render_prompts(cfg, frame, policy)
    with get_sampler(s.backend, policy, **sampler_options(cfg)) as sampler:
        outs = sampler.sample(prompts, k=t.eval_k, temperature=cfg.eval.temperature, max_new_tokens=s.max_new_tokens,
                              seeds=[seed_for(q) for q in qids], base_seed=seed_for(cfg.seed, PRM_EVAL_STAGE),
                              stop=s.stop, progress=False)
    flat = [(qi, x) for qi, o in enumerate(outs) for x in o]
    responses = [x.text for _, x in flat]
    correct = _verify(verifier, [(x.text, answer_for_verifier(rows[qi], verifier)) for qi, x in flat], cfg)
    with scorer_from_options(prm_path, cfg.reward.prm_options) as prm:
        delim = _delimiter_for(cfg, cfg.data.test[0].name, prm.delimiter)
        t0 = time.time()
        results = prm.score([prompts[qi] for qi, _ in flat], responses, delimiter=delim, progress=False)
        score_s = time.time() - t0
        kind = prm.score_kind
        truncated_steps = _warn_truncated(results, prm.max_length, "evaluation")
    # step level, against the truth
    ys, ps, sound, sound_scores = [], [], [], []
    for (qi, x), r, ok in zip(flat, results, correct):
        truth = true_step_labels(verifier, x.text, rows[qi]["prompt"], len(split_steps(x.text, delim)))
        # left truncation leaves the first r.n_truncated steps unscored: align the scores from the end
        for y, p in zip(truth[len(truth) - len(r.step_scores):], r.step_scores):
            if y is not None:
                ys.append(bool(y))
                ps.append(p)
        if ok and truth and truth[-1] is not None:
            sound.append(bool(truth[-1]))  # the last step's truth: the whole solution is right
            sound_scores.append(r.prm)
    cut = 0.5 if kind == "probability" else 0.0
    out: list[tuple] = []
    if ys:
        out += [(split, "prm_step_accuracy", None, None, sum((p > cut) == y for y, p in zip(ys, ps)) / len(ys)),
                (split, "prm_step_auc", None, None, roc_auc(ys, ps)),
                (split, "prm_step_positive_rate", None, None, sum(ys) / len(ys))]
    if sound:
        # What a B-STaR threshold above 1 acts on: among right final answers, does the PRM rank the
        # solutions whose every step is right above those that reach the answer by wrong steps?
        out += [(split, "prm_sound_auc_among_correct", None, None, roc_auc(sound, sound_scores)),
                (split, "sound_rate_among_correct", None, None, sum(sound) / len(sound))]
    # response level: Best-of-K by PRM vs random vs oracle (and answer+prm)
    scored = pl.DataFrame({
        "split": split, "query_id": [qids[qi] for qi, _ in flat], "sample_idx": [x.sample_idx for _, x in flat],
        "response": responses, "correct": correct, "prm": [r.prm for r in results],
    }).with_columns((pl.col("correct").cast(pl.Float64) + pl.col("prm")).alias("reward"))
    ranked = ranking_metrics(scored, sorted({1, t.eval_k}), [1])
    # Math-Shepherd labels of this run against the truth
    ann = lake.read("annotations", run_id, iteration, ANNOTATE_STAGE) if lake.exists("annotations", run_id, iteration, ANNOTATE_STAGE) else None
    if ann is not None and ann["true_label"].null_count() < ann.height:
        a = ann.filter(pl.col("true_label").is_not_null())
        y, hard, soft = a["true_label"].to_list(), a["hard_label"].to_list(), a["soft_label"].to_list()
        out += [("train", "ms_hard_label_accuracy", None, None, sum(h == v for h, v in zip(hard, y)) / len(y)),
                ("train", "ms_soft_label_auc", None, None, roc_auc(y, soft)),
                ("train", "ms_true_positive_rate", None, None, sum(y) / len(y)),
                ("train", "ms_hard_positive_rate", None, None, sum(hard) / len(hard))]
    out += [(split, "prm_scoring_responses_per_s", None, None, len(responses) / max(score_s, 1e-9))]
    metrics = pl.concat([pl.DataFrame(out, schema=METRIC_SCHEMA, orient="row"), ranked])
    metrics = metrics.filter(pl.col("value").is_not_null())
    lake.write("metrics", metrics, run_id, iteration, stage="prm")
    result = {r["name"] + (f"@{r['k']}" if r["k"] else ""): round(r["value"], 4) for r in metrics.iter_rows(named=True)}
    result["prm_truncated_steps"] = truncated_steps  # steps left unscored by left truncation
    return result
