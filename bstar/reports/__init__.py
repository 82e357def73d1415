"""Run reports: one self-contained HTML page, and the same plots as Prefect artifacts.

Command line (wired in ``bstar.cli``)::

    bstar report r1 r2 --root lake --out report.html

From Python::

    from bstar.reports import build_report, publish_report_artifacts
    path = build_report(["r1", "r2"], "lake", out="report.html")   # runs overlaid for comparison
    keys = publish_report_artifacts("r1", "lake")                   # inside a flow/task: shows in the UI

The page is built from the lake alone (``metrics``, ``search``, ``selections``, ``candidates``,
``rewards``, ``queries``): Pass@1 per round per run, Pass@K-S and Reward@K-S per round, diversity,
the balance-score heat map of the (temperature, threshold) grid per round with the chosen cell
marked, selected-samples-per-query histograms, and the best / worst training responses by reward.
Plots are matplotlib PNGs (Agg backend) embedded as base64 data URIs; the page has no scripts and
loads nothing from the network.

Modules: :mod:`.data` (DuckDB queries → polars frames), :mod:`.plots` (frames → PNG bytes),
:mod:`.html` (frames + PNGs → page), :mod:`.artifacts` (Prefect artifacts).
Needs ``matplotlib`` (imported only when a report is drawn).
"""

from __future__ import annotations

__all__ = ["build_report", "render_report", "write_lake_report", "lake_report_path", "publish_report_artifacts",
           "default_out"]


def default_out(run_ids: list[str]) -> str:
    """``bstar-report-<runs>.html`` in the working directory."""
    name = "_".join(run_ids)
    if len(name) > 80:
        name = name[:80] + f"-and-{len(run_ids)}-runs"
    return f"bstar-report-{name}.html"


def build_report(
    run_ids: list[str] | str,
    root,
    out: str | None = None,
    storage_options: dict | None = None,
) -> str:
    """Write the HTML report of ``run_ids`` (lake at ``root``) to ``out``; returns the path.

    Raises ValueError for unknown run ids (the message lists the runs found under ``root``).
    ``out`` defaults to :func:`default_out` in the working directory; its directory is created.
    """
    import os

    if isinstance(run_ids, str):
        run_ids = [run_ids]
    page = render_report(run_ids, root, storage_options)
    out = os.path.abspath(out or default_out(list(run_ids)))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, out)
    return out


def publish_report_artifacts(run_id: str, root, storage_options: dict | None = None) -> list[str]:
    """Attach the report's plots and tables to the current Prefect run; returns the artifact keys."""
    from .artifacts import publish_report_artifacts as _publish

    return _publish(run_id, root, storage_options)


def render_report(run_ids: list[str], root, storage_options: dict | None = None) -> str:
    """The HTML page of ``run_ids`` as text (see :func:`build_report`)."""
    from .data import load_report_data
    from .html import render_page

    return render_page(load_report_data(list(run_ids), root, storage_options))


def lake_report_path(run_id: str) -> str:
    """Where a run's own report lives, relative to the lake root: ``_reports/<run_id>.html``."""
    return f"_reports/{run_id}.html"


def write_lake_report(run_id: str, root, storage_options: dict | None = None) -> str:
    """Write the report of one run into its lake (``{root}/_reports/<run_id>.html``, an object for
    an S3 root) and return its location; a rerun replaces it."""
    from bstar.storage.lake import Lake

    page = render_report([run_id], root, storage_options)
    return Lake(root, storage_options).put_text(lake_report_path(run_id), page)
