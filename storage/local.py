"""Uploads in a local (or shared network) folder: one folder per job."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from storage.base import COPY_CHUNK, Storage, Stored, stored_name, valid_job_id, valid_name

PARTIAL_SUFFIX = ".part"
SPOOL_FOLDER = ".incoming"
"""Where large uploads arrive (:meth:`LocalStorage.spool`): inside the storage folder, so
that moving one into its job's folder is a rename on the same file system. Its name
cannot be a job ID (job IDs are UUIDs), and :meth:`LocalStorage.job_ids` skips it."""


class SpoolFile(io.BufferedRandom):
    """A spooled upload's file: closing it deletes it, unless :meth:`LocalStorage.save`
    has moved it into a job's folder by then."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path, "x+"))  # a new file; its mode follows the umask
        self.path = path

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.path.unlink(missing_ok=True)


class LocalStorage(Storage):
    """Job folders under ``root`` (STORAGE_DIR, or a folder path in STORAGE_URL)."""

    def __init__(self, root: Path, keep_uploads: bool = False) -> None:
        self.root = root
        self.keep_uploads = keep_uploads

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, job_id: str, filename: str, stream: IO[bytes]) -> Stored:
        """Written as ``*.part`` and renamed once complete: a crash mid-copy leaves
        a partial file that the sweeper recognises and removes. A file from
        :meth:`spool` is complete already: it is moved, not copied.
        """
        name = stored_name(filename)
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=False)
        path = folder / name
        if self._moved(stream, path):
            return Stored(f"{job_id}/{name}", path.stat().st_size)
        partial = folder / f"{name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
        with partial.open("wb") as out:
            shutil.copyfileobj(stream, out, COPY_CHUNK)
        os.replace(partial, path)
        return Stored(f"{job_id}/{name}", path.stat().st_size)

    def spool(self) -> SpoolFile:
        folder = self.root / SPOOL_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        return SpoolFile(folder / f"{uuid.uuid4().hex}{PARTIAL_SUFFIX}")

    def _moved(self, stream: IO[bytes], path: Path) -> bool:
        """Move a file of :meth:`spool` to ``path``; False (copy it) for any other
        stream, or where the move fails."""
        if not (isinstance(stream, SpoolFile) and stream.path.parent == self.root / SPOOL_FOLDER):
            return False
        stream.flush()
        try:
            os.replace(stream.path, path)
        except OSError:
            return False
        return True

    def remove_stale_spool(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root / SPOOL_FOLDER):
                with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed

    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        """The stored file itself (no copy)."""
        yield self.root / key

    def discard(self, job_id: str) -> None:
        if valid_job_id(job_id):
            shutil.rmtree(self.root / job_id, ignore_errors=True)

    def drop_upload(self, job_id: str) -> None:
        if not valid_job_id(job_id):
            return
        folder = self.root / job_id
        for path in folder.glob("upload*"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # still holds images: keep it
            folder.rmdir()

    def put(self, job_id: str, name: str, data: bytes) -> None:
        if not (valid_job_id(job_id) and valid_name(name)):
            raise ValueError(f"not a derived file of a job: {name!r}")
        path = self.root / job_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        partial.write_bytes(data)
        os.replace(partial, path)

    def delete(self, job_id: str, name: str) -> None:
        if valid_job_id(job_id) and valid_name(name):
            (self.root / job_id / name).unlink(missing_ok=True)

    def get(self, job_id: str, name: str) -> bytes | None:
        if not (valid_job_id(job_id) and valid_name(name)):
            return None
        try:
            return (self.root / job_id / name).read_bytes()
        except FileNotFoundError:
            return None

    def get_range(self, job_id: str, name: str, offset: int, length: int) -> bytes | None:
        if not (valid_job_id(job_id) and valid_name(name)):
            return None
        try:
            with (self.root / job_id / name).open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return None

    def job_ids(self, older_than_s: float) -> Iterator[str]:
        """Job folders last changed more than ``older_than_s`` ago."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - older_than_s
        for entry in os.scandir(self.root):
            if entry.name == SPOOL_FOLDER:  # uploads still arriving, not a job
                continue
            try:
                if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    yield entry.name
            except FileNotFoundError:  # removed meanwhile
                continue
