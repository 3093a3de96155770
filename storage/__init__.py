"""Upload storage, and the only code that deletes uploads.

Two backends with the same methods (:class:`storage.base.Storage`), chosen by
``STORAGE_URL``: a local (or shared network) folder, one folder per job (the
default, ``STORAGE_DIR`` when STORAGE_URL is unset), or S3-compatible object
storage, one key prefix per job (``s3://bucket/prefix``). Use
:func:`open_storage`.

The API saves an upload here and the worker reads it (:meth:`~Storage.local_file`);
both release it through :meth:`~Storage.release` once the job has ended, and
the sweeper removes what a crash left behind (:meth:`~Storage.job_ids` with no
job row). A reader never sees half an upload.
"""

from __future__ import annotations

from pathlib import Path

from config import Settings
from storage.base import (
    KNOWN_SUFFIXES,
    Storage,
    Stored,
    readable_path,
    scratch_file,
    stored_name,
    valid_job_id,
)
from storage.local import PARTIAL_SUFFIX, LocalStorage

S3_SCHEME = "s3://"

__all__ = [
    "KNOWN_SUFFIXES",
    "PARTIAL_SUFFIX",
    "S3_SCHEME",
    "LocalStorage",
    "Storage",
    "Stored",
    "open_storage",
    "readable_path",
    "scratch_file",
    "stored_name",
    "valid_job_id",
]


def open_storage(settings: Settings) -> Storage:
    """The storage that STORAGE_URL names (STORAGE_DIR when it is unset)."""
    url = settings.storage_url
    if url.startswith(S3_SCHEME):
        from storage.s3 import S3Storage  # boto3 only where S3 is used

        bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
        return S3Storage(bucket, prefix, settings.keep_uploads)
    return LocalStorage(Path(url) if url else settings.storage_dir, settings.keep_uploads)
