"""The comparison table of `bstar compare` (the paper's Tables 1-3 shape), from `metrics` and `search` rows.

Pure polars, no Prefect: `comparison_table(metrics, arms, start_run)` gives one row per (arm, test
split) with the last round's greedy Pass@1, Pass@K, Pass@K-S and Reward@K-S, each with its 95%
interval (value ± 1.96 standard errors over test queries; with several seeds, the mean over
seeds with the standard errors combined), and the gain over the shared start. `trajectories`
gives B-STaR's chosen temperature, threshold and balance score per round (Table 2's shape);
`per_round` every arm's monitoring per round (Pass@1, Pass@K, Pass@K-S, Reward@K-S, diversity,
balance score).

    from bstar.reports.compare import comparison_table, format_table
"""

from __future__ import annotations

import re

import polars as pl

Z95 = 1.96
# (column title, metric name, which K, which S): K and S are the largest evaluated (S <= K)
COLUMNS = (
    ("Pass@1", "greedy_pass@1", None, None),
    ("Pass@K", "pass@k", "K", None),
    ("Pass@K-S", "pass@k-s", "K", "S"),
    ("Reward@K-S", "reward@k-s", "K", "S"),
)


def table_k_s(cfg) -> tuple[int, int]:
    """The K and S the tables report for a run config: the largest evaluated K, the largest S <= K."""
    k = max(cfg.eval.ks) if cfg.eval.k else 1
    return k, max([s for s in cfg.eval.ss if s <= k] or [1])


def _final_rows(metrics: pl.DataFrame) -> pl.DataFrame:
    """Each run's metrics of its last evaluated round."""
    last = metrics.group_by("run_id").agg(pl.col("iteration").max().alias("last"))
    return metrics.join(last, on="run_id").filter(pl.col("iteration") == pl.col("last")).drop("last")


def _pick(frame: pl.DataFrame, name: str, k: int | None, s: int | None) -> pl.DataFrame:
    """(run_id, split, value, se) of one metric at (k, s)."""
    def sel(n: str) -> pl.DataFrame:
        f = frame.filter(pl.col("name") == n)
        if k is not None:
            f = f.filter(pl.col("k") == k)
        if s is not None:
            f = f.filter(pl.col("s") == s)
        return f.select("run_id", "split", "iteration", "value")

    return sel(name).join(sel(f"{name}_se").rename({"value": "se"}), on=["run_id", "split", "iteration"], how="left")


def comparison_table(metrics: pl.DataFrame, arms: list[dict], start_run: str, k: int, s: int) -> pl.DataFrame:
    """One row per (arm, split). `arms`: dicts with `label, method, reward, run_ids` (one per seed);
    `metrics`: rows of the `metrics` view for those runs and `start_run` (the shared warm-up)."""
    final = _final_rows(metrics.filter(pl.col("split") != "train"))
    runs = pl.DataFrame(
        [{"arm": a["label"], "method": a["method"], "reward": a["reward"], "run_id": r} for a in arms for r in a["run_ids"]]
        + [{"arm": "start", "method": "warm-up", "reward": "", "run_id": start_run}],
        schema={"arm": pl.String, "method": pl.String, "reward": pl.String, "run_id": pl.String},
    )
    out = None
    for title, name, kk, ss in COLUMNS:
        picked = _pick(final, name, k if kk else None, s if ss else None)
        per_arm = (
            runs.join(picked, on="run_id", how="inner")
            .group_by("arm", "method", "reward", "split")
            .agg(
                pl.col("value").mean().alias(title),
                ((pl.col("se") ** 2).sum().sqrt() / pl.len()).alias(f"{title} se"),
                pl.len().alias("seeds"),
                pl.col("iteration").max().alias("rounds"),
            )
        )
        keys = ["arm", "method", "reward", "split"]
        out = per_arm if out is None else out.join(per_arm.drop("seeds", "rounds"), on=keys, how="full", coalesce=True)
    if out is None or out.is_empty():
        return pl.DataFrame()
    start = out.filter(pl.col("arm") == "start").select("split", pl.col("Pass@1").alias("_start"))
    order = {a["label"]: i for i, a in enumerate(arms)} | {"start": -1}
    return (
        out.join(start, on="split", how="left")
        .with_columns(
            (pl.col("Pass@1") - pl.col("_start")).alias("gain"),
            pl.col("arm").replace_strict(order, default=len(order)).alias("_order"),
        )
        .sort("split", "_order")
        .drop("_start", "_order")
    )


def trajectories(search: pl.DataFrame, metrics: pl.DataFrame, arms: list[dict]) -> pl.DataFrame:
    """Per arm and round: the chosen temperature, threshold, balance score, and greedy Pass@1."""
    run_arm = pl.DataFrame(
        [{"arm": a["label"], "run_id": r} for a in arms for r in a["run_ids"]],
        schema={"arm": pl.String, "run_id": pl.String},
    )
    chosen = search.filter(pl.col("chosen")).select("run_id", "iteration", "temperature", "threshold", "balance_score")
    pass1 = metrics.filter((pl.col("name") == "greedy_pass@1") & (pl.col("split") != "train"))
    pass1 = pass1.group_by("run_id", "iteration").agg(pl.col("value").mean().alias("Pass@1"))
    return (
        run_arm.join(pass1, on="run_id")
        .join(chosen, on=["run_id", "iteration"], how="left")
        .sort("arm", "run_id", "iteration")
        .select("arm", "run_id", "iteration", "temperature", "threshold", "balance_score", "Pass@1")
    )


