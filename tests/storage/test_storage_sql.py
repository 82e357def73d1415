import json
import os

import pytest

from bstar.storage.sql import ReadOnlyError, SQLError, check_read_only, query, rows, run_sql

from lake_samples import candidates_rows, rewards_rows


@pytest.fixture
def root(lake):
    lake.write("candidates", candidates_rows(), "r1", 0, "train")
    lake.write("rewards", rewards_rows(), "r1", 0, "train", part="part-arith")
    return lake.root


def _refused(sql, root, tmp_path, keyword):
    before = set(os.listdir(tmp_path))
    with pytest.raises(ReadOnlyError) as e:
        run_sql(sql, root)
    assert keyword.lower() in str(e.value).lower()
    assert set(os.listdir(tmp_path)) == before
    return e.value


REFUSED = [
    ("INSERT INTO candidates VALUES (1)", "INSERT"),
    ("UPDATE candidates SET response = 'x'", "UPDATE"),
    ("DELETE FROM candidates", "DELETE"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("CREATE MACRO m() AS 1", "CREATE"),
    ("DROP VIEW candidates", "DROP"),
    ("ALTER VIEW candidates RENAME TO c2", "ALTER"),
    ("COPY (SELECT 1) TO '{tmp}/x.csv'", "COPY"),
    ("COPY candidates TO '{tmp}/c.parquet' (FORMAT parquet)", "COPY"),
    ("EXPORT DATABASE '{tmp}/dbdump'", "EXPORT"),
    ("IMPORT DATABASE '{tmp}/dbdump'", "IMPORT"),
    ("ATTACH '{tmp}/other.db' AS o", "ATTACH"),
    ("DETACH o", "DETACH"),
    ("INSTALL httpfs", "INSTALL"),
    ("LOAD httpfs", "LOAD"),
    ("SET threads = 1", "SET"),
    ("RESET threads", "RESET"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("CALL duckdb_settings()", "CALL"),
    ("CHECKPOINT", "CHECKPOINT"),
    ("VACUUM", "VACUUM"),
    ("BEGIN TRANSACTION", "BEGIN"),
    ("SELECT 1; COPY (SELECT 1) TO '{tmp}/y.csv'", "one statement"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
    ("SELECT * FROM read_parquet('{tmp}/*.parquet')", "read_parquet"),
    ("SELECT * FROM parquet_scan('{tmp}/x.parquet')", "parquet_scan"),
    ("SELECT * FROM read_json('{tmp}/x.json')", "read_json"),
    ("SELECT * FROM read_text('/etc/hostname')", "read_text"),
    ("SELECT * FROM read_blob('/etc/hostname')", "read_blob"),
    ("SELECT * FROM glob('/etc/*')", "glob"),
    ("SELECT * FROM query('SELECT 1')", "query"),
    ("SELECT * FROM '/etc/passwd'", "/etc/passwd"),
    ("SELECT * FROM 'file.csv'", "file.csv"),
    ("SELECT count(*) FROM candidates WHERE query_id IN (SELECT * FROM read_csv('/etc/passwd'))", "read_csv"),
    ("WITH x AS (SELECT * FROM glob('/*')) SELECT * FROM x", "glob"),
    ("SELECT getenv('HOME')", "getenv"),
]


@pytest.mark.parametrize("sql,keyword", REFUSED, ids=[k + ":" + s[:30] for s, k in REFUSED])
def test_refused_statements_create_no_file(root, tmp_path, sql, keyword):
    _refused(sql.format(tmp=tmp_path), root, tmp_path, keyword)


def test_copy_to_tmp_refused_and_no_file(root, tmp_path):
    target = "/tmp/x.csv"
    existed = os.path.exists(target)
    err = _refused(f"COPY (SELECT 1) TO '{target}'", root, tmp_path, "COPY")
    assert "read-only" in str(err)
    assert os.path.exists(target) == existed


def test_syntax_error_is_sqlerror(root):
    with pytest.raises(SQLError, match="cannot parse"):
        check_read_only("SELEC 1")
    with pytest.raises(SQLError, match="empty"):
        check_read_only("  ")


def test_connection_is_locked_even_past_the_parser(root, tmp_path):
    # defence in depth: if the parser check were bypassed the connection still refuses files
    from bstar.storage.catalog import connect

    con = connect(root)
    import duckdb

    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(duckdb.Error):
        con.execute(f"COPY (SELECT 1) TO '{tmp_path}/z.csv'")
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
    assert not (tmp_path / "z.csv").exists()


ALLOWED = [
    ("SELECT count(*) AS n FROM candidates", [{"n": 12}]),
    ("WITH c AS (SELECT query_id, count(*) FILTER (WHERE correct) AS k FROM rewards GROUP BY query_id) "
     "SELECT query_id, k FROM c ORDER BY query_id", [{"query_id": "q0", "k": 2}, {"query_id": "q1", "k": 1}, {"query_id": "q2", "k": 0}]),
    ("SELECT query_id, sample_idx, row_number() OVER (PARTITION BY query_id ORDER BY reward DESC, sample_idx) AS rk "
     "FROM scored WHERE query_id = 'q0' QUALIFY rk = 1", [{"query_id": "q0", "sample_idx": 0, "rk": 1}]),
    ("SELECT sum(range) AS s FROM range(4)", [{"s": 6}]),
    ("FROM candidates SELECT DISTINCT stage", [{"stage": "train"}]),
    ("SELECT status, count(*) AS n FROM scored GROUP BY ALL ORDER BY status", [{"status": "no_answer", "n": 3}, {"status": "ok", "n": 9}]),
]


@pytest.mark.parametrize("sql,expected", ALLOWED)
def test_allowed_selects(root, sql, expected):
    assert rows(sql, root) == expected


def test_formats(root):
    sql = "SELECT query_id, count(*) AS n FROM candidates GROUP BY query_id ORDER BY query_id"
    assert run_sql(sql, root, fmt="csv") == "query_id,n\nq0,4\nq1,4\nq2,4\n"
    assert json.loads(run_sql(sql, root, fmt="json")) == [{"query_id": f"q{i}", "n": 4} for i in range(3)]
    table = run_sql(sql, root, fmt="table")
    assert "query_id" in table and "q2" in table
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert len({len(ln) for ln in lines}) == 1  # fixed width
    with pytest.raises(ValueError, match="unknown format"):
        run_sql(sql, root, fmt="xml")
    assert query("SELECT 1 AS a", root).to_dicts() == [{"a": 1}]
    assert "scored" in run_sql("SHOW TABLES", root)
    assert rows("SELECT $x AS x", root, params={"x": 5}) == [{"x": 5}]


def test_repeated_column_names_get_suffixes_instead_of_a_traceback(root):
    sql = ("SELECT c.query_id, r.query_id, c.sample_idx, r.sample_idx, 1 AS query_id_1 FROM candidates c "
           "JOIN rewards r USING (query_id, sample_idx) ORDER BY 1, 3 LIMIT 1")
    assert query(sql, root).columns == ["query_id", "query_id_2", "sample_idx", "sample_idx_1", "query_id_1"]
    assert json.loads(run_sql(sql, root, fmt="json"))[0]["query_id_2"] == "q0"


def test_unknown_column_or_table_is_one_line_naming_what_exists(root):
    with pytest.raises(SQLError) as e:
        run_sql("SELECT respons FROM candidates", root)
    assert str(e.value) == (
        'Referenced column "respons" not found in FROM clause (did you mean "response", "n_tokens", "iteration"?); candidates has columns: '
        "run_id, iteration, stage, query_id, sample_idx, temperature, policy, response, n_tokens, finish_reason")
    with pytest.raises(SQLError) as e:
        run_sql("SELECT * FROM candidatez", root)
    assert str(e.value).startswith('Table with name candidatez does not exist (did you mean "candidates"?); '
                                   "the lake's tables: ")
    assert "candidates, " in str(e.value) and "rewards" in str(e.value)
