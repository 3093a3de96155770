"""Where an uploaded file waits while its request is handled: small ones in memory.

werkzeug keeps a file part in memory up to 500 kB and then spools it to a
temporary file. The upload check (ingest/) and the storage copy want a file
with a descriptor, so every single slice (100-600 kB) was written out to a
new temporary file on disk anyway (``SpooledTemporaryFile.fileno`` rolls it
over): an inode, a write and a delete per upload, about half a millisecond of
the API's CPU a slice on the 2-core VM. A request of at most
:data:`MEMORY_UPLOAD_BYTES` puts its file in an anonymous in-memory file
(``memfd_create``, Linux) instead: it has a descriptor and a
``/proc/self/fd`` path (storage/base.py ``readable_path``), and nothing
touches the disk before storage saves the upload. Larger requests, and hosts
without ``memfd_create``, keep werkzeug's temporary files.
"""

from __future__ import annotations

import os
from typing import IO

from flask import Request

MEMORY_UPLOAD_BYTES = 1024 * 1024
"""Largest request whose file is held in memory (twice werkzeug's 500 kB, per request)."""


class ServiceRequest(Request):
    """Flask's request, with small uploads in an in-memory file (see the module)."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        small = total_content_length is not None and total_content_length <= MEMORY_UPLOAD_BYTES
        if small and hasattr(os, "memfd_create"):
            return os.fdopen(os.memfd_create("lungct-upload", os.MFD_CLOEXEC), "w+b")
        stream = super()._get_file_stream
        return stream(total_content_length, content_type, filename, content_length)
