"""Explicit Arrow schemas and key columns for the tables of the candidate lake (DESIGN.md §3).

Every table is a Hive-partitioned Parquet dataset::

    {root}/{table}/run_id=<str>/iteration=<int>/stage=<str>/part-<name>.parquet

The partition columns (``run_id``, ``iteration``, ``stage``) live in the path, not in the
files; :data:`PARTITION_SCHEMA` gives their types. ``TABLES[name]`` describes one table:
its file schema, its key columns (unique within a partition, so unique together with the
partition columns), and the fixed stage name for tables that have no natural stage.

Use :func:`validate` to turn incoming data (pyarrow Table, polars DataFrame, list of dicts)
into a table with exactly the file schema; it raises :class:`SchemaError` naming the table
and the column at fault.

Conventions the rest of the pipeline relies on:
- ``candidates.sample_idx`` is unique per (run_id, iteration, stage, query_id), also across
  temperatures in the search stage, so rewards can be joined on it.
- ``rewards`` for a new scorer go in their own part (e.g. ``part-<scorer>``), so re-scoring
  stored candidates never touches the candidates nor another scorer's rewards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "PARTITION_COLUMNS",
    "PARTITION_SCHEMA",
    "TABLES",
    "TableSpec",
    "SchemaError",
    "spec",
    "validate",
    "to_arrow",
    "check_partition",
    "NAME_RE",
]

PARTITION_COLUMNS = ("run_id", "iteration", "stage")
PARTITION_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
    ]
)
# run ids and stage names end up in paths and SQL literals: keep them boring.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class SchemaError(ValueError):
    """Incoming data does not fit a table's schema (message names table and column)."""


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema  # columns stored in the files (no partition columns)
    key: tuple[str, ...]  # unique within one (run_id, iteration, stage) partition
    default_stage: str | None = None  # fixed stage for tables without a natural one
    doc: str = ""
    stages: tuple[str, ...] = field(default=())  # documented common stages (not enforced)

    @property
    def full_schema(self) -> pa.Schema:
        """Schema as read back: partition columns first, then the file columns."""
        return pa.schema(list(PARTITION_SCHEMA) + list(self.schema))

    @property
    def full_key(self) -> tuple[str, ...]:
        return PARTITION_COLUMNS + self.key


def _f(name: str, typ: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, typ, nullable=nullable)


_str, _i32, _i64, _f64, _bool = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_()

TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in [
        TableSpec(
            "runs",
            pa.schema(
                [
                    _f("config", _str),  # JSON
                    _f("created_at", pa.timestamp("us", tz="UTC")),
                    _f("code_version", _str, True),
                ]
            ),
            key=(),
            default_stage="run",
            doc="one row per run (iteration=0, stage=run)",
        ),
        TableSpec(
            "queries",
            pa.schema(
                [
                    _f("split", _str),
                    _f("query_id", _str),
                    _f("dataset", _str),
                    _f("prompt", _str),
                    _f("answer", _str, True),
                    _f("meta", _str, True),  # JSON
                ]
            ),
            key=("split", "query_id"),
            default_stage="queries",
            doc="dataset items used by the run",
        ),
        TableSpec(
            "candidates",
            pa.schema(
                [
                    _f("query_id", _str),
                    _f("sample_idx", _i32),
                    _f("temperature", _f64),
                    _f("policy", _str),
                    _f("response", _str),
                    _f("n_tokens", _i32, True),
                    _f("finish_reason", _str, True),
                ]
            ),
            key=("query_id", "sample_idx"),
            stages=("search", "train", "eval"),
            doc="one sampled response; immutable",
        ),
        TableSpec(
            "rewards",
            pa.schema(
                [
                    _f("query_id", _str),
                    _f("sample_idx", _i32),
                    _f("scorer", _str),
                    _f("correct", _bool, True),  # null when the scorer failed (see status)
                    _f("extracted", _str, True),
                    _f("status", _str),
                    _f("step_scores", pa.list_(_f64), True),
                    _f("prm", _f64, True),
                    _f("reward", _f64, True),
                ]
            ),
            key=("query_id", "sample_idx", "scorer"),
            stages=("search", "train", "eval"),
            doc="one (candidate, scorer); stage matches the candidate's stage",
        ),
        TableSpec(
            "search",
            pa.schema(
                [
                    _f("temperature", _f64),
                    _f("threshold", _f64),
                    _f("balance_score", _f64),
                    _f("n_selected", _i64),
                    _f("n_unique_correct", _i64),
                    _f("n_queries", _i64),
                    _f("chosen", _bool),
                ]
            ),
            key=("temperature", "threshold"),
            default_stage="search",
            doc="one (temperature, threshold) grid cell of the balance-score search",
        ),
        TableSpec(
            "selections",
            pa.schema(
                [
                    _f("query_id", _str),
                    _f("sample_idx", _i32),
                    _f("reward", _f64, True),
                    _f("temperature", _f64, True),
                    _f("response", _str, True),
                ]
            ),
            key=("query_id", "sample_idx"),
            default_stage="select",
            doc="one training example kept by selection (stage = candidate stage sampled from)",
        ),
        TableSpec(
            "metrics",
            pa.schema(
                [
                    _f("split", _str),
                    _f("name", _str),
                    _f("k", _i32, True),
                    _f("s", _i32, True),
                    _f("value", _f64, True),
                ]
            ),
            key=("split", "name", "k", "s"),
            default_stage="eval",
            doc="one metric value (k/s null where they do not apply)",
        ),
        TableSpec(
            "annotations",
            pa.schema(
                [
                    _f("query_id", _str),
                    _f("sample_idx", _i32),
                    _f("step", _i32),  # 0-based step index within the response
                    _f("n_steps", _i32),
                    _f("step_text", _str),
                    _f("prefix", _str),  # the response's steps up to and including this one
                    _f("hard_label", _bool),  # any rollout from the prefix reaches the gold answer
                    _f("soft_label", _f64),  # fraction of rollouts that do (last step: final correctness)
                    _f("n_rollouts", _i32),
                    _f("n_correct", _i32),
                    _f("final_correct", _bool, True),  # the sampled solution's own answer
                    _f("true_label", _bool, True),  # known step truth (arith checker, cumulative), else null
                    _f("completer", _str, True),
                ]
            ),
            key=("query_id", "sample_idx", "step"),
            default_stage="annotate",
            doc="one Math-Shepherd step label (PRM training data); sample_idx joins candidates of stage annotate",
        ),
        TableSpec(
            "checkpoints",
            pa.schema([_f("step", _i64), _f("path", _str), _f("mode", _str)]),
            key=("step",),
            default_stage="train",
            doc="one saved policy",
        ),
    ]
}