# the per-round monitoring table: (column, metric name, split kind, which K, which S)
ROUND_COLUMNS = (
    ("Pass@1", "greedy_pass@1", "test", None, None),
    ("Pass@K", "pass@k", "test", "K", None),
    ("Pass@K-S", "pass@k-s", "test", "K", "S"),
    ("Reward@K-S", "reward@k-s", "test", "K", "S"),
    ("diversity", "diversity", "test", None, None),
    ("balance", "balance_score", "train", None, None),
    ("search balance", "search_balance_score", "train", None, None),
    ("selected", "selected", "train", None, None),
    ("selected queries", "selected_queries", "train", None, None),
)


def per_round(metrics: pl.DataFrame, search: pl.DataFrame, arms: list[dict], k: int, s: int) -> pl.DataFrame:
    """Every arm's monitoring per round (the paper's exploration / exploitation curves as a table):
    one row per (arm, run, round, test split) with greedy Pass@1, Pass@K, Pass@K-S, Reward@K-S
    (each with its standard error, `<title> se`), diversity, the balance score of the round's
    configuration on its own training candidates, B-STaR's search estimate, the selected
    responses and the queries they answer, and the chosen temperature and threshold."""
    runs = pl.DataFrame([{"arm": a["label"], "run_id": r} for a in arms for r in a["run_ids"]],
                        schema={"arm": pl.String, "run_id": pl.String})
    m = metrics.join(runs, on="run_id")
    test_splits = m.filter(pl.col("split") != "train").select("run_id", "iteration", "split").unique()
    out = runs.join(test_splits, on="run_id")
    for title, name, kind, kk, ss in ROUND_COLUMNS:
        keys = ["run_id", "iteration"] if kind == "train" else ["run_id", "iteration", "split"]
        # the value, and its standard error where the metric has one (`<name>_se`)
        for col, metric in ((title, name), (f"{title} se", f"{name}_se")):
            f = m.filter((pl.col("name") == metric) & ((pl.col("split") == "train") == (kind == "train")))
            if kk:
                f = f.filter(pl.col("k") == k)
            if ss:
                f = f.filter(pl.col("s") == s)
            if col == title or f.height:
                out = out.join(f.select(*keys, pl.col("value").alias(col)), on=keys, how="left")
    chosen = search.filter(pl.col("chosen")).select("run_id", "iteration", "temperature", "threshold")
    order = {a["label"]: i for i, a in enumerate(arms)}
    return (
        out.join(chosen, on=["run_id", "iteration"], how="left")
        .with_columns(pl.col("arm").replace_strict(order, default=len(order)).alias("_order"))
        .sort("_order", "run_id", "split", "iteration")
        .drop("_order")
    )


def per_round_rows(frame: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The per-round table as strings (percent for the rates, 4 digits for balance scores)."""
    header = ["arm", "seed", "round", "split", *[c for c, *_ in ROUND_COLUMNS], "t", "τ"]
    rows = []
    for r in frame.iter_rows(named=True):
        seed = re.search(r"-seed(\d+)$", r["run_id"])  # CompareConfig.run_id's suffix with several seeds
        def pct(c):
            return "—" if r.get(c) is None else f"{r[c] * 100:.1f}"

        def num(c, spec):
            return "—" if r.get(c) is None else format(r[c], spec)

        rows.append([r["arm"], seed.group(1) if seed else "—", str(r["iteration"]), r["split"], pct("Pass@1"), pct("Pass@K"), pct("Pass@K-S"),
                     pct("Reward@K-S"), num("diversity", ".3f"), num("balance", ".4f"), num("search balance", ".4f"),
                     num("selected", ".0f"), num("selected queries", ".0f"), num("temperature", ".2f"),
                     num("threshold", ".2f")])
    return header, rows


def interval(value: float | None, se: float | None) -> str:
    """`61.2 ±3.0`: the value in percent and the half-width of its 95% interval."""
    if value is None:
        return "—"
    if se is None:
        return f"{value * 100:.1f}"
    return f"{value * 100:.1f} ±{Z95 * se * 100:.1f}"


def format_rows(table: pl.DataFrame) -> list[list[str]]:
    """The table as strings: arm, method, reward, split, rounds, four metrics with intervals, gain."""
    rows = []
    for r in table.iter_rows(named=True):
        gain = r.get("gain")
        rows.append(
            [r["arm"], r["method"], r["reward"] or "—", r["split"], str(r.get("rounds") or 0)]
            + [interval(r.get(t), r.get(f"{t} se")) for t, *_ in COLUMNS]
            + ["—" if gain is None or r["arm"] == "start" else f"{gain * 100:+.1f}"]
        )
    return rows


HEADER = ["arm", "method", "reward", "split", "rounds", *[t for t, *_ in COLUMNS], "Pass@1 gain"]


def markdown(table: pl.DataFrame, traj: pl.DataFrame, k: int, s: int, rounds: pl.DataFrame | None = None) -> str:
    lines = [f"Percent; ± is the half-width of the 95% interval over test queries. K = {k}, S = {s}.", "", "| " + " | ".join(HEADER) + " |",
             "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in format_rows(table)]
    if traj.height and traj["temperature"].is_not_null().any():
        lines += ["", "| arm | round | temperature | threshold | balance score | Pass@1 |", "|---|---|---|---|---|---|"]
        for r in traj.filter(pl.col("temperature").is_not_null()).iter_rows(named=True):
            bs = "—" if r["balance_score"] is None else f"{r['balance_score']:.4f}"
            lines.append(f"| {r['arm']} | {r['iteration']} | {r['temperature']:.2f} | {r['threshold']:.2f} | {bs} | {r['Pass@1']:.3f} |")
    if rounds is not None and rounds.height:
        header, rows = per_round_rows(rounds)
        lines += ["", f"Every arm per round (percent; K = {k}, S = {s}; balance: of the round's configuration on its "
                      "own training candidates; search balance: B-STaR's estimate on the search subset):", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
