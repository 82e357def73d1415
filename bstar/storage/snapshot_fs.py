"""Read-only fsspec filesystem over the S3 part files listed when a catalog connects.

    from bstar.storage.snapshot_fs import SnapshotFileSystem
    fs = SnapshotFileSystem(lake.fs, files)      # files: s3:// URLs from Lake.all_parts()
    con.register_filesystem(fs)                  # what catalog.connect does on S3

Why: on every query DuckDB reopens each Parquet file and asks for its size and modification
time (four opens and ~16 metadata calls per file per query). Through s3fs each of those calls
is a hop to the fsspec event-loop thread under the GIL; on 20 files that costs more than the
query itself. DuckDB also distrusts its own byte cache for files modified in the last ~10
seconds, so right after a stage writes its parts every query fetched each column chunk again
with its own GET. Here:

- size and mtime come from a dict filled once at connect time (from the listing's cache);
- opening a file costs nothing; each read is one ranged GET of exactly the bytes DuckDB asks
  for (no readahead: DuckDB reads small files whole and large ones by footer and column
  chunk), and the bytes are kept in a per-connection cache, so a repeated query is served
  from memory, including a read that falls inside an earlier, larger one;
- the cache is least-recently-used, bounded by ``max_bytes`` (256 MiB): memory stays bounded
  whatever the lake's size.

The listing is a snapshot, like the catalog's file list: files written later are invisible
until the next connect, and paths outside the snapshot do not exist. A part rewritten after
connecting (a rerun stage) is served from the cache where already read; a read that comes
back shorter than the listed size allows is refused. Writing is refused.

Tests: tests/storage/test_storage_snapshot_fs.py (local file system and SeaweedFS S3).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timezone

from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile

__all__ = ["SnapshotFileSystem"]


class SnapshotFileSystem(AbstractFileSystem):
    """The given files of ``fs`` with the size and mtime they had when constructed."""

    protocol = ("s3", "s3a")
    root_marker = ""
    cachable = False  # one instance per connection, never shared through fsspec's cache

    def __init__(self, fs: AbstractFileSystem, files: list[str], max_bytes: int = 256 * 2**20):
        super().__init__()
        self.fs = fs
        self.max_bytes = max_bytes
        self.cached_bytes = 0
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()  # (path, start) -> bytes
        self._starts: dict[str, set[int]] = {}  # path -> starts of its cached ranges
        self._lock = threading.Lock()  # DuckDB reads from several threads
        self._info: dict[str, dict] = {}
        for url in files:
            path = self._strip_protocol(url)
            info = fs.info(path)  # served from the listing's cache, no request
            mtime = info.get("LastModified") or info.get("mtime") or info.get("created")
            if isinstance(mtime, (int, float)):
                mtime = datetime.fromtimestamp(mtime, tz=timezone.utc)
            self._info[path] = {"name": path, "size": int(info["size"]), "type": "file", "mtime": mtime}

    @classmethod
    def _strip_protocol(cls, path):
        path = path.split("://", 1)[1] if "://" in path else path
        return path.rstrip("/")

    def info(self, path, **kwargs) -> dict:
        path = self._strip_protocol(path)
        try:
            return dict(self._info[path])
        except KeyError:
            if any(p.startswith(path + "/") for p in self._info):
                return {"name": path, "size": 0, "type": "directory"}
            raise FileNotFoundError(path) from None

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        if path in self._info:
            out = [self.info(path)]
        else:
            prefix = path + "/" if path else ""
            names = sorted({prefix + p[len(prefix):].split("/", 1)[0] for p in self._info if p.startswith(prefix)})
            if not names:
                raise FileNotFoundError(path)
            out = [self.info(n) for n in names]
        return out if detail else [o["name"] for o in out]

    def modified(self, path) -> datetime:
        return self.info(path)["mtime"]

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise PermissionError(f"the lake snapshot is read-only: cannot open {path!r} with mode {mode!r}")
        path = self._strip_protocol(path)
        return _SnapshotFile(self, path, size=self.info(path)["size"])

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a listed file: from the cache, else one ranged GET."""
        with self._lock:
            for s in self._starts.get(path, ()):
                data = self._cache[(path, s)]
                if s <= start and end <= s + len(data):
                    self._cache.move_to_end((path, s))
                    return data[start - s:end - s]
        data = self.fs.cat_file(path, start=start, end=end)
        if len(data) != end - start:
            raise OSError(f"{path} changed since the lake was listed (short read); reconnect")
        self._store(path, start, data)
        return data

    def _store(self, path: str, start: int, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._cache.pop((path, start), None)
            if old is not None and len(old) > len(data):  # another thread read more meanwhile
                data = old
            self.cached_bytes += len(data) - (len(old) if old is not None else 0)
            self._cache[(path, start)] = data
            self._starts.setdefault(path, set()).add(start)
            while self.cached_bytes > self.max_bytes:
                (p, s), evicted = self._cache.popitem(last=False)
                self.cached_bytes -= len(evicted)
                self._starts[p].discard(s)


class _SnapshotFile(AbstractBufferedFile):
    """Reads go to SnapshotFileSystem.read_range (fsspec's own block caches stay off)."""

    def __init__(self, fs: SnapshotFileSystem, path: str, size: int):
        super().__init__(fs, path, mode="rb", cache_type="none", size=size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.read_range(self.path, start, end)
