"""The one writer and reader of the candidate lake (DESIGN.md §3).

    from bstar.storage.lake import Lake
    lake = Lake("lake")                                   # local directory
    lake = Lake("s3://bucket/prefix", {"endpoint_url": "http://127.0.0.1:8333"})
    lake.write("candidates", rows, run_id="r1", iteration=2, stage="train")
    df = lake.read("candidates", run_id="r1", iteration=2)  # polars, partition columns included
    for chunk in lake.iter_read("candidates", "r1", 2, "train", rows=100_000, whole="query_id"):
        ...                                               # bounded memory: one chunk at a time

Layout: ``{root}/{table}/run_id=R/iteration=I/stage=S/part-*.parquet``. Part names are chosen by
the caller and deterministic (default ``part-00000``), so rerunning a stage overwrites its own
output instead of adding rows. Writes are atomic: locally a hidden temp file in the same
directory is fsynced and ``os.replace``d; on S3 the object is sent in one PUT. Readers only ever
glob ``part-*.parquet``, so temp files are never read as data.

S3 credentials come from ``storage_options`` (key, secret, token, endpoint_url, region) or the
usual AWS environment variables; they are never put in reprs, logs or error messages.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..faults import kill_point
from .schemas import PARTITION_SCHEMA, SchemaError, check_partition, spec, validate

__all__ = ["Lake", "resolve_storage_options", "PART_RE"]

PART_RE = re.compile(r"^part-[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# zstd level 1: within ~10% of snappy's speed on 2 cores and ~30% smaller files on text.
# /{table}/run_id=../iteration=../stage=../part-*.parquet below the root; temp names start with "."
_PART_PATH_RE = re.compile(r"^/([a-z_]+)/run_id=[^/]+/iteration=[0-9]+/stage=[^/]+/part-[^/]*\.parquet$")
_COMPRESSION = "zstd"
_COMPRESSION_LEVEL = 1
_ROW_GROUP = 256 * 1024
# one PUT up to the S3 single-object limit; never a multipart upload
_MAX_PUT = 5 * 2**30 - 1


def resolve_storage_options(storage_options: dict | None = None) -> dict:
    """Merge explicit options with the AWS env vars into s3fs.S3FileSystem keyword arguments."""
    o = dict(storage_options or {})
    env = os.environ

    def pick(*names: str, env_names: tuple[str, ...] = ()):
        for n in names:
            if o.get(n) is not None:
                v = o.pop(n)
                for m in names:
                    o.pop(m, None)
                return v
        for n in names:
            o.pop(n, None)
        for e in env_names:
            if env.get(e):
                return env[e]
        return None

    key = pick("key", "aws_access_key_id", env_names=("AWS_ACCESS_KEY_ID",))
    secret = pick("secret", "aws_secret_access_key", env_names=("AWS_SECRET_ACCESS_KEY",))
    token = pick("token", "aws_session_token", env_names=("AWS_SESSION_TOKEN",))
    endpoint = pick("endpoint_url", env_names=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
    region = pick("region", "region_name", env_names=("AWS_REGION", "AWS_DEFAULT_REGION"))
    out: dict[str, Any] = dict(o)
    if key is not None:
        out["key"] = key
    if secret is not None:
        out["secret"] = secret
    if token is not None:
        out["token"] = token
    if endpoint is not None:
        out["endpoint_url"] = endpoint
    if region is not None:
        ck = dict(out.get("client_kwargs") or {})
        ck.setdefault("region_name", region)
        out["client_kwargs"] = ck
    return out


class Lake:
    """Reader/writer of the Hive-partitioned Parquet tables under ``root``."""

    def __init__(self, root: str | os.PathLike, storage_options: dict | None = None):
        root = os.fspath(root)
        self.is_s3 = root.startswith(("s3://", "s3a://"))
        if self.is_s3:
            import s3fs

            self.root = "s3://" + root.split("://", 1)[1].strip("/")
            self._options = resolve_storage_options(storage_options)
            # skip the instance cache: two Lakes with different credentials must not share one
            self.fs = s3fs.S3FileSystem(skip_instance_cache=True, **self._options)
        else:
            import fsspec

            self.root = os.path.abspath(root).rstrip(os.sep) or os.sep
            self._options = {}
            self.fs = fsspec.filesystem("file")

    # -- paths -------------------------------------------------------------------------------
    def __repr__(self) -> str:  # never the credentials
        ep = self._options.get("endpoint_url")
        return f"Lake(root={self.root!r}" + (f", endpoint_url={ep!r})" if ep else ")")

    @property
    def storage_options(self) -> dict:
        """Resolved s3fs options (contains credentials: do not log)."""
        return dict(self._options)

    def _p(self, path: str) -> str:
        """Path as the filesystem wants it (s3fs: bucket/key)."""
        return path.split("://", 1)[1] if self.is_s3 else path

    def _url(self, p: str) -> str:
        return "s3://" + p if self.is_s3 and not p.startswith("s3://") else p

    def put_text(self, relpath: str, text: str) -> str:
        """Write `text` to `{root}/{relpath}` (a local file replaced atomically, or one S3 object)
        and return its location. For files beside the tables, such as `_reports/RUN.html`."""
        location = f"{self.root}/{relpath.lstrip('/')}"
        data = text.encode("utf-8")
        if self.is_s3:
            self.fs.pipe_file(self._p(location), data)
            return location
        os.makedirs(os.path.dirname(location), exist_ok=True)
        tmp = f"{location}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, location)
        return location

    def table_dir(self, table: str) -> str:
        spec(table)
        return f"{self.root}/{table}"

    def partition_dir(self, table: str, run_id: str, iteration: int, stage: str | None = None) -> str:
        stage = self._stage(table, stage)
        check_partition(table, run_id, iteration, stage)
        return f"{self.root}/{table}/run_id={run_id}/iteration={iteration}/stage={stage}"

    @staticmethod
    def _stage(table: str, stage: str | None) -> str:
        if stage is None:
            stage = spec(table).default_stage
            if stage is None:
                raise SchemaError(f"{table}: stage is required (e.g. {', '.join(spec(table).stages)})")
        return stage

    # -- write -------------------------------------------------------------------------------
    def write(
        self,
        table: str,
        data,
        run_id: str,
        iteration: int = 0,
        stage: str | None = None,
        part: str = "part-00000",
    ) -> str:
        """Validate ``data`` and atomically (re)place one part file; returns its path/URL."""
        stage = self._stage(table, stage)
        if not PART_RE.match(part):
            raise SchemaError(f"{table}: part name {part!r} must match {PART_RE.pattern}")
        t = validate(data, table, run_id, iteration, stage)
        d = self.partition_dir(table, run_id, iteration, stage)
        final = f"{d}/{part}.parquet"
        if self.is_s3:
            self._put_s3(t, final)
        else:
            self._write_local(t, d, final, part)
        return final

    @staticmethod
    def _write_table(t: pa.Table, where) -> None:
        pq.write_table(
            t,
            where,
            compression=_COMPRESSION,
            compression_level=_COMPRESSION_LEVEL,
            row_group_size=_ROW_GROUP,
            use_dictionary=True,
            write_statistics=True,
        )

    def _write_local(self, t: pa.Table, d: str, final: str, part: str) -> None:
        os.makedirs(d, exist_ok=True)
        # hidden name in the same directory: same filesystem for os.replace, never globbed
        tmp = f"{d}/.tmp-{part}-{uuid.uuid4().hex}.parquet"
        try:
            self._write_table(t, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            kill_point("write")  # BSTAR_KILL_AT crash point (tests only): temp file left behind
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        # make the rename itself durable
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _put_s3(self, t: pa.Table, final: str) -> None:
        sink = pa.BufferOutputStream()
        self._write_table(t, sink)
        buf = sink.getvalue()
        if buf.size > _MAX_PUT:
            raise SchemaError(f"part {final} is {buf.size} bytes, over the 5 GiB single-PUT limit; split it into parts")
        kill_point("write")  # BSTAR_KILL_AT crash point (tests only)
        # one PUT: the object is either the old version or the whole new one, never partial
        self.fs.pipe_file(self._p(final), buf.to_pybytes(), chunksize=_MAX_PUT)

    # -- list / read -------------------------------------------------------------------------
    def parts(
        self,
        table: str,
        run_id: str | None = None,
        iteration: int | None = None,
        stage: str | None = None,
    ) -> list[str]:
        """Sorted part files (paths or s3:// URLs) of the matching partitions."""
        tdir = self.table_dir(table)
        pattern = (
            f"{tdir}/run_id={'*' if run_id is None else run_id}"
            f"/iteration={'*' if iteration is None else int(iteration)}"
            f"/stage={'*' if stage is None else stage}/part-*.parquet"
        )
        if self.is_s3:
            # other processes may have written since our last listing
            self.fs.invalidate_cache(self._p(tdir))
        found = self.fs.glob(self._p(pattern))
        return sorted(self._url(p) for p in found)

    def all_parts(self) -> dict[str, list[str]]:
        """Part files of every table from one recursive listing (one request series on S3)."""
        from .schemas import TABLES

        out: dict[str, list[str]] = {t: [] for t in TABLES}
        root = self._p(self.root)
        if self.is_s3:
            self.fs.invalidate_cache(root)
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            found = []
        for p in found:
            m = _PART_PATH_RE.match(p[len(root):])
            if m and m.group(1) in out:
                out[m.group(1)].append(self._url(p))
        for files in out.values():
            files.sort()
        return out

    def exists(
        self,
        table: str,
        run_id: str | None = None,
        iteration: int | None = None,
        stage: str | None = None,
        part: str | None = None,
    ) -> bool:
        """Whether a part (or, with part=None, any part) of the matching partitions exists."""
        if part is not None:
            if run_id is None or iteration is None:
                raise ValueError("exists(part=...) needs run_id and iteration")
            path = f"{self.partition_dir(table, run_id, iteration, stage)}/{part}.parquet"
            return bool(self.fs.exists(self._p(path)))
        return bool(self.parts(table, run_id, iteration, stage))

    def read(
        self,
        table: str,
        run_id: str | None = None,
        iteration: int | None = None,
        stage: str | None = None,
        columns: list[str] | None = None,
    ) -> pl.DataFrame:
        """Rows of the matching partitions as polars, partition columns first."""
        return pl.from_arrow(self.read_arrow(table, run_id, iteration, stage, columns))

    def read_arrow(
        self,
        table: str,
        run_id: str | None = None,
        iteration: int | None = None,
        stage: str | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        full = spec(table).full_schema
        files = self.parts(table, run_id, iteration, stage)
        if not files:
            t = full.empty_table()
        else:
            dataset = ds.dataset(
                [self._p(f) for f in files],
                schema=full,
                format="parquet",
                filesystem=self.fs if self.is_s3 else None,
                partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"),
                partition_base_dir=self._p(self.table_dir(table)),
            )
            t = dataset.to_table(columns=columns)
            # the dataset infers non-nullable flags loosely; present the declared schema
            if columns is None:
                t = t.cast(full)
        if columns is not None and not files:
            t = t.select(columns)
        return t

    def iter_read(
        self,
        table: str,
        run_id: str,
        iteration: int,
        stage: str | None = None,
        *,
        rows: int,
        columns: list[str] | None = None,
        whole: str | None = None,
        parts: list[str] | None = None,
    ) -> Iterator[pl.DataFrame]:
        """The rows of one partition, part by part, in frames of about `rows` rows (no partition
        columns), so a stage holds one frame at a time however large the partition. `whole`: a
        column whose runs of equal values are never split between two frames of one part (the run at
        a frame's end waits for the next one), e.g. `query_id` so a query's candidates stay together.
        `parts`: only these part names (`part-...`, as `part_names` lists them), e.g. one shard's."""
        stage = self._stage(table, stage)
        if rows < 1:
            raise ValueError(f"iter_read: rows must be positive, got {rows}")
        names = columns if columns is None or whole is None or whole in columns else [*columns, whole]
        carry: pl.DataFrame | None = None
        files = self.parts(table, run_id, iteration, stage)
        if parts is not None:
            wanted = set(parts)
            files = [f for f in files if _part_name(f) in wanted]
        for f in files:
            with self.fs.open(self._p(f), "rb") as fh:
                pf = pq.ParquetFile(fh)
                left = pf.metadata.num_rows
                for batch in pf.iter_batches(batch_size=rows, columns=names):
                    left -= batch.num_rows
                    frame = pl.from_arrow(batch)
                    if carry is not None:
                        frame, carry = pl.concat([carry, frame], how="vertical_relaxed"), None
                    # a part's end ends every run (one part is one sampler call's output)
                    if whole is not None and frame.height and left > 0:
                        frame, carry = _split_trailing_run(frame, whole)
                    if frame.height:
                        yield frame if columns is None else frame.select(columns)

    def prune_parts(self, table: str, run_id: str, iteration: int, stage: str | None, pattern: re.Pattern,
                    keep: set[str]) -> list[str]:
        """Remove the parts of one partition whose name matches `pattern` and is not in `keep`:
        what a rerun with another chunking left behind (it would otherwise duplicate rows).
        Returns the names removed."""
        removed = []
        for f in self.parts(table, run_id, iteration, stage):
            name = _part_name(f)
            if pattern.match(name) and name not in keep:
                self.fs.rm_file(self._p(f))
                removed.append(name)
        return removed

    def part_names(self, table: str, run_id: str, iteration: int, stage: str | None = None) -> list[str]:
        """Sorted part names (`part-...`, no suffix) of one partition."""
        return [_part_name(f) for f in self.parts(table, run_id, iteration, self._stage(table, stage))]

    # -- delete ------------------------------------------------------------------------------
    def delete_partition(self, table: str, run_id: str, iteration: int, stage: str | None = None) -> int:
        """Remove every part of one partition; returns how many parts were removed."""
        stage = self._stage(table, stage)
        files = self.parts(table, run_id, iteration, stage)
        for f in files:
            self.fs.rm_file(self._p(f))
        if not self.is_s3:
            d = self.partition_dir(table, run_id, iteration, stage)
            try:
                os.rmdir(d)  # only if empty: leftover temp files of a crashed writer stay visible
            except OSError:
                pass
        return len(files)

    def duplicate_keys(self, table: str, run_id: str | None = None) -> pl.DataFrame:
        """Key values that occur more than once (should always be empty)."""
        key = list(spec(table).full_key)
        df = self.read(table, run_id=run_id, columns=key)
        return df.group_by(key).len().filter(pl.col("len") > 1)


def _split_trailing_run(frame: pl.DataFrame, column: str) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(frame without its last run of equal `column` values, that run); the whole frame is
    carried when it is one run."""
    values = frame[column]
    same = (values == values[-1]).fill_null(False).to_numpy()[::-1]
    tail = len(same) if same.all() else int(same.argmin())
    return frame.head(frame.height - tail), frame.tail(tail)


def _part_name(path: str) -> str:
    return path.rsplit("/", 1)[1].removesuffix(".parquet")
