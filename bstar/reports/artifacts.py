"""The report's plots and numbers as Prefect artifacts, so the Prefect UI shows them.

    from bstar.reports.artifacts import publish_report_artifacts
    keys = publish_report_artifacts("r1", "lake")     # call from a flow or task of run r1

Creates (keys derived from the run id, lower-case with dashes; re-publishing makes a new version
under the same key):

- ``<run>-report``: a markdown artifact with the plots embedded as small PNG data URIs
  (Pass@1, Pass@K-S, Reward@K-S, diversity, chosen configuration, balance-score heat map,
  selected-samples histogram) and the chosen configuration per round;
- ``<run>-report-search``: a table artifact of the search grid (when the run searched).

and, after every round (`publish_rounds_artifact`), ``<run>-rounds``: one wide table, a row per
(round, test split), with Pass@1 ± SE, Pass@K, Pass@K-S, Reward@K-S, diversity, the balance
score, the round's temperature t and threshold τ, and what it selected; its description says
what every column counts and links the round artifacts and the HTML report. Within one flow run
(a UI Retry included) the table is updated in place rather than versioned once per round.

Outside a flow or task run the artifacts are still created, just not linked to a run.
"""

from __future__ import annotations

import base64
import re

import polars as pl

from . import plots
from .data import load_report_data

__all__ = ["publish_report_artifacts", "artifact_key", "report_markdown", "rounds_rows", "rounds_description",
           "publish_rounds_artifact", "ui_url"]

# PNGs inlined in markdown: keep them small (the artifact is stored in the Prefect database)
_ARTIFACT_DPI = 72


def artifact_key(run_id: str, suffix: str = "report") -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    base = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-") or "run"
    return f"{base}-{suffix}"[:100]


def _md_img(png: bytes | None, title: str) -> list[str]:
    if png is None:
        return []
    b64 = base64.b64encode(png).decode("ascii")
    return [f"### {title}", "", f"![{title}](data:image/png;base64,{b64})", ""]


def report_markdown(data, run_id: str, dpi: int = _ARTIFACT_DPI) -> str:
    """Markdown for one run: embedded plots and the chosen configuration per round."""
    ids = [run_id]
    lines = [f"# bstar report · {run_id}", ""]
    p1 = data.metric("greedy_pass@1").sort("iteration", "split")
    if not p1.is_empty():
        lines += ["| round | split | Pass@1 (greedy) |", "|---|---|---|"]
        lines += [f"| {r['iteration']} | {r['split']} | {r['value']:.4f} |" for r in p1.iter_rows(named=True)]
        lines.append("")
    lines += _md_img(plots.pass_at_1_plot(data.metrics, ids, dpi=dpi), plots.PLOT_TITLES["pass1"])
    for fam in ("pass@k-s", "reward@k-s"):
        lines += _md_img(plots.k_s_plot(data.metrics, ids, fam, dpi=dpi), plots.PLOT_TITLES[fam])
    lines += _md_img(plots.diversity_plot(data.metrics, ids, dpi=dpi), plots.PLOT_TITLES["diversity"])
    lines += _md_img(plots.balance_plot(data.metrics, ids, dpi=dpi), plots.PLOT_TITLES["balance"])
    chosen = data.search.filter(pl.col("chosen")).sort("iteration")
    if not chosen.is_empty():
        lines += ["### Chosen temperature and threshold per round", "", "| round | temperature | threshold | balance score |", "|---|---|---|---|"]
        lines += [
            f"| {r['iteration']} | {r['temperature']:g} | {r['threshold']:g} | {r['balance_score']:.4f} |"
            for r in chosen.iter_rows(named=True)
        ]
        lines.append("")
    lines += _md_img(plots.chosen_config_plot(data.search, ids, dpi=dpi), plots.PLOT_TITLES["chosen"])
    lines += _md_img(plots.balance_heatmap(data.search, run_id, dpi=dpi), plots.PLOT_TITLES["heatmap"])
    lines += _md_img(plots.selected_histogram(data.selected_per_query, ids, dpi=dpi), plots.PLOT_TITLES["histogram"])
    return "\n".join(lines)


