"""The read-only SQL entry point (`bstar sql`, bstar.storage.sql) against escapes: every table
function that reads files or runs SQL, in every position a query can hide one (DESCRIBE,
SUMMARIZE, SHOW, subqueries, LATERAL, UNION, EXISTS, list and computed paths), direct file and
URL scans, and statements newer than the Python enum. The writing statements themselves are
tests/storage/test_storage_sql.py's list. Behind the parser, the locked connection refuses
paths that leave the root through `..`, a symlink inside the root, or a sibling directory
whose name starts like the root's.

    BSTAR_TORCH_THREADS=1 pytest tests/reliability/test_bad_sql.py     # ~3 s
"""

from __future__ import annotations

import os

import duckdb
import pytest

from bstar.storage.catalog import connect
from bstar.storage.lake import Lake
from bstar.storage.sql import ReadOnlyError, SQLError, rows

OUTSIDE = "{outside}"  # a CSV next to the lake root, replaced per test

ESCAPES = [
    # table functions, as such and wrapped
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM read_ndjson_objects('/etc/passwd')",
    "SELECT * FROM parquet_metadata('{root}/candidates/x.parquet')",
    "SELECT * FROM parquet_schema('{root}/candidates/x.parquet')",
    "SELECT * FROM sqlite_scan('/tmp/x.db', 't')",
    "SELECT * FROM iceberg_scan('/tmp/x')",
    "SELECT * FROM delta_scan('/tmp/x')",
    "SELECT * FROM read_xlsx('/tmp/x.xlsx')",
    "SELECT * FROM glob('{root}/*')",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_extensions()",
    "SELECT * FROM duckdb_logs()",
    "SELECT * FROM pragma_database_list()",
    "SELECT * FROM test_all_types()",
    "FROM read_csv('{outside}')",
    "DESCRIBE SELECT * FROM read_csv('{outside}')",
    "SUMMARIZE SELECT * FROM read_csv('{outside}')",
    "SHOW SELECT * FROM read_csv('{outside}')",
    "SELECT * FROM candidates, LATERAL read_csv('{outside}')",
    "SELECT 1 UNION ALL SELECT * FROM read_csv('{outside}')",
    "SELECT (SELECT count(*) FROM read_csv('{outside}'))",
    "SELECT * FROM candidates WHERE EXISTS (FROM read_csv('{outside}'))",
    "SELECT * FROM read_csv(['{outside}'])",
    "SELECT * FROM read_csv(concat('{root}', '/../outside.csv'))",
    "SELECT * FROM read_csv('{root}/../outside.csv')",
    "SELECT * FROM read_csv('{root}/escape/passwd')",
    "SELECT * FROM read_text('{root}/escape/hostname')",
    "SELECT * FROM read_csv('s3://bucket/x.csv')",
    # direct scans and quoted identifiers
    "SELECT * FROM \"{outside}\"",
    "SELECT * FROM 'https://example.com/x.csv'",
    "SELECT * FROM '{root}/../outside.csv'",
    # statements that are not SELECT, or change state without writing a file
    "PIVOT candidates ON stage USING count(*)",
    "EXPLAIN SELECT 1",
    "EXPLAIN ANALYZE SELECT * FROM read_csv('{outside}')",
    "USE memory",
    "CREATE SECRET (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "SET VARIABLE x = 1",
    "UPDATE EXTENSIONS",
    "SELECT current_setting('allowed_directories')",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM read_csv('{outside}'), t) SELECT * FROM t",
]


@pytest.fixture
def lake_root(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.write(
        "candidates",
        [{"query_id": "q0", "sample_idx": 0, "temperature": 0.7, "policy": "p", "response": "#### 2", "n_tokens": 3,
          "finish_reason": "stop"}],
        "r1", 0, "train",
    )
    (tmp_path / "outside.csv").write_text("secret\nhunter2\n")
    os.symlink("/etc", tmp_path / "lake" / "escape")  # a symlink inside the root that leads out
    (tmp_path / "lake-sibling").mkdir()
    (tmp_path / "lake-sibling" / "x.csv").write_text("secret\nhunter2\n")
    return tmp_path / "lake"


def _listing(path) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs}


@pytest.mark.parametrize("sql", ESCAPES)
def test_escape_is_refused_and_nothing_changes(lake_root, sql):
    text = sql.format(root=lake_root, outside=lake_root.parent / "outside.csv")
    before = _listing(lake_root.parent)
    with pytest.raises((ReadOnlyError, SQLError)) as e:
        rows(text, lake_root)
    assert "hunter2" not in str(e.value)
    assert _listing(lake_root.parent) == before
    assert rows("SELECT count(*) AS n FROM candidates", lake_root) == [{"n": 1}]  # the lake still answers


@pytest.mark.parametrize(
    "path",
    ["{root}/../outside.csv", "{root}/escape/passwd", "{root}-sibling/x.csv", "/etc/passwd"],
    ids=["dotdot", "symlink-in-root", "sibling-prefix", "absolute"],
)
def test_locked_connection_refuses_paths_outside_the_root(lake_root, path):
    # behind the parser: even a table function that got through could not leave the root
    con = connect(lake_root)
    try:
        with pytest.raises(duckdb.PermissionException):
            con.execute(f"SELECT * FROM read_csv('{path.format(root=lake_root)}')").fetchall()
    finally:
        con.close()
