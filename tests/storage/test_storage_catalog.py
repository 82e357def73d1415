import math

import pytest

from bstar.storage.catalog import VIEWS, connect
from bstar.storage.queries import QUERIES, duplicate_keys_sql, run_query
from bstar.storage.schemas import TABLES

from lake_samples import SAMPLE, candidates_rows, rewards_rows


def test_views_exist_on_empty_lake(tmp_path):
    con = connect(tmp_path / "nothing-here")
    for v in VIEWS:
        assert con.execute(f"SELECT count(*) FROM {v}").fetchall() == [(0,)]
    cols = [r[0] for r in con.execute("DESCRIBE candidates").fetchall()]
    assert cols == TABLES["candidates"].full_schema.names
    types = dict((r[0], r[1]) for r in con.execute("DESCRIBE rewards").fetchall())
    assert types["step_scores"] == "DOUBLE[]" and types["iteration"] == "INTEGER"
    # named queries run on an empty lake too
    for name in QUERIES:
        assert run_query(con, name).height == 0


@pytest.fixture
def filled(lake):
    lake.write("candidates", candidates_rows(), "r1", 0, "train")
    lake.write("candidates", candidates_rows(), "r1", 1, "train")
    lake.write("rewards", rewards_rows(), "r1", 0, "train", part="part-arith")
    lake.write("rewards", rewards_rows(scorer="prm"), "r1", 0, "train", part="part-prm")
    lake.write("rewards", rewards_rows(), "r1", 1, "train", part="part-arith")
    for t in ("runs", "queries", "search", "selections", "metrics", "checkpoints"):
        lake.write(t, SAMPLE[t](), "r1")
    return lake


def test_views_over_files(filled):
    con = connect(filled.root)
    for t in TABLES:
        assert con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == filled.read(t).height
    assert con.execute("SELECT DISTINCT typeof(iteration), typeof(run_id) FROM candidates").fetchall() == [("INTEGER", "VARCHAR")]


def test_numeric_run_id_stays_text(lake):
    lake.write("candidates", candidates_rows(), "007", 0, "train")
    con = connect(lake.root)
    assert con.execute("SELECT DISTINCT run_id FROM candidates").fetchall() == [("007",)]


def test_scored_join(filled):
    con = connect(filled.root)
    # one row per (candidate, scorer): iteration 0 has two scorers, iteration 1 one
    assert con.execute("SELECT iteration, scorer, count(*) FROM scored GROUP BY ALL ORDER BY ALL").fetchall() == [
        (0, "arith", 12), (0, "prm", 12), (1, "arith", 12)]
    row = con.execute(
        "SELECT response, correct, reward, step_scores FROM scored "
        "WHERE iteration = 0 AND scorer = 'arith' AND query_id = 'q0' AND sample_idx = 2").fetchone()
    assert row[0] == "A: 1+0=1. #### 1" and row[1] is True and row[2] == pytest.approx(1.6) and row[3] == [0.9, 0.8]
    for t in TABLES:
        assert con.execute(duplicate_keys_sql(t)).fetchall() == []


def test_pass_at_k_dashboard_values(filled):
    con = connect(filled.root)
    df = run_query(con, "pass_at_k_dashboard", run_id="r1", iteration=0)
    rows = {r["scorer"]: r for r in df.to_dicts()}
    assert set(rows) == {"arith", "prm"}
    r = rows["arith"]
    # q0: 2/4 correct, q1: 1/4, q2: 0/4
    assert (r["n_queries"], r["n_candidates"], r["k"]) == (3, 12, 4)
    assert r["mean_correct"] == pytest.approx(3 / 12)
    assert r["pass_at_1"] == pytest.approx((0.5 + 0.25 + 0) / 3)
    assert r["pass_at_k"] == pytest.approx(2 / 3)
    assert run_query(con, "pass_at_k_dashboard").height == 3


def test_unbiased_pass_at_k(filled):
    con = connect(filled.root)
    df = run_query(con, "pass_at_k", run_id="r1", iteration=0, k=2).filter(scorer="arith")
    # 1 - C(n-c,k)/C(n,k): q0 1 - C(2,2)/C(4,2) = 5/6, q1 1 - C(3,2)/C(4,2) = 1/2, q2 0
    assert df["pass_at_k"][0] == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)
    df1 = run_query(con, "pass_at_k", run_id="r1", iteration=0, k=1).filter(scorer="arith")
    assert df1["pass_at_k"][0] == pytest.approx((0.5 + 0.25) / 3)
    df4 = run_query(con, "pass_at_k", run_id="r1", iteration=0, k=4).filter(scorer="arith")
    assert df4["pass_at_k"][0] == pytest.approx(2 / 3)
    assert not math.isnan(df4["pass_at_k"][0])


def test_status_and_selection_queries(filled):
    con = connect(filled.root)
    st = run_query(con, "candidates_per_status", run_id="r1", iteration=0).filter(scorer="arith")
    assert {r["status"]: r["n_candidates"] for r in st.to_dicts()} == {"ok": 9, "no_answer": 3}
    sel = run_query(con, "selected_per_query", run_id="r1")
    assert sel.select("query_id", "n_selected", "n_unique").to_dicts() == [{"query_id": "q0", "n_selected": 1, "n_unique": 1}]
    grid = run_query(con, "search_grid", run_id="r1")
    assert grid.filter(chosen=True).select("temperature", "threshold").row(0) == (1.0, 0.5)


