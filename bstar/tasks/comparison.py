"""Stages of `bstar compare` (bstar.flows.compare): its configs and the comparison table.

`start_config` is the shared warm-up's run config (with the PRM it trains, when an arm needs
one); `compare_table` reads every arm's `metrics` and `search` rows back from the lake, builds
the table with 95% intervals and B-STaR's per-round trajectory (bstar.reports.compare), and
attaches both to the flow run as Prefect artifacts.
"""

from __future__ import annotations

import json

from prefect import task

from bstar.config import CompareConfig, RunConfig


def start_config(cc: CompareConfig, compare_id: str) -> RunConfig:
    """The base config as the shared start runs it: answer+prm scoring with the PRM it trains (or
    the one given) when any arm uses it, answer-only otherwise."""
    from bstar.tasks.prm import prm_checkpoint_dir

    cfg = cc.base.model_copy(deep=True)
    cfg.name = f"{cc.name}-start"
    if cc.uses_prm:
        cfg.reward.kind = "answer+prm"
        if not cfg.reward.prm:
            cfg.reward.prm = prm_checkpoint_dir(cfg, f"{compare_id}-start")
    else:
        cfg.reward.kind, cfg.reward.prm_train = "answer", None
    return cfg


@task(name="compare-table")
def compare_table(compare_id: str, start_cfg_json: str, compare_json: str) -> dict:
    import polars as pl
    from prefect.artifacts import create_markdown_artifact

    from bstar.reports.compare import comparison_table, markdown, per_round, table_k_s, trajectories
    from bstar.storage.catalog import connect
    from bstar.tasks.common import load_cfg

    cfg = load_cfg(start_cfg_json)
    cc = CompareConfig.model_validate_json(compare_json)
    arms = [
        {"label": a.name, "method": a.method, "reward": a.reward, "run_ids": [cc.run_id(compare_id, a, s) for s in cc.seeds]}
        for a in cc.arms
    ]
    run_ids = [r for a in arms for r in a["run_ids"]] + [f"{compare_id}-start"]
    ids = ", ".join("'" + r.replace("'", "''") + "'" for r in run_ids)
    con = connect(cfg.storage.root, storage_options=cfg.storage.storage_options() or None)
    metrics = con.sql(f"SELECT run_id, iteration, split, name, k, s, value FROM metrics WHERE run_id IN ({ids})").pl()
    search = con.sql(
        "SELECT run_id, iteration, temperature, threshold, balance_score, chosen "
        f"FROM search WHERE run_id IN ({ids})"
    ).pl()
    budget = con.sql(
        "SELECT run_id, count(*) FILTER (WHERE stage IN ('search', 'train')) AS sampled "
        f"FROM candidates WHERE run_id IN ({ids}) GROUP BY run_id"
    ).pl()
    k, s = table_k_s(cfg)
    table = comparison_table(metrics, arms, f"{compare_id}-start", k, s)
    traj = trajectories(search, metrics, arms)
    rounds = per_round(metrics, search, arms, k, s)
    text = markdown(table, traj, k, s, rounds)
    create_markdown_artifact(
        key=f"compare-{compare_id}".lower().replace("_", "-")[:100], markdown=f"# Comparison {compare_id}\n\n{text}",
        description=f"bstar compare {compare_id}",
    )
    sampled = {r["run_id"]: r["sampled"] for r in budget.iter_rows(named=True)}
    return {
        "table": json.loads(table.write_json()) if table.height else [],
        "trajectories": json.loads(traj.write_json()) if traj.height else [],
        "rounds": json.loads(rounds.write_json()) if rounds.height else [],
        "sampled": sampled,
        "k": k,
        "s": s,
        "run_ids": run_ids,
        "markdown": text,
    }
