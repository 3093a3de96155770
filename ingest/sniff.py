"""Recognise file types by content and archive members by name.

Uploads are untrusted: the filename extension is only a hint, so the type is
decided from magic bytes. Member names decide what is even looked at (metadata
folders, indexes, documents) and which names are unsafe to act on.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

HEAD_BYTES = 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_ARCHIVE_MAGICS = (b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"BZh", b"\xfd7zXZ\x00")
# Group 0002 (file meta) or 0008 (identifying) tag, little endian: how a DICOM
# stream without the 128-byte preamble starts.
_PREAMBLELESS_STARTS = (b"\x02\x00", b"\x08\x00")

ARCHIVE_SUFFIXES = frozenset(
    {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".jar", ".zst"}
)
NON_IMAGE_SUFFIXES = frozenset(
    {
        ".txt", ".xml", ".json", ".pdf", ".htm", ".html", ".csv", ".md", ".log", ".ini",
        ".inf", ".cfg", ".exe", ".dll", ".bat", ".sh", ".js", ".css", ".db", ".url",
        ".lnk", ".rtf", ".doc", ".docx", ".xls", ".xlsx", ".gif", ".bmp", ".tif", ".tiff",
        ".nfo", ".sig", ".md5", ".sha1", ".sha256", ".iso", ".dat",
    }
)  # fmt: skip


OTHER_IMAGE_SUFFIXES = frozenset({".gif", ".bmp", ".tif", ".tiff", ".webp", ".heic"})


def sniff(head: bytes) -> str:
    """Type of a stream from its first bytes.

    Returns ``"dicom"``, ``"dicom?"`` (no preamble: the caller confirms by
    parsing), ``"png"``, ``"jpeg"``, ``"zip"``, ``"archive"`` (another archive
    format) or ``"unknown"``.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(ZIP_MAGICS):
        return "zip"
    if head.startswith(_ARCHIVE_MAGICS) or head[257:262] == b"ustar":
        return "archive"
    if len(head) >= 8 and head[:2] in _PREAMBLELESS_STARTS:
        return "dicom?"
    return "unknown"


def unsafe_name_reason(name: str) -> str | None:
    """Why a member name must not be trusted, or None when it is a plain relative path."""
    if "\x00" in name:
        return "unsafe member name (NUL byte)"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "unsafe member name (absolute path)"
    if ".." in norm.split("/"):
        return "unsafe member name (path traversal '..')"
    return None


def is_hidden(name: str) -> bool:
    """macOS resource forks and dotfiles: never images, skipped silently."""
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    return any(p == "__MACOSX" or (p.startswith(".") and p not in (".", "..")) for p in parts)


def name_skip_reason(name: str) -> str | None:
    """Short reason to skip a member by its name alone, or None to look at its content."""
    base = PurePosixPath(name.replace("\\", "/"))
    if base.name.upper() == "DICOMDIR":
        return "DICOMDIR index, not an image"
    suffix = base.suffix.lower()
    if suffix in ARCHIVE_SUFFIXES:
        return "nested archive, not opened"
    if suffix in NON_IMAGE_SUFFIXES:
        return f"not an image ({suffix} file)"
    if suffix in OTHER_IMAGE_SUFFIXES:
        return f"unsupported image format ({suffix}); use PNG, JPEG or DICOM"
    return None


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that orders ``slice_2`` before ``slice_10``."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))
