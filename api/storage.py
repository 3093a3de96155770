"""Upload storage on disk: one folder per job under STORAGE_DIR (never in Redis)."""

from __future__ import annotations

import shutil
from pathlib import Path

from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename


def save_upload(storage_dir: Path, job_id: str, upload: FileStorage) -> tuple[str, Path]:
    """Stream the upload to ``<storage>/<job_id>/<safe name>``; return (key, path)."""
    name = secure_filename(upload.filename or "") or "upload"
    folder = storage_dir / job_id
    folder.mkdir(parents=True, exist_ok=False)
    path = folder / name
    upload.save(path)
    return f"{job_id}/{name}", path


def discard(storage_dir: Path, job_id: str) -> None:
    """Remove a job's stored upload (rejected at upload time, or deleted by the user)."""
    shutil.rmtree(storage_dir / job_id, ignore_errors=True)
