"""Stage: turn a policy's scored test candidates into `metrics` rows.

Greedy Pass@1 per test split (stage `greedy`), sampled metrics from K samples per test query
(stage `eval`: Pass@k, Pass@K-S, Reward@K-S, diversity), the balance score of the round's chosen
configuration, and the count of scorer failures kept apart from wrong answers (greedy: `n`,
`wrong_answers`, `scorer_errors`; sampled: `sampled_n`, `sampled_wrong_answers`,
`sampled_scorer_errors`, where `n` counts judged items and a scorer failure is neither). Everything is
recomputed from stored rows, so `bstar rescore` or a new metric can rebuild it later.
"""

from __future__ import annotations

import polars as pl
from prefect import task

from bstar.tasks.common import lake_of, load_cfg, stage_task
from bstar.tasks.data import test_splits
from bstar.verifiers.base import SCORER_FAILURES

METRIC_COLUMNS = ("split", "name", "k", "s", "value")
_FAILED = pl.col("status").is_in(list(SCORER_FAILURES))
_WRONG = ~_FAILED & ~pl.col("correct").fill_null(False)


def _with_split(lake, run_id: str, iteration: int, stage: str, scorer: str, splits: pl.DataFrame) -> pl.DataFrame:
    from bstar.tasks.selection import scored_frame

    scored = scored_frame(lake, run_id, iteration, stage, scorer)
    # scored_frame reads a scorer failure as not correct (right for selection); here it must stay
    # unjudged, or greedy Pass@1 and `n` would count the scorer's failures as the policy's
    correct = pl.when(_FAILED).then(None).otherwise(pl.col("correct")).alias("correct")
    return scored.join(splits, on="query_id", how="inner").with_columns(correct)


def greedy_metrics(greedy: pl.DataFrame) -> pl.DataFrame:
    """Pass@1 (greedy) with its standard error, and scorer-failure counts, per split."""
    return (
        greedy.group_by("split")
        .agg(
            pl.col("correct").cast(pl.Float64).mean().alias("pass@1"),
            pl.col("correct").count().alias("n"),  # judged items; scorer failures are counted apart
            _WRONG.sum().cast(pl.Float64).alias("wrong_answers"),
            _FAILED.sum().cast(pl.Float64).alias("scorer_errors"),
        )
        .with_columns(((pl.col("pass@1") * (1 - pl.col("pass@1")) / pl.col("n")).sqrt()).alias("pass@1_se"))
        .unpivot(index="split", on=["pass@1", "pass@1_se", "n", "wrong_answers", "scorer_errors"], variable_name="name")
        .with_columns(
            pl.when(pl.col("name").str.starts_with("pass@1")).then(1).otherwise(None).cast(pl.Int32).alias("k"),
            pl.lit(None, dtype=pl.Int32).alias("s"),
            pl.col("name").str.replace("pass@1", "greedy_pass@1"),
        )
        .select(METRIC_COLUMNS)
    )


def outcome_counts(scored: pl.DataFrame, prefix: str = "sampled_") -> pl.DataFrame:
    """Per split: judged samples, wrong answers and scorer failures (timeout/error), as metric rows.

    Pass@k and friends count a scorer failure as not correct; these rows say how many of the
    misses were the scorer's and not the policy's.
    """
    return (
        scored.group_by("split")
        .agg(
            (~_FAILED).sum().cast(pl.Float64).alias(f"{prefix}n"),
            _WRONG.sum().cast(pl.Float64).alias(f"{prefix}wrong_answers"),
            _FAILED.sum().cast(pl.Float64).alias(f"{prefix}scorer_errors"),
        )
        .unpivot(index="split", variable_name="name")
        .with_columns(pl.lit(None, dtype=pl.Int32).alias("k"), pl.lit(None, dtype=pl.Int32).alias("s"))
        .select(METRIC_COLUMNS)
        .sort("split", "name")
    )


