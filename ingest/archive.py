"""Reading zip uploads without trusting them.

Nothing is ever extracted to disk: members are streamed into memory with
:mod:`zipfile`, so names from the archive are never used as paths. Limits come
from :class:`config.settings.ArchiveLimits` and apply twice:

* before reading, on the central directory (member count, declared sizes,
  declared compression ratio): a cheap refusal at upload time;
* while reading, on the bytes actually produced by decompression, because
  declared sizes can lie: each member is opened with its declared size replaced
  by the per-member limit, so decompression stops at our limit, not theirs, and
  every byte counts against the archive-wide budget.

Slices are loaded from a thread pool; each thread opens its own ``ZipFile``
handle (a shared handle would serialise every read on one file position).
"""

from __future__ import annotations

import copy
import stat
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from config.settings import ArchiveLimits
from ingest.errors import InvalidUpload, LimitExceeded, SliceError
from ingest.sniff import is_hidden, name_skip_reason, unsafe_name_reason

# Small members cannot be bombs whatever their ratio (a 20 KB blank slice deflates
# 300:1); the ratio rule applies from this declared size up.
RATIO_MIN_BYTES = 1024**2
_MB = 1024**2


@dataclass(frozen=True)
class Skipped:
    """An archive member (or a whole series) left out of the job, and why."""

    source: str
    reason: str


class MemberTooLarge(LimitExceeded):
    """One member produced more bytes than the per-member limit."""


class ArchiveTooLarge(LimitExceeded):
    """The archive as a whole produced more bytes than the total limit."""


class Origin(Protocol):
    """Where slice bytes come from: a zip upload or a single uploaded file."""

    def open_stream(self, member: str) -> AbstractContextManager[Any]: ...

    def read(self, member: str) -> bytes: ...

    def close(self) -> None: ...


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open an uploaded zip, turning every kind of corruption into InvalidUpload."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise InvalidUpload("corrupt zip archive: its central directory cannot be read") from exc


def check_central_directory(zf: zipfile.ZipFile, limits: ArchiveLimits) -> None:
    """Refuse zip bombs and oversized archives from declared sizes, before any read."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise InvalidUpload(f"archive has {len(infos)} members; the limit is {limits.max_members}")
    total = sum(i.file_size for i in infos)
    if total > limits.max_uncompressed_bytes:
        raise InvalidUpload(
            f"archive would expand to {total // _MB} MB; "
            f"the limit is {limits.max_uncompressed_bytes // _MB} MB"
        )
    for number, info in enumerate(infos, 1):
        _check_member_declared(number, info, limits)


def _check_member_declared(number: int, info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    """Members are named by position: a path may name the patient (see ingest.redact)."""
    if info.file_size > limits.max_member_bytes:
        raise InvalidUpload(
            f"archive member #{number} would expand to {info.file_size // _MB} MB; "
            f"the per-file limit is {limits.max_member_bytes // _MB} MB"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size >= RATIO_MIN_BYTES and ratio > limits.max_compression_ratio:
        raise InvalidUpload(
            f"archive member #{number} is compressed {ratio:.0f}:1, over the "
            f"{limits.max_compression_ratio:.0f}:1 limit (possible zip bomb)"
        )


def scan_members(zf: zipfile.ZipFile) -> tuple[list[zipfile.ZipInfo], list[Skipped]]:
    """Split members into candidates (to look at) and skipped ones with a reason.

    Directories, ``__MACOSX/`` and dotfiles are dropped silently.
    """
    candidates: list[zipfile.ZipInfo] = []
    skipped: list[Skipped] = []
    for info in zf.infolist():
        reason = unsafe_name_reason(info.filename)
        if not reason and (info.is_dir() or is_hidden(info.filename)):
            continue
        reason = reason or member_skip_reason(info)
        if reason:
            skipped.append(Skipped(info.filename, reason))
        else:
            candidates.append(info)
    return candidates, skipped


def member_skip_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a member with a safe name is not even opened: symlink, encryption, file type."""
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link, not followed"
    if info.flag_bits & 0x1:
        return "encrypted member, cannot be read"
    return name_skip_reason(info.filename)


