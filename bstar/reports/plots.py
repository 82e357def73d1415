"""Report frames → PNG bytes (matplotlib, Agg canvas; no pyplot global state).

    from bstar.reports.plots import pass_at_1_plot
    png = pass_at_1_plot(data.metrics, run_ids)         # bytes, or None when there is nothing to draw

Every function takes polars frames from :mod:`bstar.reports.data` and the ordered run ids
(a run keeps its colour in every plot), and returns PNG bytes or ``None`` when the frame has no
rows for it. Several runs are overlaid in one axes (or side by side for bars).
"""

from __future__ import annotations

import io
import math

import polars as pl

__all__ = [
    "PLOT_TITLES",
    "pass_at_1_plot",
    "k_s_plot",
    "diversity_plot",
    "balance_plot",
    "chosen_config_plot",
    "balance_heatmap",
    "selected_histogram",
    "run_colors",
]

PLOT_TITLES = {
    "pass1": "Greedy Pass@1 per round",
    "pass@k-s": "Pass@K-S per round",
    "reward@k-s": "Reward@K-S per round",
    "diversity": "Diversity of correct responses per round",
    "balance": "Balance score of each round's configuration",
    "chosen": "Chosen configuration per round",
    "heatmap": "Balance score over the (temperature, threshold) grid",
    "histogram": "Selected samples per query",
}

_LINESTYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def run_colors(run_ids: list[str]) -> dict[str, str]:
    """A fixed colour per run (tab10 order)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {r: _hex(cmap(i % 10)) for i, r in enumerate(run_ids)}


def _hex(rgba) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgba[:3])


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (0 = after warm-up)")


def _legend(ax) -> None:
    handles = ax.get_legend_handles_labels()[0]
    if len(handles) > 10:  # a comparison of many runs: under the figure, which grows to hold it
        _figure_legend(ax.figure, ax)
    elif len(handles) > 4:  # many lines: beside the axes, not over the curves
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif handles:
        ax.legend(fontsize=8, loc="best")


def _figure_legend(fig, ax) -> None:
    """One legend under the figure, in columns; the figure grows by its height, so a legend of
    ten or thirty runs never squeezes the axes to nothing."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ncol = min(3, len(handles))
    fig.set_figheight(fig.get_figheight() + 0.16 * -(-len(handles) // ncol))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=6)


def _per_round_png(ax, title: str, ylabel: str, dpi: int) -> bytes:
    """Title, labels, integer round axis, grid and legend of a metric-per-round plot; its PNG."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _integer_x(ax)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _png(ax.figure, dpi)


def pass_at_1_plot(metrics: pl.DataFrame, run_ids: list[str], dpi: int = 100) -> bytes | None:
    """Greedy Pass@1 against the round, one line per (run, test split), ±1 standard error."""
    p1 = metrics.filter(pl.col("name") == "greedy_pass@1")
    if p1.is_empty():
        return None
    se = metrics.filter(pl.col("name") == "greedy_pass@1_se").select(
        "run_id", "iteration", "split", pl.col("value").alias("se")
    )
    p1 = p1.join(se, on=["run_id", "iteration", "split"], how="left").sort("iteration")
    colors = run_colors(run_ids)
    splits = sorted(p1["split"].unique().to_list())
    fig = _figure(5.8, 3.4)
    ax = fig.add_subplot()
    for run in run_ids:
        for j, split in enumerate(splits):
            d = p1.filter((pl.col("run_id") == run) & (pl.col("split") == split))
            if d.is_empty():
                continue
            label = run if len(splits) == 1 else f"{run} · {split}"
            ax.errorbar(
                d["iteration"].to_list(),
                d["value"].to_list(),
                yerr=d["se"].fill_null(0.0).to_list(),
                color=colors[run],
                linestyle=_LINESTYLES[j % len(_LINESTYLES)],
                marker=_MARKERS[j % len(_MARKERS)],
                capsize=3,
                label=label,
            )
    return _per_round_png(ax, PLOT_TITLES["pass1"], "Pass@1 (greedy)", dpi)


def k_s_plot(metrics: pl.DataFrame, run_ids: list[str], family: str, dpi: int = 100) -> bytes | None:
    """``pass@k-s`` or ``reward@k-s`` against the round: colour = run, style = (K, S)."""
    if family not in ("pass@k-s", "reward@k-s"):
        raise ValueError(f"family must be 'pass@k-s' or 'reward@k-s', got {family!r}")
    d = metrics.filter(pl.col("name") == family).sort("iteration")
    if d.is_empty():
        return None
    colors = run_colors(run_ids)
    combos = d.select("split", "k", "s").unique().sort("split", "k", "s").rows()
    multi_split = len({c[0] for c in combos}) > 1
    short = "Pass" if family.startswith("pass") else "Reward"
    fig = _figure(5.8, 3.4)
    ax = fig.add_subplot()
    for run in run_ids:
        for j, (split, k, s) in enumerate(combos):
            g = d.filter((pl.col("run_id") == run) & (pl.col("split") == split) & (pl.col("k") == k) & (pl.col("s") == s))
            if g.is_empty():
                continue
            label = f"{run} · {short}@{k}-{s}" + (f" · {split}" if multi_split else "")
            ax.plot(
                g["iteration"].to_list(),
                g["value"].to_list(),
                color=colors[run],
                linestyle=_LINESTYLES[j % len(_LINESTYLES)],
                marker=_MARKERS[j % len(_MARKERS)],
                label=label,
            )
    return _per_round_png(ax, PLOT_TITLES[family], f"{short}@K-S", dpi)


def diversity_plot(metrics: pl.DataFrame, run_ids: list[str], dpi: int = 100) -> bytes | None:
    """Diversity (unique / all equations among correct responses) against the round."""
    d = metrics.filter(pl.col("name") == "diversity").sort("iteration")
    if d.is_empty():
        return None
    colors = run_colors(run_ids)
    splits = sorted(d["split"].unique().to_list())
    fig = _figure(5.8, 3.2)
    ax = fig.add_subplot()
    for run in run_ids:
        for j, split in enumerate(splits):
            g = d.filter((pl.col("run_id") == run) & (pl.col("split") == split))
            if g.is_empty():
                continue
            ax.plot(
                g["iteration"].to_list(),
                g["value"].to_list(),
                color=colors[run],
                linestyle=_LINESTYLES[j % len(_LINESTYLES)],
                marker=_MARKERS[j % len(_MARKERS)],
                label=run if len(splits) == 1 else f"{run} · {split}",
            )
    return _per_round_png(ax, PLOT_TITLES["diversity"], "unique / all equations", dpi)


def balance_plot(metrics: pl.DataFrame, run_ids: list[str], dpi: int = 100) -> bytes | None:
    """The balance score of the configuration each round used, on its own training candidates
    (solid, every self-training method), and B-STaR's search estimate of it (dashed), against the
    round: the paper's comparison of B-STaR's and online RFT's balance over training."""
    d = metrics.filter(pl.col("name").is_in(["balance_score", "search_balance_score"])).sort("iteration")
    if d.is_empty():
        return None
    colors = run_colors(run_ids)
    fig = _figure(5.8, 3.2)
    ax = fig.add_subplot()
    for run in run_ids:
        for name, style, marker, what in (("balance_score", "-", "o", "round"), ("search_balance_score", "--", "s", "search")):
            g = d.filter((pl.col("run_id") == run) & (pl.col("name") == name))
            if g.is_empty():
                continue
            ax.plot(g["iteration"].to_list(), g["value"].to_list(), color=colors[run], linestyle=style,
                    marker=marker, label=f"{run} · {what}")
    return _per_round_png(ax, PLOT_TITLES["balance"], "balance score", dpi)


def chosen_config_plot(search: pl.DataFrame, run_ids: list[str], dpi: int = 100) -> bytes | None:
    """The chosen temperature, threshold and balance score against the round (searched runs)."""
    chosen = search.filter(pl.col("chosen")).sort("iteration")
    if chosen.is_empty():
        return None
    colors = run_colors(run_ids)
    fig = _figure(9.6, 3.0)
    axes = fig.subplots(1, 3)
    for ax, col, label in zip(axes, ("temperature", "threshold", "balance_score"), ("temperature", "threshold τ", "balance score")):
        for run in run_ids:
            g = chosen.filter(pl.col("run_id") == run)
            if g.is_empty():
                continue
            ax.plot(g["iteration"].to_list(), g[col].to_list(), color=colors[run], marker="o", label=run)
        ax.set_ylabel(label)
        _integer_x(ax)
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes[0])
    fig.suptitle(PLOT_TITLES["chosen"])
    return _png(fig, dpi)


def _tick_subset(n: int, most: int = 9) -> list[int]:
    """At most ``most`` evenly spaced tick positions out of ``n`` (always the first and last)."""
    if n <= most:
        return list(range(n))
    step = math.ceil((n - 1) / (most - 1))
    ticks = list(range(0, n - 1, step))
    return ticks + [n - 1] if n - 1 - ticks[-1] >= step / 2 else ticks[:-1] + [n - 1]


def balance_heatmap(search: pl.DataFrame, run_id: str, dpi: int = 100) -> bytes | None:
    """One run's grid per round: rows = temperature, columns = threshold, chosen cell boxed."""
    from matplotlib.patches import Rectangle

    d = search.filter(pl.col("run_id") == run_id)
    if d.is_empty():
        return None
    rounds = sorted(d["iteration"].unique().to_list())
    temps = sorted(d["temperature"].unique().to_list())
    thrs = sorted(d["threshold"].unique().to_list())
    vmin = float(d["balance_score"].min())
    vmax = float(d["balance_score"].max())
    if vmax <= vmin:
        vmax = vmin + 1e-9
    ncols = min(len(rounds), 4)
    nrows = math.ceil(len(rounds) / ncols)
    cell_w = min(max(0.45 * len(thrs), 1.6), 3.6)
    cell_h = min(max(0.32 * len(temps), 1.2), 3.0)
    fig = _figure(min(2.0 + ncols * (cell_w + 0.8), 12.0), 0.9 + nrows * (cell_h + 0.8))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for i, it in enumerate(rounds):
        ax = axes[i // ncols][i % ncols]
        g = d.filter(pl.col("iteration") == it)
        grid = [[math.nan] * len(thrs) for _ in temps]
        chosen_cells = []
        for r in g.iter_rows(named=True):
            ti, hi = temps.index(r["temperature"]), thrs.index(r["threshold"])
            grid[ti][hi] = r["balance_score"]
            if r["chosen"]:
                chosen_cells.append((ti, hi))
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        small = len(temps) * len(thrs) <= 48
        for ti in range(len(temps)):
            for hi in range(len(thrs)):
                v = grid[ti][hi]
                if small and not math.isnan(v):
                    ax.text(hi, ti, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if (v - vmin) / (vmax - vmin) < 0.6 else "black")
        for ti, hi in chosen_cells:
            ax.add_patch(Rectangle((hi - 0.5, ti - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
            ax.plot([hi], [ti + 0.3], marker="*", color="red", markersize=9)
        xs, ys = _tick_subset(len(thrs)), _tick_subset(len(temps))
        ax.set_xticks(xs, [f"{thrs[i]:g}" for i in xs], fontsize=7, rotation=45 if len(xs) > 6 else 0)
        ax.set_yticks(ys, [f"{temps[i]:g}" for i in ys], fontsize=7)
        ax.set_title(f"round {it}", fontsize=9)
        ax.set_xlabel("threshold τ", fontsize=8)
        ax.set_ylabel("temperature", fontsize=8)
    for j in range(len(rounds), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8, label="balance score")
    fig.suptitle(f"{run_id}: {PLOT_TITLES['heatmap']} (red box = chosen)", fontsize=10)
    return _png(fig, dpi)


def selected_histogram(selected: pl.DataFrame, run_ids: list[str], dpi: int = 100) -> bytes | None:
    """Per round: how many queries got 0, 1, 2, ... selected samples (bars side by side per run)."""
    if selected.is_empty():
        return None
    counts = selected.group_by("run_id", "iteration", "n_selected").len().sort("n_selected")
    rounds = sorted(counts["iteration"].unique().to_list())
    colors = run_colors(run_ids)
    present = [r for r in run_ids if r in set(counts["run_id"].to_list())]
    ncols = min(len(rounds), 3)
    nrows = math.ceil(len(rounds) / ncols)
    fig = _figure(min(3.4 * ncols + 0.6, 11.0), 2.8 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    width = 0.8 / max(len(present), 1)
    for i, it in enumerate(rounds):
        ax = axes[i // ncols][i % ncols]
        for j, run in enumerate(present):
            g = counts.filter((pl.col("run_id") == run) & (pl.col("iteration") == it))
            if g.is_empty():
                continue
            xs = [x - 0.4 + width * (j + 0.5) for x in g["n_selected"].to_list()]
            ax.bar(xs, g["len"].to_list(), width=width, color=colors[run], label=run)
        ax.set_title(f"round {it}", fontsize=9)
        ax.set_xlabel("selected samples per query", fontsize=8)
        ax.set_ylabel("queries", fontsize=8)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, axis="y")
    for j in range(len(rounds), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    _figure_legend(fig, axes[0][0])
    fig.suptitle(PLOT_TITLES["histogram"], fontsize=10)
    return _png(fig, dpi)