def spec(table: str) -> TableSpec:
    try:
        return TABLES[table]
    except KeyError:
        raise SchemaError(f"unknown table {table!r}; known tables: {', '.join(TABLES)}") from None


def check_partition(table: str, run_id: str, iteration: int, stage: str) -> None:
    """Refuse partition values that would make odd paths or SQL literals."""
    if not isinstance(run_id, str) or not NAME_RE.match(run_id):
        raise SchemaError(f"{table}: run_id {run_id!r} must match {NAME_RE.pattern}")
    if isinstance(iteration, bool) or not isinstance(iteration, int) or not 0 <= iteration < 2**31:
        raise SchemaError(f"{table}: iteration {iteration!r} must be a non-negative int")
    if not isinstance(stage, str) or not NAME_RE.match(stage):
        raise SchemaError(f"{table}: stage {stage!r} must match {NAME_RE.pattern}")


def to_arrow(data, table: str) -> pa.Table:
    """Accept a pyarrow Table/RecordBatch, a polars DataFrame or a list of dicts."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if hasattr(data, "to_arrow") and type(data).__module__.startswith("polars"):
        return data.to_arrow()
    if isinstance(data, list):
        if not data:
            return spec(table).schema.empty_table()
        if not all(isinstance(r, dict) for r in data):
            raise SchemaError(f"{table}: a list of rows must hold dicts")
        try:
            return pa.Table.from_pylist(data)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaError(f"{table}: rows do not form a table: {e}") from None
    raise SchemaError(
        f"{table}: unsupported data type {type(data).__name__} "
        "(expected pyarrow.Table, polars.DataFrame or list of dicts)"
    )


def validate(data, table: str, run_id: str, iteration: int, stage: str) -> pa.Table:
    """Return ``data`` as a pyarrow Table with exactly ``TABLES[table].schema``.

    - partition columns present in the data must equal the partition values (then dropped);
    - unknown columns and missing non-nullable columns are errors; missing nullable ones are null;
    - every column is cast safely (no silent truncation) to its declared type;
    - non-nullable columns must hold no nulls; key columns must be unique.
    """
    ts = spec(table)
    check_partition(table, run_id, iteration, stage)
    t = to_arrow(data, table)
    want = {"run_id": run_id, "iteration": iteration, "stage": stage}
    for col, value in want.items():
        if col in t.column_names:
            arr = t.column(col)
            if arr.null_count or (len(arr) and not pc.all(pc.equal(arr.cast(PARTITION_SCHEMA.field(col).type, safe=False), value)).as_py()):
                raise SchemaError(
                    f"{table}.{col}: column values differ from the partition {col}={value!r}"
                )
            t = t.drop_columns([col])
    unknown = [c for c in t.column_names if ts.schema.get_field_index(c) < 0]
    if unknown:
        raise SchemaError(
            f"{table}: unknown column(s) {', '.join(unknown)}; expected {', '.join(ts.schema.names)}"
        )
    if len(set(t.column_names)) != len(t.column_names):
        raise SchemaError(f"{table}: duplicate column names in {t.column_names}")
    cols = []
    for f in ts.schema:
        if f.name not in t.column_names:
            if not f.nullable:
                raise SchemaError(f"{table}.{f.name}: required column is missing")
            cols.append(pa.nulls(t.num_rows, f.type))
            continue
        arr = t.column(f.name)
        if arr.type != f.type:
            try:
                arr = arr.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                raise SchemaError(
                    f"{table}.{f.name}: cannot convert {arr.type} to {f.type}: {e}"
                ) from None
        if not f.nullable and arr.null_count:
            first = pc.index(pc.is_null(arr), True).as_py()
            raise SchemaError(
                f"{table}.{f.name}: {arr.null_count} null value(s) in a non-nullable column "
                f"(first at row {first})"
            )
        cols.append(arr)
    out = pa.Table.from_arrays(cols, schema=ts.schema)
    _check_unique(out, ts)
    return out


def _check_unique(t: pa.Table, ts: TableSpec) -> None:
    if t.num_rows <= 1:
        return
    if not ts.key:
        raise SchemaError(f"{ts.name}: holds one row per partition, got {t.num_rows}")
    n_unique = t.group_by(list(ts.key), use_threads=True).aggregate([]).num_rows
    if n_unique != t.num_rows:
        raise SchemaError(
            f"{ts.name}: {t.num_rows - n_unique} duplicate key(s) on ({', '.join(ts.key)})"
        )
