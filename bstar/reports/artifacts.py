"""The report's plots and numbers as Prefect artifacts, so the Prefect UI shows them.

    from bstar.reports.artifacts import publish_report_artifacts
    keys = publish_report_artifacts("r1", "lake")     # call from a flow or task of run r1

Creates (keys derived from the run id, lower-case with dashes; re-publishing makes a new version
under the same key):

- ``<run>-report``: a markdown artifact with the plots embedded as small PNG data URIs
  (Pass@1, Pass@K-S, Reward@K-S, diversity, chosen configuration, balance-score heat map,
  selected-samples histogram) and the chosen configuration per round;
- ``<run>-report-metrics``: a table artifact, one row per (round, split, metric, k, s);
- ``<run>-report-search``: a table artifact of the search grid (when the run searched).

Outside a flow or task run the artifacts are still created, just not linked to a run.
"""

from __future__ import annotations

import base64
import re

import polars as pl

from . import plots
from .data import load_report_data

__all__ = ["publish_report_artifacts", "artifact_key", "report_markdown"]

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
    metrics = data.metrics.sort("iteration", "split", "name", "k", "s", nulls_last=False)
    if not metrics.is_empty():
        key = artifact_key(run_id, "report-metrics")
        rows = [
            {"round": r["iteration"], "split": r["split"], "metric": r["name"], "k": r["k"], "s": r["s"],
             "value": None if r["value"] is None else round(r["value"], 6)}
            for r in metrics.iter_rows(named=True)
        ]
        create_table_artifact(table=rows, key=key, description=f"metrics per round of {run_id}")
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
