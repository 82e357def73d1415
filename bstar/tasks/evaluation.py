"""Stage: turn a policy's scored test candidates into `metrics` rows.

Greedy Pass@1 per test split (stage `greedy`); sampled metrics from K samples per test query
(stage `eval`: Pass@k, Pass@K-S, Reward@K-S, diversity, and `queries_short_of_k` where a K has
no metric); the round's monitoring (`round_monitoring`: the balance score of the configuration
it used, on its own training candidates, for every method, beside B-STaR's search estimate; how
much was selected; whether it kept its starting policy); and the outcome counts (greedy: `n` test
queries, `wrong_answers`, `scorer_errors`; sampled: `sampled_n` samples, `sampled_wrong_answers`,
`sampled_scorer_errors`). Every metric counts a scorer failure as not correct, over all test
queries; the counts say how many misses were the scorer's. Everything is recomputed from stored
rows, so `bstar rescore` or a new metric can rebuild it later.
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
    # a scorer failure has no verdict (null): the metrics count it as not correct, and the
    # outcome counts keep it apart from the policy's wrong answers
    correct = pl.when(_FAILED).then(None).otherwise(pl.col("correct")).alias("correct")
    return scored.join(splits, on="query_id", how="inner").with_columns(correct)


def greedy_metrics(greedy: pl.DataFrame) -> pl.DataFrame:
    """Greedy Pass@1 with its standard error, and the outcome counts, per split.

    Pass@1 is over every test query: a scorer failure (timeout/error) counts as not correct, as
    in every published evaluation harness (and as the sampled metrics count it); `n` is the number
    of test queries and `wrong_answers` + `scorer_errors` say how the misses divide."""
    return (
        greedy.group_by("split")
        .agg(
            pl.col("correct").fill_null(False).cast(pl.Float64).mean().alias("pass@1"),
            pl.len().cast(pl.Float64).alias("n"),
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


def _rows(split: str, values: dict[str, float | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"split": split, "name": list(values), "k": None, "s": None, "value": list(values.values())},
        schema={"split": pl.String, "name": pl.String, "k": pl.Int32, "s": pl.Int32, "value": pl.Float64},
    )


def round_monitoring(lake, cfg, run_id: str, iteration: int, scorer: str) -> pl.DataFrame:
    """The round's exploration / exploitation monitoring as `train` metric rows, for every method.

    * `balance_score`: the balance score (§3.1) of the configuration the round actually used, on
      the round's own training candidates (all M queries at its temperature, its threshold);
      `search_balance_score`: B-STaR's estimate of the chosen cell on the search subset;
    * `selected` (self-generated samples kept), `selected_queries`, `gold_examples` (seed-set
      solutions trained on beside them), `policy_kept`: 1 when the round had nothing to train on
      and kept its starting policy (in `restart` mode, the initial one).
    """
    from bstar.tasks.selection import stage_balance_grid

    values: dict[str, float | None] = {}
    threshold = cfg.search_plan()["thresholds"][0]
    if lake.exists("search", run_id, iteration):
        chosen = lake.read("search", run_id, iteration).filter("chosen")
        values["search_balance_score"] = chosen["balance_score"][0]
        threshold = chosen["threshold"][0]
    if cfg.self_generated and lake.exists("rewards", run_id, iteration, "train"):
        grid = stage_balance_grid(lake, cfg, run_id, iteration, "train", scorer, [threshold])
        values["balance_score"] = grid["balance_score"].mean()  # one temperature, one threshold
    if lake.exists("selections", run_id, iteration, "train"):
        sel = lake.read("selections", run_id, iteration, "train")
        own = sel.filter(pl.col("sample_idx") >= 0)
        if cfg.self_generated:  # the sft control selects nothing: it has no `selected` to report
            values |= {"selected": own.height, "selected_queries": own["query_id"].n_unique()}
        values |= {"gold_examples": sel.height - own.height, "policy_kept": float(sel.is_empty())}
    return _rows("train", values)


def short_of_k(scored: pl.DataFrame, ks: list[int]) -> pl.DataFrame:
    """`queries_short_of_k` (k = K): test queries with fewer than K scored samples, per split and K
    where any is. Pass@K and the K-S metrics of such a K are left out (not averaged over the
    queries that have K), so this row says why a configured K has no metric."""
    per_query = scored.group_by("split", "query_id").agg(pl.len().alias("n"))
    rows = [
        (split, "queries_short_of_k", k, None, float(short))
        for k in sorted(set(ks))
        for split, short in per_query.group_by("split").agg((pl.col("n") < k).sum().alias("short")).sort("split").rows()
        if short
    ]
    return pl.DataFrame(rows, schema={"split": pl.String, "name": pl.String, "k": pl.Int32, "s": pl.Int32,
                                      "value": pl.Float64}, orient="row")


def outcome_counts(scored: pl.DataFrame, prefix: str = "sampled_") -> pl.DataFrame:
    """Per split: samples, wrong answers and scorer failures (timeout/error), as metric rows.

    Pass@k and friends count a scorer failure as not correct; these rows say how many of the
    misses were the scorer's and not the policy's.
    """
    return (
        scored.group_by("split")
        .agg(
            pl.len().cast(pl.Float64).alias(f"{prefix}n"),  # all samples: the metrics' denominator
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
        frames.append(short_of_k(scored, cfg.eval.ks))
        if scorer.endswith("+prm"):
            # Reward@K-S when ranking by the PRM and by the answer alone, side by side.
            from bstar.tasks.prm import compare_rankings

            ranked = compare_rankings(lake, cfg, run_id, iteration)
            frames.append(ranked.filter(pl.col("name").str.starts_with("reward@k-s[")).select(METRIC_COLUMNS))
    frames.append(round_monitoring(lake, cfg, run_id, iteration, scorer))
    metrics = pl.concat([f.cast({"k": pl.Int32, "s": pl.Int32, "value": pl.Float64}) for f in frames])
    lake.write("metrics", metrics, run_id, iteration)
    greedy = metrics.filter(pl.col("name") == "greedy_pass@1")
    return {
        "iteration": iteration,
        "pass@1": {r["split"]: r["value"] for r in greedy.iter_rows(named=True)},
        "n_metrics": metrics.height,
    }


def round_notes(cfg, metrics: pl.DataFrame) -> list[str]:
    """What the round's artifact must say besides its numbers: what was searched, and anything
    that did not go as configured (nothing selected, the starting policy kept, a K with no metric)."""
    value = {(r["name"], r["k"]): r["value"] for r in metrics.iter_rows(named=True) if r["split"] in ("train", None)}
    notes = [f"Search: {cfg.search_summary()}; n* = {cfg.selection.target_per_query:g}."]
    if value.get(("selected", None)) == 0 and cfg.self_generated:
        notes.append("**No candidate passed the threshold this round.**")
    if value.get(("policy_kept", None)) == 1:
        start = "the initial checkpoint (restart mode)" if cfg.training_mode == "restart" else "the previous round's"
        notes.append(f"**Nothing to train on: the round kept its starting policy, {start}.**")
    for r in metrics.filter(pl.col("name") == "queries_short_of_k").iter_rows(named=True):
        notes.append(f"**{r['split']}: {r['value']:.0f} queries have fewer than K={r['k']} samples; "
                     f"Pass@{r['k']} and its K-S metrics are left out.**")
    return notes


def round_markdown(run_id: str, iteration: int, summary: dict, grid: pl.DataFrame | None, metrics: pl.DataFrame,
                   notes: list[str] = ()) -> str:
    """The round's Prefect artifact: chosen configuration, best grid cells, metrics."""
    lines = [f"# {run_id} · round {iteration}", "", *[f"- {n}" for n in notes], ""]
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


