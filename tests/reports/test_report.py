"""The HTML report built from a hand-made lake: real values, marked chosen cells, best/worst rows."""

import io
import os

import polars as pl
import pytest

from bstar.reports import build_report, default_out
from bstar.reports.data import load_report_data
from bstar.storage.lake import Lake

from .conftest import CHOSEN, PASS1, PASS_KS, REWARD_KS, ROUND_BALANCE, SOLO_PASS1, TEMPS, THRESHOLDS, balance
from .htmltables import parse


@pytest.fixture(scope="module")
def report(report_lake, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    path = build_report(["alpha", "beta"], report_lake, out=str(out))
    html = open(path, encoding="utf-8").read()
    return path, html, parse(html)


def test_writes_the_file_it_returns(report):
    path, html, _ = report
    assert os.path.isfile(path) and path.endswith("report.html")
    assert html.startswith("<!DOCTYPE html>")
    # self-contained: no external resource, no script
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert 'src="data:image/png;base64,' in html


def test_pass1_table_has_the_stored_values(report):
    _, _, page = report
    t = page.table("pass1-table")
    header = [c[0] for c in t["rows"][0]]
    assert header == ["run", "split", "round 0", "round 1", "round 2"]
    body = {(r[0][0], r[1][0]): [c[0] for c in r[2:]] for r in t["rows"][1:]}
    assert set(body) == {("alpha", "test"), ("beta", "test")}
    for run, values in PASS1.items():
        assert body[(run, "test")] == [f"{v:.4f} ± 0.0125" for v in values]


def test_sampled_metrics_table(report):
    _, _, page = report
    t = page.table("sampled-table")
    header = [c[0] for c in t["rows"][0]]
    assert header == ["run", "split", "round", "accuracy", "pass@4", "pass@4-1", "pass@4-2", "reward@4-1"]
    rows = {(r[0][0], int(r[2][0])): dict(zip(header, [c[0] for c in r])) for r in t["rows"][1:]}
    assert rows[("alpha", 2)]["pass@4-2"] == f"{PASS_KS[(4, 2)][2]:.4f}"
    assert rows[("beta", 1)]["reward@4-1"] == f"{REWARD_KS[(4, 1)][1] - 0.05:.4f}"


def test_balance_table_has_every_methods_round_score_beside_the_search_estimate(report):
    _, _, page = report
    t = page.table("balance-table")
    header = [c[0] for c in t["rows"][0]]
    assert header == ["run", "round", "balance score (round)", "balance score (search)", "selected samples"]
    rows = {(r[0][0], int(r[1][0])): [c[0] for c in r[2:]] for r in t["rows"][1:]}
    assert set(rows) == {("alpha", 1), ("alpha", 2), ("beta", 1), ("beta", 2)}  # online-rft too
    for (run, it), (round_bs, search_bs, _) in rows.items():
        assert round_bs == f"{ROUND_BALANCE[run][it]:.4f}"
        assert search_bs == (f"{balance(it, *CHOSEN[it]):.4f}" if run == "alpha" else "—")


def test_chosen_cell_is_marked_once_per_round(report):
    _, _, page = report
    for it, (t_chosen, h_chosen) in CHOSEN.items():
        g = page.table("grid-table", after=f"alpha · round {it}: balance score grid (★ = chosen)")
        header = [c[0] for c in g["rows"][0]][1:]
        assert header == [f"{h:g}" for h in THRESHOLDS]
        marked = []
        for row in g["rows"][1:]:
            t = float(row[0][0].removeprefix("t = "))
            for h, (text, attrs) in zip(THRESHOLDS, row[1:]):
                if attrs.get("class") == "chosen":
                    marked.append((t, h, text))
                else:
                    assert text == f"{balance(it, t, h):.4f}" and "★" not in text
        assert marked == [(t_chosen, h_chosen, f"★ {balance(it, t_chosen, h_chosen):.4f}")]
    chosen = page.table("chosen-table")
    rows = [[c[0] for c in r] for r in chosen["rows"][1:]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("alpha", str(it), f"{t:g}", f"{h:g}") for it, (t, h) in sorted(CHOSEN.items())
    ]


def test_runs_without_search_are_named(report):
    _, html, _ = report
    assert "No search table for beta (method does not search)." in html


def test_best_and_worst_responses_are_the_extreme_rewards(report, report_lake):
    _, html, page = report
    t = page.table("examples-table")
    header = [c[0] for c in t["rows"][0]]
    rows = [dict(zip(header, [c[0] for c in r])) for r in t["rows"][1:]]
    assert rows, "no example rows"
    rewards = Lake(report_lake).read("rewards", stage="train")
    cands = Lake(report_lake).read("candidates", stage="train")
    scored = cands.join(rewards, on=["run_id", "iteration", "query_id", "sample_idx"])
    for (run, it), g in scored.group_by("run_id", "iteration"):
        best = g.sort("reward", descending=True).row(0, named=True)
        worst = g.sort("reward").row(0, named=True)
        mine = [r for r in rows if r["run"] == run and r["round"] == str(it)]
        b1 = [r for r in mine if r["rank"] == "best #1"]
        w1 = [r for r in mine if r["rank"] == "worst #1"]
        assert len(b1) == 1 and len(w1) == 1
        assert b1[0]["reward"] == f"{best['reward']:.4f}" and b1[0]["response"] == best["response"]
        assert w1[0]["reward"] == f"{worst['reward']:.4f}" and w1[0]["response"] == worst["response"]
        assert b1[0]["correct"] == "✓" and w1[0]["correct"] == "✗"
        # best rows are in descending, worst rows in ascending reward order
        best_vals = [float(r["reward"]) for r in mine if r["rank"].startswith("best")]
        worst_vals = [float(r["reward"]) for r in mine if r["rank"].startswith("worst")]
        assert best_vals == sorted(best_vals, reverse=True) and len(best_vals) == 3
        assert worst_vals == sorted(worst_vals) and max(worst_vals) < min(best_vals)
    # text from the lake is escaped, never markup
    assert "<answer>" not in html and "&lt;answer&gt;" in html


def test_selection_counts_include_queries_with_none(report, report_lake):
    _, _, page = report
    t = page.table("selection-table")
    rows = {(r[0][0], r[1][0]): [c[0] for c in r[2:]] for r in t["rows"][1:]}
    sel = Lake(report_lake).read("selections")
    for (run, it), g in sel.group_by("run_id", "iteration"):
        queries, with_any, selected = rows[(run, str(it))][:3]
        assert queries == "6"  # every query sampled in the round, also those with nothing selected
        assert with_any == str(g["query_id"].n_unique())
        assert selected == str(g.height)
    d = load_report_data(["alpha"], report_lake)
    per_q = d.selected_per_query.filter(pl.col("iteration") == 1)
    assert per_q.height == 6 and per_q.filter(pl.col("n_selected") == 0).height == 3


def test_every_plot_is_a_png(report):
    from PIL import Image

    _, _, page = report
    import base64

    names = [img["data-plot"] for img in page.images]
    assert names == ["pass1", "pass-at-k-s", "reward-at-k-s", "diversity", "balance", "chosen", "heatmap-alpha",
                     "histogram"]
    for img in page.images:
        raw = base64.b64decode(img["src"].split(",", 1)[1])
        im = Image.open(io.BytesIO(raw))
        assert im.format == "PNG" and im.width >= 300 and im.height >= 200
    for title in ["Pass@1 per round", "Sampled metrics: Pass@K-S and Reward@K-S", "Diversity", "Balance score per round",
                  "Configuration search (balance score)", "Selected samples per query",
                  "Sample responses: best and worst by reward"]:
        assert title in page.headings


def test_unknown_run_id_is_named_with_the_known_runs(report_lake, tmp_path):
    with pytest.raises(ValueError, match=r"unknown run id\(s\) nope under .*; known runs: alpha, beta, solo"):
        build_report(["alpha", "nope"], report_lake, out=str(tmp_path / "x.html"))
    assert not (tmp_path / "x.html").exists()
    with pytest.raises(ValueError, match="known runs: none"):
        build_report(["r1"], tmp_path / "empty-lake", out=str(tmp_path / "y.html"))


def test_single_round_without_search_nor_sampled_metrics(report_lake, tmp_path):
    path = build_report("solo", report_lake, out=str(tmp_path / "sub" / "solo.html"))
    html = open(path, encoding="utf-8").read()
    page = parse(html)
    body = [[c[0] for c in r] for r in page.table("pass1-table")["rows"][1:]]
    assert body == [["solo", "test", f"{SOLO_PASS1[0]:.4f}", f"{SOLO_PASS1[1]:.4f}"]]
    assert [img["data-plot"] for img in page.images] == ["pass1"]
    assert "No sampled metrics (eval.k = 0" in html
    assert "No search table for these runs" in html
    assert "No selections for these runs." in html
    assert "No scored training samples for these runs." in html


def test_plots_of_one_round_and_empty_frames():
    from bstar.reports import plots

    grid = pl.DataFrame(
        [{"run_id": "x", "iteration": 1, "temperature": t, "threshold": h, "balance_score": 0.5,
          "n_selected": 1, "n_unique_correct": 1, "n_queries": 1, "chosen": (t, h) == (TEMPS[0], THRESHOLDS[0])}
         for t in TEMPS for h in THRESHOLDS]
    )
    assert plots.balance_heatmap(grid, "x").startswith(b"\x89PNG")  # constant scores, one round
    assert plots.balance_heatmap(grid, "other") is None
    empty = pl.DataFrame(schema={"run_id": pl.String, "iteration": pl.Int32, "split": pl.String, "name": pl.String,
                                 "k": pl.Int32, "s": pl.Int32, "value": pl.Float64})
    assert plots.pass_at_1_plot(empty, ["x"]) is None
    assert plots.k_s_plot(empty, ["x"], "pass@k-s") is None
    with pytest.raises(ValueError, match="family"):
        plots.k_s_plot(empty, ["x"], "pass@k")


def test_default_out_name():
    assert default_out(["r1", "r2"]) == "bstar-report-r1_r2.html"


def test_examples_are_ranked_per_scorer(tmp_path):
    lake = Lake(tmp_path)
    lake.write("metrics", [{"split": "test", "name": "greedy_pass@1", "k": 1, "value": 0.5}], "two", 1)
    lake.write("candidates", [{"query_id": "q", "sample_idx": i, "temperature": 1.0, "policy": "p", "response": f"resp {i}"} for i in range(4)], "two", 1, "train")
    # answer-only rewards in {0, 1}; answer + PRM on another scale, with the opposite order
    lake.write("rewards", [{"query_id": "q", "sample_idx": i, "scorer": "arith", "correct": i >= 2, "status": "ok", "reward": float(i >= 2)} for i in range(4)], "two", 1, "train", part="part-arith")
    lake.write("rewards", [{"query_id": "q", "sample_idx": i, "scorer": "arith+prm", "correct": i >= 2, "status": "ok", "reward": 1.5 - 0.4 * i} for i in range(4)], "two", 1, "train", part="part-prm")
    d = load_report_data(["two"], tmp_path, n_examples=1)
    got = {(r["scorer"], r["kind"]): r["sample_idx"] for r in d.examples.iter_rows(named=True)}
    assert got == {("arith", "best"): 2, ("arith", "worst"): 0, ("arith+prm", "best"): 0, ("arith+prm", "worst"): 3}


def test_large_grid_lists_best_cells_with_the_chosen_one(tmp_path):
    lake = Lake(tmp_path)
    lake.write("metrics", [{"split": "test", "name": "greedy_pass@1", "k": 1, "value": 0.5}], "big", 1)
    temps = [round(0.5 + 0.05 * i, 2) for i in range(15)]
    thrs = [round(-1 + 0.01 * i, 2) for i in range(201)]
    # chosen is NOT among the 10 best (e.g. a search restricted differently): still listed, marked
    grid = [{"temperature": t, "threshold": h, "balance_score": (i * 201 + j) / 3015, "n_selected": 1,
             "n_unique_correct": 1, "n_queries": 1, "chosen": (i, j) == (0, 0)}
            for i, t in enumerate(temps) for j, h in enumerate(thrs)]
    lake.write("search", grid, "big", 1)
    html = open(build_report("big", tmp_path, out=str(tmp_path / "big.html")), encoding="utf-8").read()
    page = parse(html)
    t = page.table("grid-top-table", after="big · round 1: best 10 of 3015 grid cells (★ = chosen)")
    rows = [[c[0] for c in r] for r in t["rows"][1:]]
    assert len(rows) == 11 and rows[0][:2] == ["1.2", "1"] and rows[-1] == ["0.5", "-1", "★ 0.0000", "1", "1"]
    assert [r[1]["class"] for r in t["rows"][-1] if r[1]] == ["chosen"]
    assert len(html) < 400_000
