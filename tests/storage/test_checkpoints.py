"""Checkpoints in the lake's object store: manifest last, downloads verified, cache keyed by manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bstar.storage.checkpoints import MANIFEST, _fs, CheckpointNotFound, fetch_checkpoint, publish_checkpoint


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """This machine's checkpoint cache, and a helper that switches to another machine's."""
    def machine(name: str):
        path = tmp_path / f"cache-{name}"
        monkeypatch.setenv("BSTAR_CHECKPOINT_CACHE", str(path))
        return path

    machine("a")
    return machine


def _checkpoint(path, weights: bytes = b"w" * 1000):
    (path / "sub").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text('{"layers": 2}')
    (path / "sub" / "state.pt").write_bytes(b"optimizer")
    return path


def _url(s3_server, name):
    return f"s3://{s3_server.bucket}/ckpt-test/{name}"


def test_publish_then_fetch_on_another_machine(s3_server, tmp_path, caches):
    local = _checkpoint(tmp_path / "stage" / "iter-1")
    url = publish_checkpoint(local, _url(s3_server, "a/iter-1"), s3_server.storage_options)
    assert url == _url(s3_server, "a/iter-1")
    # the trainer's directory became this machine's cache entry: nothing to download here
    assert not local.exists()
    here = fetch_checkpoint(url, s3_server.storage_options)
    assert (tmp_path / "cache-a") in Path(here).parents
    # another machine downloads every file once, byte for byte
    caches("b")
    there = Path(fetch_checkpoint(url, s3_server.storage_options))
    assert (tmp_path / "cache-b") in there.parents
    assert (there / "model.safetensors").read_bytes() == b"w" * 1000
    assert (there / "sub" / "state.pt").read_bytes() == b"optimizer"
    manifest = json.loads((there / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["config.json", "model.safetensors", "sub/state.pt"]
    assert manifest["files"]["model.safetensors"]["size"] == 1000
    # the second fetch is served by the cache (same directory)
    assert fetch_checkpoint(url, s3_server.storage_options) == str(there)


def test_rewritten_checkpoint_is_a_new_cache_entry(s3_server, tmp_path, caches):
    url = _url(s3_server, "b/iter-1")
    publish_checkpoint(_checkpoint(tmp_path / "one"), url, s3_server.storage_options)
    caches("reader")
    first = fetch_checkpoint(url, s3_server.storage_options)
    # a redone round rewrites the checkpoint with other weights and without one file
    redo = tmp_path / "two"
    redo.mkdir()
    (redo / "model.safetensors").write_bytes(b"v" * 10)
    publish_checkpoint(redo, url, s3_server.storage_options)
    second = fetch_checkpoint(url, s3_server.storage_options)
    assert second != first
    assert open(f"{second}/model.safetensors", "rb").read() == b"v" * 10
    assert not os.path.exists(f"{second}/config.json")
    # the older checkpoint's extra files are gone from the store too
    fs = _fs(s3_server.storage_options)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(url.split("://")[1])) == [MANIFEST, "model.safetensors"]


def test_no_manifest_no_checkpoint(s3_server, tmp_path, caches):
    """An upload that stopped before its manifest is not a checkpoint: readers get a clear error."""
    fs = _fs(s3_server.storage_options)
    url = _url(s3_server, "c/iter-1")
    fs.pipe_file(url.split("://")[1] + "/model.safetensors", b"half")
    with pytest.raises(CheckpointNotFound, match="no checkpoint at .*MANIFEST.json"):
        fetch_checkpoint(url, s3_server.storage_options)


def test_corrupt_download_is_refused_and_leaves_no_entry(s3_server, tmp_path, caches):
    url = _url(s3_server, "d/iter-1")
    publish_checkpoint(_checkpoint(tmp_path / "x"), url, s3_server.storage_options)
    fs = _fs(s3_server.storage_options)
    fs.pipe_file(url.split("://")[1] + "/config.json", b'{"layers": 3}')  # changed behind the manifest
    cache = caches("c")
    with pytest.raises(OSError, match="config.json does not match its manifest"):
        fetch_checkpoint(url, s3_server.storage_options)
    assert not cache.exists() or not any(cache.iterdir())


def test_local_paths_pass_through(tmp_path):
    assert fetch_checkpoint(str(tmp_path)) == str(tmp_path)
    assert fetch_checkpoint("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_drop_subdir_rewrites_the_manifest_before_deleting(s3_server, tmp_path, caches):
    from bstar.storage.checkpoints import drop_subdir

    url = publish_checkpoint(_checkpoint(tmp_path / "stage" / "iter-1"), _url(s3_server, "d/iter-1"),
                             s3_server.storage_options)
    assert drop_subdir(url, "sub", s3_server.storage_options) == 1
    assert drop_subdir(url, "sub", s3_server.storage_options) == 0
    fs = _fs(s3_server.storage_options)
    base = url.split("://", 1)[1]
    assert sorted(json.loads(fs.cat_file(f"{base}/{MANIFEST}"))["files"]) == ["config.json", "model.safetensors"]
    assert not fs.exists(f"{base}/sub/state.pt")
    caches("fresh")  # another machine fetches the pruned checkpoint: complete and verified
    there = Path(fetch_checkpoint(url, s3_server.storage_options))
    assert sorted(p.name for p in there.iterdir()) == [MANIFEST, "config.json", "model.safetensors"]
