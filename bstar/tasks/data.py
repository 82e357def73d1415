"""Record a run and its queries in the lake; pick the queries each round works on.

`record_run` is idempotent: a resumed run keeps its original `runs` and `queries` rows byte for
byte. Query subsets are pure functions of (query ids, seed, round), so every stage and every
rerun agrees on them without passing long id lists between tasks.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import polars as pl
from prefect import task

from bstar.tasks.common import lake_of, load_cfg

SPLIT_TRAIN = "train"


def _rank(query_ids: pl.Series, salt: str) -> pl.Series:
    """A seeded shuffle that does not depend on the order rows were loaded in."""
    return query_ids.map_elements(
        lambda q: hashlib.sha1(f"{salt}:{q}".encode()).hexdigest(), return_dtype=pl.String
    )


def seeded_sample(query_ids: pl.Series, n: int, salt: str) -> list[str]:
    """`n` distinct ids in the order of a seeded shuffle (the one `search_subset` uses)."""
    s = pl.Series("q", sorted(set(query_ids.to_list())))
    return pl.DataFrame({"q": s, "r": _rank(s, salt)}).sort("r")["q"].head(n).to_list()


def search_subset(query_ids: list[str], n: int, seed: int) -> list[str]:
    """The fixed search queries (DESIGN.md §1.1: the same subset every round)."""
    return seeded_sample(pl.Series(query_ids, dtype=pl.String), n, f"search:{seed}")


def round_subset(query_ids: list[str], m: int, iteration: int, seed: int) -> list[str]:
    """Round `iteration`'s M training queries: consecutive slices of one shuffle, wrapping around."""
    order = seeded_sample(pl.Series(query_ids, dtype=pl.String), len(query_ids), f"rounds:{seed}")
    if not order:
        return []
    m = min(m, len(order))
    start = ((iteration - 1) * m) % len(order)
    return (order + order)[start : start + m]


def load_dataset_rows(ds) -> list[dict]:
    """Rows of one configured dataset: query_id, prompt, answer, meta (dict)."""
    from bstar.datasets import load

    return load(ds.model_dump())


def queries_frame(cfg) -> pl.DataFrame:
    frames = []
    for split, specs in [(SPLIT_TRAIN, [cfg.data.train]), *[(f"test-{d.name}", [d]) for d in cfg.data.test]]:
        for ds in specs:
            rows = load_dataset_rows(ds)
            if not rows:
                raise ValueError(f"data.{'train' if split == SPLIT_TRAIN else 'test'}: dataset {ds.name!r} has no rows")
            frames.append(
                pl.DataFrame(
                    {
                        "split": split,
                        "query_id": [r["query_id"] for r in rows],
                        "dataset": ds.name,
                        "prompt": [r["prompt"] for r in rows],
                        "answer": [str(r["answer"]) for r in rows],
                        "meta": [json.dumps(r.get("meta") or {}, sort_keys=True) for r in rows],
                    }
                )
            )
    return pl.concat(frames)


@task(name="record-run")
def record_run(run_id: str, cfg_json: str, code_version: str) -> dict:
    """Write `runs` and `queries` once; on resume, leave them exactly as they are."""
    cfg = load_cfg(cfg_json)
    lake = lake_of(cfg)
    if not lake.exists("queries", run_id, 0):
        q = queries_frame(cfg)
        lake.write("queries", q, run_id, 0)
    if not lake.exists("runs", run_id, 0):
        lake.write(
            "runs",
            [{"config": cfg_json, "created_at": datetime.now(timezone.utc), "code_version": code_version}],
            run_id,
            0,
        )
    q = lake.read("queries", run_id, 0)
    return {"run_id": run_id, "n_queries": q.height, "splits": sorted(q["split"].unique().to_list())}


def read_queries(cfg, run_id: str, split: str | None = None) -> pl.DataFrame:
    q = lake_of(cfg).read("queries", run_id, 0)
    return q.filter(pl.col("split") == split) if split else q


def warmup_queries(cfg, run_id: str) -> pl.DataFrame:
    """The gold seed set: a seeded random sample of `training.warmup.examples` training queries
    (the warm-up trains on their gold solutions; the `sft` control arm keeps training on them).

    Seeded by the training data's seed (`data.train.seed`), not by the run's `seed`: the arms of
    a comparison run with other seeds but share one warm-up, and must name the same seed set. A
    random sample, not the first N by id: with MATH-style ids the first N are one subject."""
    train = read_queries(cfg, run_id, SPLIT_TRAIN)
    ids = seeded_sample(train["query_id"], cfg.training.warmup.examples, f"warmup:{cfg.data.train.seed}")
    return train.join(pl.DataFrame({"query_id": ids}), on="query_id", how="semi").sort("query_id")


def test_splits(lake, run_id: str) -> pl.DataFrame:
    """(query_id, split) of every test query of the run."""
    return lake.read("queries", run_id, 0).filter(pl.col("split") != SPLIT_TRAIN).select("query_id", "split").unique()


def subset_frame(cfg, run_id: str, subset: str, iteration: int) -> pl.DataFrame:
    """The queries a stage samples: `search`, `round` (this round's M) or a test split name."""
    if subset in ("search", "round"):
        train = read_queries(cfg, run_id, SPLIT_TRAIN)
        ids = train["query_id"].to_list()
        if subset == "search":
            chosen = search_subset(ids, cfg.search.queries, cfg.seed)
        else:
            chosen = round_subset(ids, cfg.selection.queries_per_round, iteration, cfg.seed)
        order = pl.DataFrame({"query_id": chosen, "_o": range(len(chosen))})
        return train.join(order, on="query_id").sort("_o").drop("_o")
    frame = read_queries(cfg, run_id, subset)
    if frame.is_empty():
        raise ValueError(f"no queries stored for split {subset!r} in run {run_id}")
    return frame


def as_rows(frame: pl.DataFrame) -> list[dict]:
    """Query rows as the dataset layer knows them (meta decoded from its stored JSON)."""
    rows = frame.to_dicts()
    for r in rows:
        if isinstance(r.get("meta"), str):
            r["meta"] = json.loads(r["meta"])
    return rows
