"""Upload storage on disk: one folder per job under STORAGE_DIR (never in Redis)."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePath

from werkzeug.datastructures import FileStorage

KNOWN_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".zip"}


def stored_name(filename: str) -> str:
    """``upload`` plus a known extension: the client's file name is never kept.

    File names often carry patient names or IDs; the extension is only a hint
    for ingest, which recognises files by content.
    """
    suffix = PurePath(filename.replace("\\", "/")).suffix.lower()
    return "upload" + (suffix if suffix in KNOWN_SUFFIXES else "")


def save_upload(storage_dir: Path, job_id: str, upload: FileStorage) -> tuple[str, Path]:
    """Stream the upload to ``<storage>/<job_id>/upload.<ext>``; return (key, path)."""
    name = stored_name(upload.filename or "")
    folder = storage_dir / job_id
    folder.mkdir(parents=True, exist_ok=False)
    path = folder / name
    upload.save(path)
    return f"{job_id}/{name}", path


def discard(storage_dir: Path, job_id: str) -> None:
    """Remove a job's stored upload (rejected at upload time, or deleted by the user)."""
    shutil.rmtree(storage_dir / job_id, ignore_errors=True)
