"""Read-only SQL over the candidate lake: the engine behind ``bstar sql``.

    from bstar.storage.sql import run_sql, query
    print(run_sql("SELECT stage, count(*) FROM candidates GROUP BY ALL", root="lake"))
    df = query("SELECT * FROM scored WHERE correct", root="lake")     # polars

Only a single SELECT (incl. WITH, window functions, DESCRIBE/SHOW/SUMMARIZE) over the views of
catalog.py is accepted. Two independent guards:

1. DuckDB's own parser: ``duckdb.extract_statements`` must yield exactly one statement of type
   SELECT; ``json_serialize_sql`` gives its syntax tree, in which every table function must be
   on a short allow-list (``range``, ``unnest``, ...; so no ``read_csv``, ``glob``, ``query``)
   and no table name may look like a file path (``FROM 'x.csv'``). Refusals raise
   :class:`ReadOnlyError` naming the keyword or function.
2. The connection itself (catalog.connect(read_only=True)): fresh and in-memory, file access
   limited to the lake root, ``enable_external_access=false``, configuration locked.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator

import duckdb
import polars as pl

from .catalog import connect

__all__ = ["ReadOnlyError", "SQLError", "check_read_only", "query", "run_sql", "rows", "format_frame"]

FORMATS = ("table", "csv", "json")

# table functions that compute rows without touching files or running other SQL
_ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "duckdb_tables",
        "duckdb_views",
        "duckdb_columns",
        "duckdb_types",
        "duckdb_functions",
        "duckdb_keywords",
    }
)
# scalar functions that leak the environment (also disabled by enable_external_access)
_DENIED_FUNCTIONS = frozenset({"getenv", "current_setting", "read_text", "read_blob"})
_PATHLIKE = re.compile(r"[./\\:*?~]")


class SQLError(ValueError):
    """The SQL could not be parsed."""


class ReadOnlyError(ValueError):
    """The SQL would write, change settings, or read outside the lake."""


def _keyword(text: str) -> str:
    m = re.match(r"\s*(\w+)", text)
    return m.group(1).upper() if m else "?"


def _walk(node: Any) -> Iterator[dict]:
    stack = [node]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            yield o
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)


def check_read_only(sql: str) -> str:
    """Return the single SELECT statement in ``sql`` or raise ReadOnlyError / SQLError."""
    if not sql or not sql.strip():
        raise SQLError("empty SQL statement")
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise SQLError(f"cannot parse SQL: {e}") from None
    if len(stmts) != 1:
        raise ReadOnlyError(f"exactly one statement is allowed, got {len(stmts)}")
    st = stmts[0]
    text = st.query
    try:
        kind = st.type
    except ValueError:  # a statement newer than the Python enum (e.g. UPDATE EXTENSIONS): not a SELECT
        raise ReadOnlyError(
            f"{_keyword(text)} is not allowed: the SQL entry point is read-only; "
            "only SELECT queries over the lake views are accepted"
        ) from None
    if kind != duckdb.StatementType.SELECT:
        kw = _keyword(text)
        if kw == "COPY":
            kw = "COPY ... TO"
        raise ReadOnlyError(
            f"{kw} is not allowed: the SQL entry point is read-only (statement type {kind.name}); "
            "only SELECT queries over the lake views are accepted"
        )
    with duckdb.connect(":memory:") as con:
        tree = json.loads(con.execute("SELECT json_serialize_sql($1)", [text]).fetchone()[0])
    if tree.get("error"):
        # SHOW/DESCRIBE forms the serializer does not cover still parse as SELECT; the locked
        # connection is the guard for them
        return text
    for o in _walk(tree):
        typ = o.get("type")
        if typ == "TABLE_FUNCTION":
            fn = (o.get("function") or {}).get("function_name", "?")
            if fn.lower() not in _ALLOWED_TABLE_FUNCTIONS:
                raise ReadOnlyError(
                    f"table function {fn}() is not allowed: it can read files or run other SQL; "
                    "query the lake views (candidates, rewards, scored, ...) instead"
                )
        elif typ == "BASE_TABLE":
            name = o.get("table_name", "")
            if _PATHLIKE.search(name):
                raise ReadOnlyError(f"reading files directly ({name!r}) is not allowed; query the lake views")
        elif o.get("class") == "FUNCTION" and str(o.get("function_name", "")).lower() in _DENIED_FUNCTIONS:
            raise ReadOnlyError(f"function {o['function_name']}() is not allowed")
    return text


def _execute(sql: str, root, storage_options: dict | None, params: dict | None):
    text = check_read_only(sql)
    con = connect(root, storage_options, read_only=True)
    try:
        return con.sql(text, params=params).to_arrow_table() if params else con.sql(text).to_arrow_table()
    except duckdb.PermissionException as e:
        raise ReadOnlyError(f"refused by the read-only connection: {e}") from None
    except (duckdb.BinderException, duckdb.CatalogException) as e:
        raise SQLError(_name_error(con, text, e)) from None
    finally:
        con.close()


def _name_error(con, text: str, err: Exception) -> str:
    """DuckDB's unknown column / table error in one line, with the columns of the tables the
    query names (or the lake's tables when the table itself is unknown)."""
    what = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    what = re.sub(r"^(Binder|Catalog) Error: ", "", what).replace("!", "")
    what = re.sub(r"\s*LINE \d+:.*$", "", what)
    what = re.sub(r"\s*(?:Candidate bindings:|Did you mean) (.*?)\??$", r" (did you mean \1?)", what)
    columns: dict[str, list[str]] = {}
    for table, column in con.sql("SELECT table_name, column_name FROM information_schema.columns "
                                 "ORDER BY table_name, ordinal_position").fetchall():
        columns.setdefault(table, []).append(column)
    named = [t for t in columns if re.search(rf"\b{re.escape(t)}\b", text, re.IGNORECASE)]
    if named and isinstance(err, duckdb.BinderException):
        return what + "; " + "; ".join(f"{t} has columns: {', '.join(columns[t])}" for t in named)
    return what + f"; the lake's tables: {', '.join(sorted(columns))}"


def query(sql: str, root: str | os.PathLike = "lake", storage_options: dict | None = None,
          params: dict | None = None) -> pl.DataFrame:
    """Run a read-only query and return a polars DataFrame. Repeated column names (`SELECT a.x,
    b.x`, legal SQL) get DuckDB's own suffixes (`x`, `x_1`): a DataFrame needs unique names."""
    table = _execute(sql, root, storage_options, params)
    return pl.from_arrow(table.rename_columns(unique_names(table.column_names)))


def unique_names(names: list[str]) -> list[str]:
    """`x, x, y` -> `x, x_1, y` (suffixes never collide with a name already in the list)."""
    taken, out = set(names), []
    seen: dict[str, int] = {}
    for n in names:
        if n in seen:
            i = seen[n]
            while f"{n}_{i}" in taken:
                i += 1
            seen[n] = i + 1
            taken.add(f"{n}_{i}")
            out.append(f"{n}_{i}")
        else:
            seen[n] = 1
            out.append(n)
    return out


def rows(sql: str, root: str | os.PathLike = "lake", storage_options: dict | None = None,
         params: dict | None = None) -> list[dict]:
    """Run a read-only query and return a list of dicts."""
    return _execute(sql, root, storage_options, params).to_pylist()


def format_frame(df: pl.DataFrame, fmt: str = "table", max_rows: int = 1000) -> str:
    if fmt == "csv":
        return df.write_csv()
    if fmt == "json":
        return df.write_json()
    if fmt == "table":
        with pl.Config(
            tbl_rows=max_rows,
            tbl_cols=-1,
            fmt_str_lengths=80,
            tbl_width_chars=10_000,
            tbl_hide_dataframe_shape=False,
            tbl_formatting="ASCII_MARKDOWN",
            tbl_hide_column_data_types=False,
        ):
            return str(df)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def run_sql(sql: str, root: str | os.PathLike = "lake", storage_options: dict | None = None,
            fmt: str = "table", params: dict | None = None, max_rows: int = 1000) -> str:
    """Run a read-only query and render it as fixed-width text, CSV or JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return format_frame(query(sql, root, storage_options, params), fmt, max_rows)
