"""Reading raw records (local JSONL / JSON / Parquet or a hub dataset) into validated internal rows.

Internal row: `{"query_id": str, "prompt": str, "answer": str, "meta": dict}`.

Error policy. A malformed record (not UTF-8, not JSON, a missing or empty field, unparseable
tests) raises `RowError` naming the file, the line (or row index) and the field, or, with
`on_error="skip"`, is skipped and counted in `Rows.skipped` / `Rows.errors`.

Size. A prompt longer than `MAX_PROMPT_CHARS` (a 10 MB "question" is a broken record, and no
model context holds it) is a malformed record too; `max_prompt_chars=` changes the limit.

Duplicate query ids. An exact duplicate (same id, prompt and answer) is dropped and counted in
`Rows.duplicates`: copies of one question in a file are harmless. The same id with different
content is a malformed record (raise, or skip the later one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

# The longest APPS question is about 15k characters; 200k is far beyond any real prompt and far
# beyond what a model's context can take, while a runaway record (a file's worth of text in one
# field) is caught before it reaches the sampler.
MAX_PROMPT_CHARS = 200_000


class RowError(ValueError):
    """A malformed dataset record; the message names where (file:line) and which field."""

    def __init__(self, where: str, field: str | None, message: str):
        self.where, self.field = where, field
        super().__init__(f"{where}: " + (f"field {field!r}: " if field else "") + message)


class Rows(list):
    """The loaded rows (a plain list of dicts) plus a report of what was left out."""

    def __init__(self, rows: Iterable[dict] = (), *, dataset: str = "", verifier: str | None = None):
        super().__init__(rows)
        self.dataset = dataset
        self.verifier = verifier
        self.skipped = 0
        self.duplicates = 0
        self.errors: list[str] = []

    def report(self) -> dict:
        return {
            "dataset": self.dataset,
            "rows": len(self),
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "errors": self.errors[:20],
        }


def hash_id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def require_str(raw: dict, field: str, where: str, *, allow_empty: bool = False) -> str:
    if field not in raw or raw[field] is None:
        raise RowError(where, field, "missing")
    value = raw[field]
    if not isinstance(value, str):
        raise RowError(where, field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowError(where, field, "empty")
    return value


# ---------------------------------------------------------------------------------------------
# Raw records: (where, dict) pairs; a record that cannot even be read is yielded as a RowError.


def read_local(path: str | Path) -> Iterator[tuple[str, dict | RowError]]:
    """Records of a .jsonl/.json/.parquet file (any fsspec URL for JSON lines and Parquet)."""
    p = str(path)
    name = p.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        yield from _read_parquet(p)
    elif name.endswith(".json") and not name.endswith(".jsonl"):
        yield from _read_json_array(p)
    else:
        yield from _read_jsonl(p)


def _open(path: str):
    if "://" in path:
        import fsspec  # lazily: only remote paths need it

        return fsspec.open(path, "rb").open()
    if not Path(path).exists():
        raise FileNotFoundError(f"dataset file not found: {path}")
    return open(path, "rb")


def _read_jsonl(path: str) -> Iterator[tuple[str, dict | RowError]]:
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, RowError(where, None, f"not UTF-8 (byte {e.start} of the line)")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield where, RowError(where, None, f"not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield where, RowError(where, None, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield where, obj


def _read_json_array(path: str) -> Iterator[tuple[str, dict | RowError]]:
    with _open(path) as f:
        data = f.read()
    try:
        items = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RowError(path, None, f"cannot read as a JSON array: {e}") from None
    if isinstance(items, dict):  # {"data": [...]} style
        items = items.get("data", items.get("rows"))
    if not isinstance(items, list):
        raise RowError(path, None, "expected a JSON array of objects")
    for i, obj in enumerate(items):
        where = f"{path}[{i}]"
        yield (where, obj) if isinstance(obj, dict) else (where, RowError(where, None, "expected a JSON object"))


def _read_parquet(path: str) -> Iterator[tuple[str, dict | RowError]]:
    import pyarrow.parquet as pq  # lazily: pyarrow is heavy

    try:
        with _open(path) as f:
            table = pq.read_table(f)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise RowError(path, None, f"cannot read Parquet: {e}") from None
    for i, obj in enumerate(table.to_pylist()):
        yield f"{path} row {i}", obj


def read_hub(hub_id: str, config: str | None, split: str, *, configs: tuple[str, ...] = ()) -> Iterator[tuple[str, dict | RowError]]:
    """Records of a Hugging Face hub dataset through `datasets` (the optional `hub` extra)."""
    try:
        import datasets  # noqa: F401 - lazily: an optional extra
    except ImportError:
        raise ImportError(
            f"loading {hub_id!r} from the hub needs the `datasets` package (pip install 'bstar[hub]'); "
            "or give a local `path` to a .jsonl/.parquet file"
        ) from None
    import datasets

    for cfg in ([config] if config or not configs else list(configs)):
        ds = datasets.load_dataset(hub_id, cfg, split=split)
        label = f"{hub_id}{'/' + cfg if cfg else ''}[{split}]"
        for i, obj in enumerate(ds):
            yield f"{label} row {i}", dict(obj)


# ---------------------------------------------------------------------------------------------


def build_rows(
    records: Iterable[tuple[str, dict | RowError]],
    mapper: Callable[[dict, str], dict],
    *,
    dataset: str,
    verifier: str | None,
    on_error: str = "raise",
    limit: int | None = None,
    offset: int = 0,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> Rows:
    """Map records to internal rows under the error, size and duplicate policies above; the
    first `offset` valid rows are checked but left out (then at most `limit` are kept)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    out = Rows(dataset=dataset, verifier=verifier)
    first_seen: dict[str, tuple[str, str, str]] = {}
    for where, raw in records:
        if limit is not None and len(out) >= limit:
            break
        try:
            if isinstance(raw, RowError):
                raise raw
            row = check_row(mapper(raw, where), where, max_prompt_chars=max_prompt_chars)
            qid = row["query_id"]
            if qid in first_seen:
                prompt, answer, first_where = first_seen[qid]
                if (prompt, answer) == (row["prompt"], row["answer"]):
                    out.duplicates += 1
                    continue
                raise RowError(where, "query_id", f"duplicate id {qid!r} with different content (first at {first_where})")
            first_seen[qid] = (row["prompt"], row["answer"], where)
            if len(first_seen) > offset:
                out.append(row)
        except RowError as e:
            if on_error == "raise":
                raise
            out.skipped += 1
            out.errors.append(str(e))
    return out


def check_row(row: Any, where: str, *, max_prompt_chars: int = MAX_PROMPT_CHARS) -> dict:
    """The internal-row contract, applied to every loader's output (built-in or user)."""
    if not isinstance(row, dict):
        raise RowError(where, None, f"loader returned {type(row).__name__}, not a dict")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError(where, "prompt", "missing or empty")
    if len(prompt) > max_prompt_chars:
        raise RowError(where, "prompt", f"{len(prompt):,} characters, over the limit of {max_prompt_chars:,}")
    answer = row.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise RowError(where, "answer", "missing or empty")
    if not isinstance(answer, str):
        answer = json.dumps(answer) if isinstance(answer, (dict, list)) else str(answer)
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise RowError(where, "meta", f"expected a dict, got {type(meta).__name__}")
    qid = row.get("query_id")
    if qid is None or (isinstance(qid, str) and not qid.strip()):
        qid = hash_id("q", prompt)
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise RowError(where, "meta", f"not JSON-serialisable: {e}") from None
    return {"query_id": str(qid), "prompt": prompt, "answer": answer, "meta": meta}