def publish_report_artifacts(run_id: str, root, storage_options: dict | None = None) -> list[str]:
    """Create the run's report artifacts (see module docstring); returns their keys."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    data = load_report_data([run_id], root, storage_options)
    keys = []
    key = artifact_key(run_id, "report")
    create_markdown_artifact(markdown=report_markdown(data, run_id), key=key, description=f"bstar report of {run_id}")
    keys.append(key)
    if not data.search.is_empty():
        key = artifact_key(run_id, "report-search")
        rows = [
            {"round": r["iteration"], "temperature": r["temperature"], "threshold": r["threshold"],
             "balance_score": round(r["balance_score"], 6), "n_selected": r["n_selected"],
             "n_unique_correct": r["n_unique_correct"], "chosen": bool(r["chosen"])}
            for r in data.search.sort("iteration", "temperature", "threshold").iter_rows(named=True)
        ]
        create_table_artifact(table=rows, key=key, description=f"balance-score search grid of {run_id}")
        keys.append(key)
    return keys


def _mean_se(value: float | None, se: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.4f}" if se is None else f"{value:.4f} ± {se:.4f}"


def _num(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def rounds_rows(frame: pl.DataFrame, k: int, s: int, plan: dict, self_generated: bool = True) -> list[dict]:
    """The wide round × metric table of one run, as table-artifact rows. `frame` is
    `bstar.reports.compare.per_round` of that run; `plan` is `RunConfig.search_plan()`: a knob
    the method does not search shows its fixed value (round 0, the start, has none)."""
    fixed_t = plan["temperatures"][0] if len(plan["temperatures"]) == 1 else None
    fixed_tau = plan["thresholds"][0] if len(plan["thresholds"]) == 1 else None
    rows = []
    for r in frame.sort("iteration", "split").iter_rows(named=True):
        trained = r["iteration"] > 0 and self_generated
        t = r.get("temperature") if r.get("temperature") is not None else (fixed_t if trained else None)
        tau = r.get("threshold") if r.get("threshold") is not None else (fixed_tau if trained else None)
        rows.append({
            "round": r["iteration"],
            "test split": r["split"],
            "Pass@1 (greedy) ± SE": _mean_se(r.get("Pass@1"), r.get("Pass@1 se")),
            f"Pass@{k} ± SE": _mean_se(r.get("Pass@K"), r.get("Pass@K se")),
            f"Pass@{k}-{s} ± SE": _mean_se(r.get("Pass@K-S"), r.get("Pass@K-S se")),
            f"Reward@{k}-{s} ± SE": _mean_se(r.get("Reward@K-S"), r.get("Reward@K-S se")),
            "diversity": _num(r.get("diversity"), 4),
            "balance score": _num(r.get("balance"), 4),
            "t (temperature)": t,
            "τ (threshold)": tau,
            "selected responses": None if r.get("selected") is None else int(r["selected"]),
            "queries with a selected response": None if r.get("selected queries") is None else int(r["selected queries"]),
        })
    return rows


def rounds_description(run_id: str, cfg, k: int, s: int, links: dict[str, str] | None = None) -> str:
    """What every column of the rounds table counts (markdown, shown above the table in the UI),
    then `links` (title → URL): the round artifacts, the HTML report."""
    lines = [
        f"**{run_id}**, one row per round and test split; round 0 is the starting policy. "
        f"Updated after every round.",
        "",
        "- Pass@…: the fraction of test queries solved, ± one standard error over test queries. "
        f"Pass@1 (greedy): one greedy response per query. Pass@{k}, Pass@{k}-{s}, Reward@{k}-{s}: from "
        f"K = {cfg.eval.k} responses per test query sampled at temperature {cfg.eval.temperature:g} "
        f"(Pass@{k}-{s}: at least S = {s} distinct correct responses among the {k}; Reward@{k}-{s}: the {s} "
        f"best distinct responses by reward are all correct).",
        "- diversity: distinct equations / all equations among a query's correct sampled responses, "
        "averaged over queries.",
        f"- balance score: of the round's (t, τ) on its own training candidates "
        f"(n* = {cfg.selection.target_per_query:g}).",
        f"- t, τ: the temperature the round sampled at and the reward threshold it selected with "
        f"({cfg.search_summary()}).",
        f"- selected responses: self-generated responses with reward > τ kept for training, out of "
        f"{cfg.sampling.k} samples for each of the round's {cfg.selection.queries_per_round} queries "
        f"(the round artifact's search cells count the same on the {cfg.search.queries}-query search subset); "
        "queries with a selected response: how many of those queries kept at least one.",
    ]
    if links:
        lines += ["", " · ".join(f"[{title}]({url})" for title, url in links.items())]
    return "\n".join(lines)


def ui_url() -> str | None:
    """The Prefect UI's base URL when this process talks to a server (None for none)."""
    try:
        from prefect.settings import PREFECT_UI_URL

        return PREFECT_UI_URL.value() or None
    except Exception:  # noqa: BLE001 - links are a convenience, never a failure
        return None


def upsert_table_artifact(key: str, rows: list[dict], description: str) -> str:
    """Create the table artifact `key` of the current flow run, or update the one this flow run
    already made (a table republished after every round stays one artifact). Returns its id."""
    from prefect.artifacts import TableArtifact, create_table_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.runtime import flow_run

    run = flow_run.get_id()
    if run:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run])),
                limit=1,
            )
            if found:
                client.update_artifact(found[0].id, ArtifactUpdate(data=TableArtifact(table=rows).format(), description=description))
                return str(found[0].id)
    return str(create_table_artifact(table=rows, key=key, description=description))


def publish_rounds_artifact(run_id: str, cfg, links: dict[str, str] | None = None) -> str:
    """Publish (or update) the `<run>-rounds` table from the lake; returns its key."""
    from bstar.storage.catalog import connect

    from .compare import per_round, table_k_s

    k, s = table_k_s(cfg)
    con = connect(cfg.storage.root, storage_options=cfg.storage.storage_options() or None)
    try:
        rid = run_id.replace("'", "''")
        metrics = con.sql(f"SELECT run_id, iteration, split, name, k, s, value FROM metrics WHERE run_id = '{rid}'").pl()
        search = con.sql("SELECT run_id, iteration, temperature, threshold, balance_score, chosen FROM search "
                         f"WHERE run_id = '{rid}'").pl()
    finally:
        con.close()
    frame = per_round(metrics, search, [{"label": run_id, "run_ids": [run_id]}], k, s)
    key = artifact_key(run_id, "rounds")
    upsert_table_artifact(key, rounds_rows(frame, k, s, cfg.search_plan(), cfg.self_generated),
                          rounds_description(run_id, cfg, k, s, links))
    return key