class CappedStream:
    """Read/seek/tell view of a member that fails once more than ``cap`` bytes come out."""

    def __init__(self, raw: IO[bytes], cap: int, on_read: Callable[[int], None]) -> None:
        self._raw, self._cap, self._on_read = raw, cap, on_read

    def read(self, size: int | None = -1) -> bytes:
        """Read at most ``size`` bytes, never more than one past the cap."""
        pos = self._raw.tell()
        room = self._cap + 1 - pos
        size = room if size is None or size < 0 else min(size, room)
        data = self._raw.read(max(size, 0))
        end = pos + len(data)
        if end > self._cap:
            raise MemberTooLarge(f"file expands beyond the {self._cap // _MB} MB per-file limit")
        self._on_read(end)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        """Seek from the start or the current position (the true end is unknown)."""
        if whence == 2:
            raise OSError("seek from the end is not supported on an archive member")
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        """Current position in the decompressed member."""
        return self._raw.tell()

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Seekable (backwards seeks restart decompression)."""
        return True


class _Budget:
    """Archive-wide count of decompressed bytes; each member counted once, at its most."""

    def __init__(self, limit: int) -> None:
        self._limit, self._total = limit, 0
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def charge(self, member: str, upto: int) -> None:
        with self._lock:
            grown = upto - self._seen.get(member, 0)
            if grown <= 0:
                return
            self._seen[member] = upto
            self._total += grown
            if self._total > self._limit:
                raise ArchiveTooLarge(
                    f"archive expands beyond the {self._limit // _MB} MB total limit"
                )


class ZipOrigin:
    """One zip upload shared by all its slices; each thread keeps its own handle."""

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        self.path, self.limits = path, limits
        self._budget = _Budget(limits.max_uncompressed_bytes)
        self._local = threading.local()
        self._handles: list[zipfile.ZipFile] = []
        self._lock = threading.Lock()

    def _zip(self) -> zipfile.ZipFile:
        zf = getattr(self._local, "zip", None)
        if zf is None:
            zf = self._local.zip = zipfile.ZipFile(self.path)
            with self._lock:
                self._handles.append(zf)
        return zf

    def close(self) -> None:
        """Close every thread's handle (they also close when the plan is collected)."""
        with self._lock:
            handles, self._handles = self._handles, []
        for zf in handles:
            zf.close()

    @contextmanager
    def open_stream(self, member: str) -> Iterator[CappedStream]:
        """Stream one member, capped by the per-member limit and charged to the budget."""
        zf = self._zip()
        capped = copy.copy(zf.getinfo(member))
        # Our limit, not the declared size, bounds decompression (+2 keeps zipfile
        # from reaching its own end-of-member CRC check before our cap trips).
        capped.file_size = self.limits.max_member_bytes + 2
        with zf.open(capped) as raw:
            yield CappedStream(raw, self.limits.max_member_bytes, self._charger(member))

    def read(self, member: str) -> bytes:
        """Whole member; the last one per thread is kept (frames of one file)."""
        last = getattr(self._local, "last", None)
        if last is not None and last[0] == member:
            return last[1]
        with self.open_stream(member) as stream:
            data = stream.read()
        declared = self._zip().getinfo(member).file_size
        if len(data) != declared:
            raise SliceError(
                f"archive member holds {len(data)} bytes but declares {declared} (corrupt archive)"
            )
        self._local.last = (member, data)
        return data

    def _charger(self, member: str) -> Callable[[int], None]:
        return lambda upto: self._budget.charge(member, upto)


class FileOrigin:
    """A single uploaded file (its size is bounded by the API's upload limit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @contextmanager
    def open_stream(self, member: str) -> Iterator[BinaryIO]:
        """The uploaded file itself; ``member`` is only its display name."""
        with self.path.open("rb") as fp:
            yield fp

    def close(self) -> None:
        """Nothing is held open between reads."""

    def read(self, member: str) -> bytes:
        """Whole file, kept per thread (the frames of a multi-frame file share it)."""
        data = getattr(self._local, "data", None)
        if data is None:
            data = self._local.data = self.path.read_bytes()
        return data
