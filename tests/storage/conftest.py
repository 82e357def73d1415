"""Fixtures for the storage tests: a local lake and a real S3 server (SeaweedFS)."""

from __future__ import annotations


import pytest

from bstar.storage.lake import Lake
from tests.s3server import S3Server, WeedNotFound, find_weed


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


@pytest.fixture(scope="session")
def s3_server():
    """A SeaweedFS S3 server on free local ports with enforced credentials (session-wide)."""
    try:
        find_weed()
    except WeedNotFound as e:
        pytest.skip(str(e))
    server = S3Server(bucket="bstar-test").start()
    try:
        yield server
    finally:
        server.stop()
