"""Report frames + PNGs → one self-contained HTML page (inline CSS, images as data URIs, no JS).

    from bstar.reports.html import render_page
    html = render_page(data)                          # str; data = bstar.reports.data.ReportData

Sections (each has an ``<h2>`` title and an ``id``): Pass@1, sampled metrics (Pass@K-S,
Reward@K-S), diversity, configuration search (chosen configuration, balance-score heat maps,
grid tables with the chosen cell marked), selection (samples-per-query histograms) and sample
responses (best / worst by reward). A section a run has no data for says so instead.
Every value printed comes from the frames; all text from the lake is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html

import polars as pl

from . import plots
from .data import ReportData

__all__ = ["render_page", "img_tag", "fmt"]

_RESPONSE_CHARS = 400
_PROMPT_CHARS = 200
# grids larger than this are listed as their best cells (the heat map shows the whole grid)
_MAX_GRID_CELLS = 120
_TOP_CELLS = 10

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1220px; color: #222; background: #fff; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd;
     padding-bottom: 4px; margin-top: 28px; } h3 { font-size: 15px; margin: 14px 0 6px; }
.meta { color: #666; font-size: 13px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #eee; padding: 4px; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #555; text-align: center; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0 12px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; }
td.text { text-align: left; font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;
          max-width: 520px; word-break: break-word; }
td.chosen { background: #ffe1e1; font-weight: bold; outline: 2px solid #d00; }
tr.best td.kind { color: #070; font-weight: bold; } tr.worst td.kind { color: #b00; font-weight: bold; }
.empty { color: #888; font-style: italic; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
"""


def esc(x) -> str:
    return _html.escape("" if x is None else str(x), quote=True)


def fmt(v, digits: int = 4) -> str:
    """A metric value as printed in the tables (``—`` for missing)."""
    if v is None:
        return "—"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def _short(text, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def img_tag(png: bytes, alt: str, plot_id: str) -> str:
    """``<figure>`` with the PNG inlined as a base64 data URI."""
    b64 = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="plot" id="plot-{esc(plot_id)}">'
        f'<img src="data:image/png;base64,{b64}" alt="{esc(alt)}" data-plot="{esc(plot_id)}">'
        f"<figcaption>{esc(alt)}</figcaption></figure>"
    )


def _empty(msg: str) -> str:
    return f'<p class="empty">{esc(msg)}</p>'