def round_key(run_id: str, iteration: int) -> str:
    from bstar.reports.artifacts import artifact_key

    return artifact_key(run_id, f"round-{iteration}")


@task(name="publish-round")
def publish_round(run_id: str, iteration: int, summary: dict, cfg_json: str) -> str:
    """Attach the round's markdown summary to the flow run (shown in the Prefect UI)."""
    from prefect.artifacts import create_markdown_artifact

    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    grid = lake.read("search", run_id, iteration) if lake.exists("search", run_id, iteration) else None
    metrics = lake.read("metrics", run_id, iteration)
    key = round_key(run_id, iteration)
    create_markdown_artifact(
        markdown=round_markdown(run_id, iteration, summary, grid, metrics, round_notes(cfg, metrics)),
        key=key,
        description=f"B-STaR round {iteration} of {run_id}",
    )
    return key


def _artifact_link(key: str) -> str:
    """The UI page of artifact `key` (a bare key when no UI is known)."""
    from bstar.reports.artifacts import ui_url

    base = ui_url()
    return f"{base.rstrip('/')}/artifacts/key/{key}" if base else key


@task(name="publish-rounds")
def publish_rounds(run_id: str, rounds_done: int, cfg_json: str, report: str | None = None) -> str:
    """The run's round × metric table (`<run>-rounds`) on the top-level flow run, from the lake,
    linked to the round artifacts so far and, once written, to the HTML report."""
    from bstar.reports.artifacts import publish_rounds_artifact

    cfg = load_cfg(cfg_json)
    links = {f"round {i}": _artifact_link(round_key(run_id, i)) for i in range(1, rounds_done + 1)}
    if report:
        links["HTML report"] = report
    return publish_rounds_artifact(run_id, cfg, links)


@task(name="publish-report")
def publish_report(run_id: str, cfg_json: str) -> dict:
    """The run's report: the HTML page written into the lake (`{root}/_reports/<run>.html`) with a
    link artifact to it, and the report's plots as Prefect artifacts of this flow run."""
    from prefect.artifacts import create_link_artifact

    from bstar.reports import publish_report_artifacts, write_lake_report
    from bstar.reports.artifacts import artifact_key

    cfg = load_cfg(cfg_json)
    options = cfg.storage.storage_options() or None
    location = write_lake_report(run_id, cfg.storage.root, options)
    link = report_link(lake_of(cfg), location)
    create_link_artifact(link=link, link_text=location, key=artifact_key(run_id, "report-html"),
                         description=f"the HTML report of {run_id}, written to {location}")
    keys = publish_report_artifacts(run_id, cfg.storage.root, storage_options=options)
    return {"html": location, "link": link, "artifacts": keys}


REPORT_LINK_EXPIRES_S = 7 * 24 * 3600  # the longest an S3 presigned URL may live


def report_link(lake, location: str) -> str:
    """A URL a browser opens: `file://` for a local lake, a presigned URL (valid 7 days) for S3."""
    if not lake.is_s3:
        from pathlib import Path

        return Path(location).as_uri()
    try:
        return lake.fs.url(location.split("://", 1)[1], expires=REPORT_LINK_EXPIRES_S)
    except Exception:  # noqa: BLE001 - a store that cannot presign still has the location
        return location