def test_run_query_rejects_unknown(filled):
    con = connect(filled.root)
    with pytest.raises(KeyError, match="unknown query"):
        run_query(con, "nope")
    with pytest.raises(TypeError, match="no parameter"):
        run_query(con, "metrics", bogus=1)


def test_writable_connection_for_internal_use(filled, tmp_path):
    con = connect(filled.root, read_only=False)
    out = tmp_path / "export.parquet"
    con.execute(f"COPY (SELECT * FROM candidates) TO '{out}' (FORMAT parquet)")
    assert out.exists()


def _string_join(con):
    """The same query over the plain string-keyed join (the definition `scored` must match)."""
    from bstar.storage.catalog import SCORED_VIEWS_SQL

    con.execute(SCORED_VIEWS_SQL.replace("VIEW scored", "VIEW scored_by_strings"))


SCORED_CHECKS = [
    "SELECT * FROM {v}",
    "SELECT run_id, iteration, stage, scorer, status, correct, count(*), avg(reward) FROM {v} GROUP BY ALL",
    "SELECT * FROM {v} WHERE run_id = 'r2' AND iteration = 1",
    "SELECT * FROM {v} WHERE stage IN ('eval', 'nope') OR run_id LIKE 'r1%'",
    "SELECT count(*) FROM {v} WHERE run_id = 'not-a-run' OR stage = 'not-a-stage'",
    "SELECT run_id || '/' || stage AS k, count(*) FROM {v} WHERE query_id = 'q1' GROUP BY ALL",
]


def test_scored_joins_enum_keys_with_the_same_rows_and_types(lake):
    # two runs, two stages, two iterations; rewards of one partition have no candidates (dropped),
    # candidates of another have no rewards (dropped), one partition has two scorers
    for run in ("r1", "r2"):
        for it in (0, 1):
            for stage in ("train", "eval"):
                if (run, it, stage) != ("r2", 1, "eval"):
                    lake.write("candidates", candidates_rows(tag=f"{run}{it}{stage}"), run, it, stage)
                if (run, it, stage) != ("r1", 0, "eval"):
                    lake.write("rewards", rewards_rows(), run, it, stage, part="part-arith")
    lake.write("rewards", rewards_rows(scorer="prm"), "r1", 1, "train", part="part-prm")
    con = connect(lake.root, read_only=False)
    _string_join(con)
    for q in SCORED_CHECKS:
        got = sorted(con.execute(q.format(v="scored")).fetchall(), key=repr)
        assert got == sorted(con.execute(q.format(v="scored_by_strings")).fetchall(), key=repr), q
    assert con.execute("SELECT count(*) FROM scored").fetchone()[0] == 12 * (8 - 2 + 1)
    assert con.execute("DESCRIBE scored").fetchall() == con.execute("DESCRIBE scored_by_strings").fetchall()
    assert con.execute("SELECT DISTINCT typeof(run_id), typeof(stage) FROM scored").fetchall() == [("VARCHAR", "VARCHAR")]


def test_scored_reads_parts_written_by_older_code(lake):
    """Parts with wider ints and without the nullable PRM columns (next to current ones) still join."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    lake.write("candidates", candidates_rows(), "r1", 0, "train")
    lake.write("candidates", candidates_rows(), "r1", 1, "train")
    lake.write("rewards", rewards_rows(), "r1", 1, "train", part="part-arith")
    old = pa.table({
        "query_id": [f"q{q}" for q in range(3) for _ in range(4)],
        "sample_idx": pa.array([i for _ in range(3) for i in range(4)], pa.int64()),
        "scorer": ["arith"] * 12,
        "correct": [i == 0 for _ in range(3) for i in range(4)],
        "extracted": ["1"] * 12,
        "status": ["ok"] * 12,
        "reward": pa.array([1.0 if i == 0 else 0.0 for _ in range(3) for i in range(4)], pa.float32()),
    })
    d = lake.partition_dir("rewards", "r1", 0, "train")
    os.makedirs(d)
    pq.write_table(old, f"{d}/part-arith.parquet")
    con = connect(lake.root)
    assert con.execute(
        "SELECT iteration, count(*), sum(reward), count(prm), count(step_scores) FROM scored GROUP BY ALL ORDER BY ALL"
    ).fetchall() == [(0, 12, 3.0, 0, 0), (1, 12, pytest.approx(3 * 1.6 + 9 * -0.8), 12, 12)]
    assert con.execute("SELECT DISTINCT typeof(sample_idx), typeof(reward) FROM scored").fetchall() == [("INTEGER", "DOUBLE")]


def test_scored_over_partition_names_the_lake_would_refuse(lake, tmp_path):
    """Files copied in by hand under odd partition names: the plain string join still reads them."""
    import shutil

    lake.write("candidates", candidates_rows(), "r1", 0, "train")
    lake.write("rewards", rewards_rows(), "r1", 0, "train", part="part-arith")
    for table in ("candidates", "rewards"):
        src = lake.partition_dir(table, "r1", 0, "train")
        shutil.copytree(src, src.replace("run_id=r1", "run_id=odd run"))
    con = connect(lake.root)
    assert con.execute("SELECT run_id, count(*) FROM scored GROUP BY ALL ORDER BY ALL").fetchall() == [("odd run", 12), ("r1", 12)]