def _table(header: list[str], rows: list[list[str]], cls: str = "", raw: bool = False) -> str:
    """Rows of already-escaped cell HTML (``raw``) or plain values (escaped here)."""
    out = [f'<table class="{esc(cls)}">', "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for r in rows:
        cells = r if raw else [f"<td>{esc(c)}</td>" for c in r]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# -- sections ----------------------------------------------------------------------------------


def _pass1_section(d: ReportData) -> str:
    parts = ['<section id="pass1"><h2>Pass@1 per round</h2>']
    p1 = d.metric("greedy_pass@1")
    png = plots.pass_at_1_plot(d.metrics, d.run_ids)
    if png is None:
        parts.append(_empty("No greedy Pass@1 metrics for these runs."))
        return "\n".join(parts + ["</section>"])
    parts.append(f'<div class="plots">{img_tag(png, plots.PLOT_TITLES["pass1"], "pass1")}</div>')
    se = d.metric("greedy_pass@1_se").select("run_id", "iteration", "split", pl.col("value").alias("se"))
    p1 = p1.join(se, on=["run_id", "iteration", "split"], how="left")
    iters = sorted(p1["iteration"].unique().to_list())
    rows = []
    for (run, split), g in sorted(p1.group_by("run_id", "split"), key=lambda kv: (d.run_ids.index(kv[0][0]), kv[0][1])):
        by_it = {r["iteration"]: r for r in g.iter_rows(named=True)}
        cells = [f"<td>{esc(run)}</td>", f"<td>{esc(split)}</td>"]
        for it in iters:
            r = by_it.get(it)
            if r is None:
                cells.append("<td>—</td>")
            else:
                se_txt = "" if r["se"] is None else f" ± {fmt(r['se'])}"
                cells.append(f'<td data-run="{esc(run)}" data-iteration="{it}">{fmt(r["value"])}{esc(se_txt)}</td>')
        rows.append(cells)
    parts.append(_table(["run", "split"] + [f"round {it}" for it in iters], rows, "pass1-table", raw=True))
    return "\n".join(parts + ["</section>"])


def _sampled_section(d: ReportData) -> str:
    parts = ['<section id="sampled"><h2>Sampled metrics: Pass@K-S and Reward@K-S</h2>']
    figs = []
    for fam in ("pass@k-s", "reward@k-s"):
        png = plots.k_s_plot(d.metrics, d.run_ids, fam)
        if png is not None:
            figs.append(img_tag(png, plots.PLOT_TITLES[fam], fam.replace("@", "-at-")))
    names = ["accuracy", "pass@k", "pass@k-s", "reward@k-s"]
    sm = d.metrics.filter(pl.col("name").is_in(names))
    if sm.is_empty():
        parts.append(_empty("No sampled metrics (eval.k = 0 or no eval samples): only greedy Pass@1 was measured."))
        return "\n".join(parts + ["</section>"])
    if figs:
        parts.append(f'<div class="plots">{"".join(figs)}</div>')
    sm = sm.with_columns(
        pl.when(pl.col("k").is_null())
        .then(pl.col("name"))
        .when(pl.col("s").is_null())
        .then(pl.col("name").str.replace("@k", "@") + pl.col("k").cast(pl.String))
        .otherwise(
            pl.col("name").str.replace("@k-s", "@") + pl.col("k").cast(pl.String) + pl.lit("-") + pl.col("s").cast(pl.String)
        )
        .alias("label")
    )
    order = (
        sm.select("name", "k", "s", "label").unique()
        .with_columns(pl.col("name").replace_strict({n: i for i, n in enumerate(names)}).alias("o"))
        .sort("o", "k", "s", nulls_last=False)["label"].to_list()
    )
    rows = []
    for key, g in sorted(sm.group_by("run_id", "split", "iteration"), key=lambda kv: (d.run_ids.index(kv[0][0]), kv[0][1], kv[0][2])):
        vals = {r["label"]: r["value"] for r in g.iter_rows(named=True)}
        rows.append([key[0], key[1], key[2]] + [fmt(vals.get(lbl)) for lbl in order])
    parts.append(_table(["run", "split", "round"] + order, rows, "sampled-table"))
    return "\n".join(parts + ["</section>"])


def _diversity_section(d: ReportData) -> str:
    parts = ['<section id="diversity"><h2>Diversity</h2>']
    png = plots.diversity_plot(d.metrics, d.run_ids)
    if png is None:
        parts.append(_empty("No diversity metric (no sampled eval, or no correct response with an equation)."))
    else:
        parts.append(f'<div class="plots">{img_tag(png, plots.PLOT_TITLES["diversity"], "diversity")}</div>')
    return "\n".join(parts + ["</section>"])


def _balance_section(d: ReportData) -> str:
    parts = ['<section id="balance"><h2>Balance score per round</h2>']
    png = plots.balance_plot(d.metrics, d.run_ids)
    if png is None:
        parts.append(_empty("No balance score (no round trained on self-generated samples)."))
        return "\n".join(parts + ["</section>"])
    parts.append("<p>The balance score of the configuration each round used, on that round's own training "
                 "candidates (every method), and B-STaR's search estimate of it.</p>")
    parts.append(f'<div class="plots">{img_tag(png, plots.PLOT_TITLES["balance"], "balance")}</div>')
    b = d.metrics.filter(pl.col("name").is_in(["balance_score", "search_balance_score", "selected"]))
    vals = {(r["run_id"], r["iteration"], r["name"]): r["value"] for r in b.iter_rows(named=True)}
    keys = sorted({(r, i) for r, i, _ in vals}, key=lambda x: (d.run_ids.index(x[0]) if x[0] in d.run_ids else 0, x[1]))
    rows = [[run, it, fmt(vals.get((run, it, "balance_score"))), fmt(vals.get((run, it, "search_balance_score"))),
             "—" if vals.get((run, it, "selected")) is None else f"{vals[(run, it, 'selected')]:.0f}"] for run, it in keys]
    parts.append(_table(["run", "round", "balance score (round)", "balance score (search)", "selected samples"],
                        rows, "balance-table"))
    return "\n".join(parts + ["</section>"])


def _top_cells_table(g: pl.DataFrame, n: int) -> str:
    """Large grids: the ``n`` best cells (and the chosen one) instead of the whole pivot."""
    top = g.sort(["balance_score", "temperature", "threshold"], descending=[True, False, True]).head(n)
    if not top["chosen"].any():
        top = pl.concat([top, g.filter(pl.col("chosen"))])
    rows = []
    for r in top.iter_rows(named=True):
        cls = ' class="chosen"' if r["chosen"] else ""
        mark = "★ " if r["chosen"] else ""
        rows.append(
            [f"<td>{r['temperature']:g}</td>", f"<td>{r['threshold']:g}</td>",
             f"<td{cls}>{mark}{fmt(r['balance_score'])}</td>", f"<td>{r['n_selected']}</td>",
             f"<td>{r['n_unique_correct']}</td>"]
        )
    return _table(["temperature", "threshold τ", "balance score", "n selected", "n unique correct"], rows, "grid-top-table", raw=True)


def _grid_table(g: pl.DataFrame) -> str:
    if g.height > _MAX_GRID_CELLS:
        return _top_cells_table(g, _TOP_CELLS)
    temps = sorted(g["temperature"].unique().to_list())
    thrs = sorted(g["threshold"].unique().to_list())
    cells = {(r["temperature"], r["threshold"]): r for r in g.iter_rows(named=True)}
    rows = []
    for t in temps:
        row = [f"<th>t = {t:g}</th>"]
        for h in thrs:
            r = cells.get((t, h))
            if r is None:
                row.append("<td>—</td>")
            elif r["chosen"]:
                row.append(
                    f'<td class="chosen" title="chosen: n_selected={r["n_selected"]}, '
                    f'n_unique_correct={r["n_unique_correct"]}">★ {fmt(r["balance_score"])}</td>'
                )
            else:
                row.append(f"<td>{fmt(r['balance_score'])}</td>")
        rows.append(row)
    return _table(["temperature \\ threshold τ"] + [f"{h:g}" for h in thrs], rows, "grid-table", raw=True)


def _search_section(d: ReportData) -> str:
    parts = ['<section id="search"><h2>Configuration search (balance score)</h2>']
    searched = [r for r in d.run_ids if r in set(d.search["run_id"].to_list())]
    not_searched = [r for r in d.run_ids if r not in searched]
    if not searched:
        parts.append(_empty("No search table for these runs (their method does not search the configuration)."))
        return "\n".join(parts + ["</section>"])
    if not_searched:
        parts.append(_empty(f"No search table for {', '.join(not_searched)} (method does not search)."))
    figs = []
    png = plots.chosen_config_plot(d.search, d.run_ids)
    if png is not None:
        figs.append(img_tag(png, plots.PLOT_TITLES["chosen"], "chosen"))
    for run in searched:
        png = plots.balance_heatmap(d.search, run)
        if png is not None:
            figs.append(img_tag(png, f"{run}: {plots.PLOT_TITLES['heatmap']}", f"heatmap-{run}"))
    parts.append(f'<div class="plots">{"".join(figs)}</div>')
    chosen = d.search.filter(pl.col("chosen"))
    rows = [
        [r["run_id"], r["iteration"], f"{r['temperature']:g}", f"{r['threshold']:g}", fmt(r["balance_score"]),
         r["n_selected"], r["n_unique_correct"], r["n_queries"]]
        for r in chosen.iter_rows(named=True)
    ]
    parts.append("<h3>Chosen configuration per round</h3>")
    parts.append(_table(["run", "round", "temperature", "threshold", "balance score", "n selected", "n unique correct", "queries"], rows, "chosen-table"))
    for run in searched:
        for it in sorted(d.search.filter(pl.col("run_id") == run)["iteration"].unique().to_list()):
            g = d.search.filter((pl.col("run_id") == run) & (pl.col("iteration") == it))
            what = "balance score grid" if g.height <= _MAX_GRID_CELLS else f"best {_TOP_CELLS} of {g.height} grid cells"
            parts.append(f'<h3 id="grid-{esc(run)}-{it}">{esc(run)} · round {it}: {what} (★ = chosen)</h3>')
            parts.append(_grid_table(g))
    return "\n".join(parts + ["</section>"])


def _selection_section(d: ReportData) -> str:
    parts = ['<section id="selection"><h2>Selected samples per query</h2>']
    png = plots.selected_histogram(d.selected_per_query, d.run_ids)
    if png is None:
        parts.append(_empty("No selections for these runs."))
        return "\n".join(parts + ["</section>"])
    parts.append(f'<div class="plots">{img_tag(png, plots.PLOT_TITLES["histogram"], "histogram")}</div>')
    summ = (
        d.selected_per_query.group_by("run_id", "iteration")
        .agg(
            pl.len().alias("queries"),
            (pl.col("n_selected") > 0).sum().alias("with_any"),
            pl.col("n_selected").sum().alias("selected"),
            pl.col("n_selected").mean().alias("mean"),
            pl.col("n_selected").max().alias("max"),
        )
        .sort("run_id", "iteration")
    )
    rows = [[r["run_id"], r["iteration"], r["queries"], r["with_any"], r["selected"], fmt(r["mean"], 2), r["max"]] for r in summ.iter_rows(named=True)]
    parts.append(_table(["run", "round", "queries", "queries with ≥1 selected", "selected samples", "mean per query", "max per query"], rows, "selection-table"))
    return "\n".join(parts + ["</section>"])


def _examples_section(d: ReportData) -> str:
    parts = ['<section id="examples"><h2>Sample responses: best and worst by reward</h2>']
    ex = d.examples
    if ex.is_empty():
        parts.append(_empty("No scored training samples for these runs."))
        return "\n".join(parts + ["</section>"])
    parts.append('<p class="meta">Training-stage samples of each round, ranked by reward per scorer (ties: query id, sample index).</p>')
    rows = []
    ex = ex.with_columns(pl.col("run_id").replace_strict({r: i for i, r in enumerate(d.run_ids)}, default=len(d.run_ids)).alias("_o"))
    for r in ex.sort("_o", "iteration", "scorer", "kind", "rank").iter_rows(named=True):
        correct = "—" if r["correct"] is None else ("✓" if r["correct"] else "✗")
        temp = "" if r["temperature"] is None else f"{r['temperature']:g}"
        rows.append(
            f'<tr class="{esc(r["kind"])}" data-reward="{esc(r["reward"])}">'
            f"<td>{esc(r['run_id'])}</td><td>{r['iteration']}</td><td class=\"kind\">{esc(r['kind'])} #{r['rank']}</td>"
            f"<td>{esc(r['scorer'])}</td><td>{fmt(r['reward'])}</td><td>{correct}</td><td>{esc(r['status'])}</td>"
            f"<td>{temp}</td>"
            f"<td class=\"text\">{esc(r['query_id'])}/{r['sample_idx']}: {esc(_short(r['prompt'], _PROMPT_CHARS))}</td>"
            f"<td class=\"text\">{esc(r['answer'])}</td>"
            f"<td class=\"text\">{esc(_short(r['response'], _RESPONSE_CHARS))}</td></tr>"
        )
    header = ["run", "round", "rank", "scorer", "reward", "correct", "status", "t", "query", "answer", "response"]
    parts.append(
        '<table class="examples-table"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in header)
        + "</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table>"
    )
    return "\n".join(parts + ["</section>"])


def _legend_html(d: ReportData) -> str:
    colors = plots.run_colors(d.run_ids)
    return " ".join(
        f'<span><span class="swatch" style="background:{c}"></span>{esc(r)}</span>' for r, c in colors.items()
    )


def render_page(d: ReportData, generated_at: _dt.datetime | None = None) -> str:
    """The whole report page for ``d`` as an HTML string."""
    when = (generated_at or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    title = f"bstar report: {', '.join(d.run_ids)}"
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">lake {esc(d.root)} · generated {esc(when)} · runs: {_legend_html(d)}</p>',
        '<p class="meta">Round 0 is the policy after warm-up; rounds 1..n follow each self-improvement iteration.</p>',
        _pass1_section(d),
        _sampled_section(d),
        _diversity_section(d),
        _balance_section(d),
        _search_section(d),
        _selection_section(d),
        _examples_section(d),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
