"""Where a request's uploaded file is written while it arrives.

Werkzeug spools an upload over 500 KB to an anonymous temporary file, and
storing it (storage ``save``) then copied it into the job's folder: a 60 MB
study was written twice before the 202, the second time while the client
waited. A single submit's large upload goes straight into the storage's spool
instead (storage ``spool``), and ``save`` moves it into the job's folder with
one rename. Smaller uploads (single slices) stay in memory as before, and a
storage that copies anyway (S3) gets werkzeug's temporary file as before.
"""

from __future__ import annotations

from typing import IO, Any

from flask import Request

from api import context

SPOOLED_ENDPOINTS = frozenset({"jobs.submit_job"})
"""Routes whose upload is one file that becomes a job's upload (a batch's parts are small)."""
IN_MEMORY_BYTES = 500 * 1024
"""Werkzeug's own threshold: a request body up to this size keeps its file in memory."""


class UploadRequest(Request):
    """Flask's request, spooling a single submit's large upload into the storage.

    It closes (and so deletes, unless storage ``save`` took it) every file it
    spooled when the request ends: werkzeug closes only the files of a form it
    finished parsing, and a client that hangs up mid-upload leaves the parse
    unfinished.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spooled: list[IO[bytes]] = []

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        large = total_content_length is None or total_content_length > IN_MEMORY_BYTES
        if large and self.endpoint in SPOOLED_ENDPOINTS:
            spooled = context.storage().spool()
            if spooled is not None:
                self._spooled.append(spooled)
                return spooled
        return super()._get_file_stream(
            total_content_length, content_type, filename, content_length
        )

    def close(self) -> None:
        try:
            super().close()
        finally:
            for spooled in self._spooled:
                spooled.close()
