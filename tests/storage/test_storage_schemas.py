import pyarrow as pa
import polars as pl
import pytest

from bstar.storage.schemas import TABLES, SchemaError, spec, validate

from lake_samples import SAMPLE, STAGES


def test_every_table_has_spec_and_key_columns_exist():
    assert set(TABLES) == {
        "runs", "queries", "candidates", "rewards", "search", "selections", "metrics", "checkpoints", "annotations"
    }
    for t in TABLES.values():
        for k in t.key:
            assert k in t.schema.names, (t.name, k)
        assert t.full_schema.names[:3] == ["run_id", "iteration", "stage"]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_sample_rows_validate_to_exact_schema(table):
    t = validate(SAMPLE[table](), table, "r1", 1, STAGES.get(table) or spec(table).default_stage)
    assert t.schema == TABLES[table].schema
    assert t.num_rows == len(SAMPLE[table]())


def test_accepts_polars_and_arrow_and_casts():
    df = pl.DataFrame(SAMPLE["candidates"]()).with_columns(pl.col("sample_idx").cast(pl.Int64))
    t = validate(df, "candidates", "r1", 0, "train")
    assert t.schema.field("sample_idx").type == pa.int32()
    t2 = validate(df.to_arrow(), "candidates", "r1", 0, "train")
    assert t2.equals(t)


def test_missing_required_column_named():
    rows = SAMPLE["candidates"]()
    for r in rows:
        del r["response"]
    with pytest.raises(SchemaError, match=r"candidates\.response: required column is missing"):
        validate(rows, "candidates", "r1", 0, "train")


def test_missing_nullable_column_becomes_null():
    rows = [{k: v for k, v in r.items() if k != "prm"} for r in SAMPLE["rewards"]()]
    t = validate(rows, "rewards", "r1", 0, "train")
    assert t.column("prm").null_count == t.num_rows


def test_unknown_column_named():
    rows = SAMPLE["metrics"]()
    rows[0]["oops"] = 1
    with pytest.raises(SchemaError, match=r"metrics: unknown column\(s\) oops"):
        validate(rows, "metrics", "r1", 0, "eval")


def test_bad_type_named():
    rows = SAMPLE["candidates"]()
    rows[0]["sample_idx"] = "first"
    with pytest.raises(SchemaError, match=r"candidates"):
        validate(rows, "candidates", "r1", 0, "train")
    t = pa.table({**{c: [v] for c, v in SAMPLE["candidates"]()[0].items()}, "n_tokens": ["many"]})
    with pytest.raises(SchemaError, match=r"candidates\.n_tokens: cannot convert string to int32"):
        validate(t, "candidates", "r1", 0, "train")


def test_overflow_is_not_silently_truncated():
    t = pa.table({**{c: [v] for c, v in SAMPLE["candidates"]()[0].items()}, "sample_idx": pa.array([2**40], pa.int64())})
    with pytest.raises(SchemaError, match=r"candidates\.sample_idx"):
        validate(t, "candidates", "r1", 0, "train")


def test_null_in_required_column_named():
    rows = SAMPLE["rewards"]()
    rows[2]["status"] = None
    with pytest.raises(SchemaError, match=r"rewards\.status: 1 null value\(s\).*row 2"):
        validate(rows, "rewards", "r1", 0, "train")


def test_duplicate_keys_refused():
    rows = SAMPLE["candidates"]()
    rows.append(dict(rows[0]))
    with pytest.raises(SchemaError, match=r"candidates: 1 duplicate key\(s\) on \(query_id, sample_idx\)"):
        validate(rows, "candidates", "r1", 0, "train")


def test_partition_columns_in_data_must_match():
    rows = [{**r, "stage": "train", "run_id": "r1"} for r in SAMPLE["candidates"]()]
    assert validate(rows, "candidates", "r1", 0, "train").num_rows == len(rows)
    with pytest.raises(SchemaError, match=r"candidates\.stage: column values differ"):
        validate(rows, "candidates", "r1", 0, "search")


@pytest.mark.parametrize("run_id", ["", "../x", "a/b", "r 1", "x'--"])
def test_bad_partition_names(run_id):
    with pytest.raises(SchemaError, match="run_id"):
        validate(SAMPLE["runs"](), "runs", run_id, 0, "run")


def test_unknown_table():
    with pytest.raises(SchemaError, match="unknown table 'nope'"):
        validate([], "nope", "r1", 0, "x")
