"""Model checkpoints that live with a remote lake: `{root}/_checkpoints/{run_id}/{name}/`.

    url = publish_checkpoint("/tmp/stage/iter-1", "s3://bucket/lake/_checkpoints/r1/iter-1", opts)
    path = fetch_checkpoint(url, opts)      # a local directory: downloaded once, then from the cache

A checkpoint is a directory (weights, tokenizer, trainer state). Publishing uploads every file,
then writes `MANIFEST.json` last, naming each file with its size and SHA-256; before the first
upload it removes the previous manifest, so while a checkpoint is being (re)written readers find
none rather than a mix of two. A reader never loads half a checkpoint: `fetch_checkpoint` starts
from the manifest, downloads into a hidden temporary directory, checks every size and digest,
and renames the directory into place. The local cache is keyed by the manifest's own digest, so
a rewritten checkpoint (a redone round) is a new entry and a stale copy is never loaded; two
processes fetching at once both end with the same complete directory.

Cache: `$BSTAR_CHECKPOINT_CACHE`, else `~/.cache/bstar/checkpoint-cache`. Local paths and hub
ids are not URLs and pass through `fetch_checkpoint` unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

__all__ = ["MANIFEST", "CheckpointNotFound", "cache_root", "drop_subdir", "fetch_checkpoint", "is_remote",
           "manifest_exists", "publish_checkpoint"]

MANIFEST = "MANIFEST.json"
CACHE_ENV = "BSTAR_CHECKPOINT_CACHE"
_CHUNK = 8 * 2**20


class CheckpointNotFound(FileNotFoundError):
    """No complete checkpoint (no manifest) at a URL."""


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(("s3://", "s3a://"))


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or os.path.expanduser("~/.cache/bstar/checkpoint-cache"))


def _fs(storage_options: dict | None):
    import s3fs

    from .lake import resolve_storage_options

    return s3fs.S3FileSystem(skip_instance_cache=True, **resolve_storage_options(storage_options))


def _key(url: str) -> str:
    """s3fs path (bucket/key) of a URL, without a trailing slash."""
    return url.split("://", 1)[1].strip("/")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _manifest_of(local: Path) -> dict:
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST)
    if not files:
        raise FileNotFoundError(f"no checkpoint files under {local}")
    return {"format": 1, "files": {p.relative_to(local).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
                                   for p in files}}


def publish_checkpoint(local_dir: str | os.PathLike, url: str, storage_options: dict | None = None) -> str:
    """Upload the checkpoint directory `local_dir` to `url` (manifest last); returns the URL.

    The local directory becomes this machine's cache entry for the published checkpoint, so the
    machine that trained it does not download it again."""
    local = Path(local_dir)
    manifest = _manifest_of(local)
    fs, base = _fs(storage_options), _key(url)
    if fs.exists(f"{base}/{MANIFEST}"):
        fs.rm_file(f"{base}/{MANIFEST}")  # readers see no checkpoint while it is being rewritten
    for rel in manifest["files"]:
        fs.put_file(str(local / rel), f"{base}/{rel}")
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    # files of an older checkpoint at this URL that this one does not have
    for path in fs.find(base):
        rel = path[len(base) + 1:]
        if rel != MANIFEST and rel not in manifest["files"]:
            fs.rm_file(path)
    fs.pipe_file(f"{base}/{MANIFEST}", body)
    _adopt(local, url, body)
    return "s3://" + base


def drop_subdir(checkpoint: str | os.PathLike, subdir: str, storage_options: dict | None = None) -> int:
    """Delete `subdir/` of a checkpoint (e.g. the optimizer state of a round nobody resumes from);
    the number of files removed. Published: the manifest is rewritten without them first, so a
    reader never sees a manifest naming a file that is gone; its old cache entries stay valid."""
    if not is_remote(checkpoint):
        target = Path(checkpoint) / subdir
        n = sum(1 for p in target.rglob("*") if p.is_file()) if target.is_dir() else 0
        shutil.rmtree(target, ignore_errors=True)
        return n
    fs, base = _fs(storage_options), _key(str(checkpoint))
    try:
        manifest = json.loads(fs.cat_file(f"{base}/{MANIFEST}"))
    except FileNotFoundError:
        return 0
    gone = [rel for rel in manifest["files"] if rel.startswith(subdir.rstrip("/") + "/")]
    if not gone:
        return 0
    manifest["files"] = {rel: meta for rel, meta in manifest["files"].items() if rel not in gone}
    fs.pipe_file(f"{base}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
    for rel in gone:
        fs.rm_file(f"{base}/{rel}")
    return len(gone)


def manifest_exists(url: str, storage_options: dict | None = None) -> bool:
    """Whether a complete checkpoint is published at `url`."""
    return _fs(storage_options).exists(f"{_key(url)}/{MANIFEST}")


def fetch_checkpoint(path: str | os.PathLike, storage_options: dict | None = None) -> str:
    """A local directory holding the checkpoint at `path`: a URL is downloaded once into the cache
    (keyed by its manifest); anything else is returned as it is."""
    if not is_remote(path):
        return str(path)
    url = str(path)
    fs, base = _fs(storage_options), _key(url)
    try:
        body = fs.cat_file(f"{base}/{MANIFEST}")
    except FileNotFoundError:
        raise CheckpointNotFound(
            f"no checkpoint at {url}: it has no {MANIFEST} (never published, or being rewritten)"
        ) from None
    entry = _entry(url, body)
    if (entry / MANIFEST).is_file():
        return str(entry)
    manifest = json.loads(body)
    tmp = entry.with_name(f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}")
    try:
        for rel, meta in manifest["files"].items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{base}/{rel}", str(dest))
            if dest.stat().st_size != meta["size"] or _sha256(dest) != meta["sha256"]:
                raise OSError(f"checkpoint {url}: {rel} does not match its manifest (changed while downloading?)")
        (tmp / MANIFEST).write_bytes(body)
        _install(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(entry)


def _entry(url: str, manifest_body: bytes) -> Path:
    name = _key(url).rsplit("/", 1)[-1]
    return cache_root() / f"{name}-{hashlib.sha256(manifest_body).hexdigest()[:20]}"


def _install(tmp: Path, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        if not (entry / MANIFEST).is_file():  # another process installing the same entry won
            raise


def _adopt(local: Path, url: str, body: bytes) -> None:
    """Make `local` (just published) the cache entry of `url`'s manifest: moved when the cache is
    on the same filesystem, else copied."""
    entry = _entry(url, body)
    if (entry / MANIFEST).is_file():
        return
    tmp = entry.with_name(f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}")
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            os.rename(local, tmp)
        except OSError:
            shutil.copytree(local, tmp)
        (tmp / MANIFEST).write_bytes(body)
        _install(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
