"""What every storage backend offers, and local temporary files that leave nothing behind."""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path, PurePath
from typing import IO, NamedTuple

KNOWN_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".zip"}
COPY_CHUNK = 1024 * 1024
PROC_FD = Path("/proc/self/fd")


def stored_name(filename: str) -> str:
    """``upload`` plus a known extension: the client's file name is never kept.

    File names often carry patient names or IDs; the extension is only a hint
    for ingest, which recognises files by content.
    """
    suffix = PurePath(filename.replace("\\", "/")).suffix.lower()
    return "upload" + (suffix if suffix in KNOWN_SUFFIXES else "")


DERIVED_NAME = re.compile(
    r"packs/\d{1,9}-[0-9a-f]{12}\.pack|(images|heatmaps)/\d{1,9}\.png|views/\d{1,9}\.view"
    r"|dicom/[0-9a-z]{1,40}\.dcm"
)
"""A job's derived files: ``packs/<first slice index>-<random>.pack`` (the model-input
pixels and viewing copies of a batch's slices, storage/packs.py), ``heatmaps/<slice_index>.png``;
``images/<slice_index>.png`` and ``views/<slice_index>.view`` of jobs stored before packs;
the DICOM node's files (dicomnet/): ``dicom/<name>.dcm`` (received instances of a group, a
job's header copy for the patient module, its SR)."""


def valid_name(name: str) -> bool:
    return DERIVED_NAME.fullmatch(name) is not None


def valid_job_id(job_id: str) -> bool:
    """A single path component: never empty, never a parent, so a delete stays inside one job."""
    return bool(job_id) and "/" not in job_id and "\\" not in job_id and job_id not in (".", "..")


class Stored(NamedTuple):
    """A saved upload: its key (``<job_id>/upload.<ext>``, recorded on the job) and size."""

    key: str
    size: int


class Storage(ABC):
    """Uploads, one job per folder or key prefix; the only code that deletes them.

    Keys are relative (``<job_id>/upload.<ext>``), so a job row does not say
    which backend holds its upload.
    """

    keep_uploads: bool

    @abstractmethod
    def prepare(self) -> None:
        """Create what must exist before the first save (a local folder; S3: nothing)."""

    @abstractmethod
    def save(self, job_id: str, filename: str, stream: IO[bytes]) -> Stored:
        """Copy ``stream`` to ``<job_id>/upload.<ext>``; readers never see a partial upload."""

    def spool(self) -> IO[bytes] | None:
        """A new, empty file for a large upload still arriving, which :meth:`save` then
        takes as it is, without copying it; None where saving copies anyway (S3).

        The API spools large single uploads here (api/uploads.py) instead of in the
        temporary folder: a 60 MB study was otherwise written twice, the second
        time by :meth:`save` while the request waited. Closing the file deletes it
        unless :meth:`save` took it; :meth:`remove_stale_spool` removes what a
        killed process left.
        """
        return None

    def remove_stale_spool(self, older_than_s: float) -> int:
        """Delete spooled uploads last written more than ``older_than_s`` ago (a
        process killed mid-upload left them); how many. Nothing to do on S3."""
        return 0

    @abstractmethod
    def local_file(self, key: str) -> AbstractContextManager[Path]:
        """A local path holding the upload while the context lasts (the worker reads it)."""

    @abstractmethod
    def discard(self, job_id: str) -> None:
        """Remove everything stored for a job (the upload, and a partial one)."""

    @abstractmethod
    def job_ids(self, older_than_s: float) -> Iterator[str]:
        """Jobs that have something stored, last written more than ``older_than_s`` ago."""

    @abstractmethod
    def put(self, job_id: str, name: str, data: bytes) -> None:
        """Store a derived file of a job (a slice pack, a heat map) under ``name``."""

    @abstractmethod
    def get(self, job_id: str, name: str) -> bytes | None:
        """A derived file stored with :meth:`put`, or None."""

    def get_range(self, job_id: str, name: str, offset: int, length: int) -> bytes | None:
        """Up to ``length`` bytes of a derived file from ``offset`` (fewer at its end), or None.

        What a slice pack's reader uses (storage/packs.py). This default reads the
        whole file; the backends read only the range (a seek, an HTTP Range GET).
        """
        data = self.get(job_id, name)
        return None if data is None else data[offset : offset + length]

    @abstractmethod
    def delete(self, job_id: str, name: str) -> None:
        """Delete one derived file stored with :meth:`put` (nothing if it is not there)."""

    @abstractmethod
    def drop_upload(self, job_id: str) -> None:
        """Delete the job's upload (and a partial one), keeping its derived files."""

    def release(self, job_id: str) -> None:
        """The job has ended: drop its upload (patient data) unless KEEP_UPLOADS is set.

        Its slice images and heat maps stay until the job is deleted (by its
        owner, or by the sweeper after RETENTION_DAYS): they are the results.
        """
        if not self.keep_uploads:
            self.drop_upload(job_id)


@contextmanager
def scratch_file() -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file and a path that opens it, gone when the context ends.

    On Linux the file never has a name (an unlinked temporary file, opened
    again through ``/proc/self/fd/N``), so even a killed process leaves nothing
    on disk; elsewhere it is a named temporary file deleted when closed.
    """
    if PROC_FD.is_dir():
        with tempfile.TemporaryFile() as f:
            yield f, PROC_FD / str(f.fileno())
    else:
        with tempfile.NamedTemporaryFile() as f:
            yield f, Path(f.name)


@contextmanager
def readable_path(stream: IO[bytes]) -> Iterator[Path]:
    """A path with ``stream``'s bytes, for code that wants a file name (ingest).

    A request's upload over 500 KB is already a temporary file (werkzeug
    spools it to one): on Linux its ``/proc/self/fd`` path is used without a
    copy. A smaller one is still in memory: it is copied to an anonymous
    in-memory file (:func:`_memory_file`), not rolled over to a new file on
    disk (``fileno()`` would: an inode, a write and a delete for every single
    slice, about half a millisecond of the API's CPU on the 2-core VM).
    Anything else is copied to a :func:`scratch_file`. ``stream`` is left at
    its start either way.
    """
    in_memory = _in_memory(stream)
    fd = None if in_memory else _fileno(stream)
    if fd is not None and PROC_FD.is_dir():
        stream.flush()
        yield PROC_FD / str(fd)
        return
    with _memory_file() if in_memory else scratch_file() as (f, path):
        stream.seek(0)
        shutil.copyfileobj(stream, f, COPY_CHUNK)
        f.flush()
        stream.seek(0)
        yield path


def _in_memory(stream: IO[bytes]) -> bool:
    """A spooled upload werkzeug still holds in memory (and Linux can give a memory file)."""
    rolled = getattr(stream, "_rolled", True)  # SpooledTemporaryFile's own flag
    spooled = isinstance(stream, tempfile.SpooledTemporaryFile)
    return spooled and not rolled and PROC_FD.is_dir() and hasattr(os, "memfd_create")


@contextmanager
def _memory_file() -> Iterator[tuple[IO[bytes], Path]]:
    """An anonymous file in memory (``memfd_create``) and its ``/proc/self/fd`` path."""
    with os.fdopen(os.memfd_create("lungct-upload", os.MFD_CLOEXEC), "w+b") as f:
        yield f, PROC_FD / str(f.fileno())


def _fileno(stream: IO[bytes]) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
