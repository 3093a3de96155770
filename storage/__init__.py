"""Upload storage: one folder per job under STORAGE_DIR, and the only code that deletes uploads.

The API writes an upload here and the worker reads it; both release it
through :meth:`LocalStorage.release` once the job has ended, and the sweeper
removes what a crash left behind (:meth:`LocalStorage.folders`). Files are
written under a temporary name and renamed when complete, so a reader never
sees half an upload.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import BinaryIO

from config import Settings

KNOWN_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".zip"}
PARTIAL_SUFFIX = ".part"
COPY_CHUNK = 1024 * 1024


def stored_name(filename: str) -> str:
    """``upload`` plus a known extension: the client's file name is never kept.

    File names often carry patient names or IDs; the extension is only a hint
    for ingest, which recognises files by content.
    """
    suffix = PurePath(filename.replace("\\", "/")).suffix.lower()
    return "upload" + (suffix if suffix in KNOWN_SUFFIXES else "")


class LocalStorage:
    """Job folders in a local (or shared network) folder."""

    def __init__(self, root: Path, keep_uploads: bool = False) -> None:
        self.root = root
        self.keep_uploads = keep_uploads

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStorage:
        return cls(settings.storage_dir, settings.keep_uploads)

    def save(self, job_id: str, filename: str, stream: BinaryIO) -> tuple[str, Path]:
        """Copy ``stream`` to ``<job_id>/upload.<ext>``; return (key, path).

        Written as ``*.part`` and renamed once complete: a crash mid-copy leaves
        a partial file that the sweeper recognises and removes.
        """
        name = stored_name(filename)
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=False)
        path = folder / name
        partial = folder / f"{name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
        with partial.open("wb") as out:
            shutil.copyfileobj(stream, out, COPY_CHUNK)
        os.replace(partial, path)
        return f"{job_id}/{name}", path

    def path(self, key: str) -> Path:
        """The local file of a stored upload key."""
        return self.root / key

    def discard(self, job_id: str) -> None:
        """Remove everything stored for a job."""
        if job_id and "/" not in job_id and job_id not in (".", ".."):
            shutil.rmtree(self.root / job_id, ignore_errors=True)

    def release(self, job_id: str) -> None:
        """The job has ended: drop its upload (patient data) unless KEEP_UPLOADS is set."""
        if not self.keep_uploads:
            self.discard(job_id)

    def folders(self, older_than_s: float) -> Iterator[str]:
        """Job IDs whose folders were last changed more than ``older_than_s`` ago."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - older_than_s
        for entry in os.scandir(self.root):
            try:
                if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    yield entry.name
            except FileNotFoundError:  # removed meanwhile
                continue
