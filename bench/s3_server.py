"""A throwaway S3-compatible server on loopback (moto's server, a real HTTP endpoint).

Used by the tests (a session fixture) and by ``bench/s3_zip_read.py``. The
service talks to it exactly as to MinIO or AWS: through boto3 and the AWS_*
variables that :func:`s3_env` returns.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.e2e import _free_port, spawn, stop


def s3_env(endpoint: str) -> dict[str, str]:
    """The AWS_* variables boto3 needs to reach ``endpoint`` (moto accepts any keys)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@contextmanager
def moto_server(log: Path | None = None, timeout_s: float = 30) -> Iterator[str]:
    """Run ``python -m moto.server`` on a free loopback port; yield its endpoint URL."""
    port = _free_port()
    log = log or Path(tempfile.mkdtemp(prefix="moto-")) / "moto.log"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = spawn(argv, {"PATH": "/usr/bin:/bin"}, log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited:\n{log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not listen in {timeout_s}s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
