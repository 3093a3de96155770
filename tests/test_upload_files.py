"""Where the API keeps an uploaded file while the request is handled (api/upload_files.py)."""

from __future__ import annotations

import io
import os
import sys
from tempfile import SpooledTemporaryFile

import pytest
from werkzeug.test import EnvironBuilder

from api.upload_files import MEMORY_UPLOAD_BYTES, ServiceRequest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="memfd_create and /proc/self/fd are Linux's"
)


def _request(size: int) -> ServiceRequest:
    data = {"file": (io.BytesIO(b"\x89PNG" + b"x" * (size - 4)), "slice.png")}
    return ServiceRequest(EnvironBuilder(method="POST", data=data).get_environ())


def test_a_single_slice_waits_in_memory_with_a_path() -> None:
    request = _request(300_000)
    stream = request.files["file"].stream
    target = os.readlink(f"/proc/self/fd/{stream.fileno()}")
    assert target.startswith("/memfd:lungct-upload")  # no file on disk, a path all the same
    with open(f"/proc/self/fd/{stream.fileno()}", "rb") as again:
        assert again.read(4) == b"\x89PNG" and len(again.read()) == 300_000 - 4
    request.close()


def test_a_large_upload_keeps_werkzeugs_temporary_file() -> None:
    request = _request(MEMORY_UPLOAD_BYTES + 1)
    assert isinstance(request.files["file"].stream, SpooledTemporaryFile)
    request.close()