@stage_task
def compute_metrics(run_id: str, iteration: int, scorer: str, sampled: bool, cfg_json: str) -> dict:
    from bstar.algorithms import sample_metrics

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    splits = test_splits(lake, run_id)
    frames = [greedy_metrics(_with_split(lake, run_id, iteration, "greedy", scorer, splits))]
    if sampled:
        scored = _with_split(lake, run_id, iteration, "eval", scorer, splits)
        frames.append(sample_metrics(scored, cfg.eval.ks, cfg.eval.ss).select(METRIC_COLUMNS))
        frames.append(outcome_counts(scored))
        if scorer.endswith("+prm"):
            # Reward@K-S when ranking by the PRM and by the answer alone, side by side.
            from bstar.tasks.prm import compare_rankings

            ranked = compare_rankings(lake, cfg, run_id, iteration)
            frames.append(ranked.filter(pl.col("name").str.starts_with("reward@k-s[")).select(METRIC_COLUMNS))
    if lake.exists("search", run_id, iteration):
        chosen = lake.read("search", run_id, iteration).filter("chosen")
        frames.append(
            pl.DataFrame(
                {"split": "train", "name": "balance_score", "k": None, "s": None, "value": chosen["balance_score"]},
                schema={"split": pl.String, "name": pl.String, "k": pl.Int32, "s": pl.Int32, "value": pl.Float64},
            )
        )
    metrics = pl.concat([f.cast({"k": pl.Int32, "s": pl.Int32, "value": pl.Float64}) for f in frames])
    lake.write("metrics", metrics, run_id, iteration)
    greedy = metrics.filter(pl.col("name") == "greedy_pass@1")
    return {
        "iteration": iteration,
        "pass@1": {r["split"]: r["value"] for r in greedy.iter_rows(named=True)},
        "n_metrics": metrics.height,
    }


def round_markdown(run_id: str, iteration: int, summary: dict, grid: pl.DataFrame | None, metrics: pl.DataFrame) -> str:
    """The round's Prefect artifact: chosen configuration, best grid cells, metrics."""
    lines = [f"# {run_id} · round {iteration}", ""]
    bs = summary.get("balance_score")
    lines += [
        "| temperature | threshold | balance score | selected |",
        "|---|---|---|---|",
        f"| {summary.get('temperature')} | {summary.get('threshold')} | "
        f"{'—' if bs is None else f'{bs:.4f}'} | {summary.get('selected', '—')} |",
        "",
    ]
    if grid is not None and grid.height:
        lines += ["## Best search cells", "", "| t | τ | balance | n selected | n unique correct | chosen |", "|---|---|---|---|---|---|"]
        for r in grid.sort("balance_score", descending=True).head(10).iter_rows(named=True):
            lines.append(
                f"| {r['temperature']} | {r['threshold']} | {r['balance_score']:.4f} | {r['n_selected']} | "
                f"{r['n_unique_correct']} | {'✓' if r['chosen'] else ''} |"
            )
        lines.append("")
    lines += ["## Metrics", "", "| split | metric | k | s | value |", "|---|---|---|---|---|"]
    for r in metrics.sort("split", "name", "k", "s").iter_rows(named=True):
        k = "" if r["k"] is None else r["k"]
        s = "" if r["s"] is None else r["s"]
        lines.append(f"| {r['split']} | {r['name']} | {k} | {s} | {r['value']:.4f} |")
    return "\n".join(lines)


@task(name="publish-round")
def publish_round(run_id: str, iteration: int, summary: dict, cfg_json: str) -> str:
    """Attach the round's markdown summary to the flow run (shown in the Prefect UI)."""
    from prefect.artifacts import create_markdown_artifact

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    grid = lake.read("search", run_id, iteration) if lake.exists("search", run_id, iteration) else None
    metrics = lake.read("metrics", run_id, iteration)
    key = f"{run_id}-round-{iteration}".lower().replace("_", "-").replace(".", "-")
    create_markdown_artifact(
        markdown=round_markdown(run_id, iteration, summary, grid, metrics),
        key=key[:100],
        description=f"B-STaR round {iteration} of {run_id}",
    )
    return key


@task(name="publish-report")
def publish_report(run_id: str, cfg_json: str) -> list[str]:
    """The run report's plots as Prefect artifacts of this flow run (the UI shows them)."""
    from bstar.reports import publish_report_artifacts

    cfg = load_cfg(cfg_json)
    return publish_report_artifacts(run_id, cfg.storage.root, storage_options=cfg.storage.storage_options() or None)
