"""Slice packs: one stored object per job per stored batch, instead of two files per slice.

For every readable slice the worker keeps what the result pages show: the
slice as the model saw it and its full-resolution viewing copy
(ingest/views.py). Stored as two files a slice (``images/<i>.png``,
``views/<i>.view``), the PNG encode and the two file creations cost about
1.3 ms of CPU a slice, as much as a third of the forward pass on a CPU host,
and two S3 PUTs a slice. A pack holds a whole batch's slices of one job and
is written with one :meth:`~storage.base.Storage.put`:

* the model-input pixels as raw 8-bit gray, height x width (the first channel
  of the model input, ``rint(x * 255)``): nothing is encoded while the model
  waits; the API PNG-encodes the few that someone looks at;
* the viewing copy's bytes as ingest/views.py made them.

Either may be absent (``STORE_SLICE_IMAGES`` / ``STORE_SLICE_VIEWS`` off).

Layout, little-endian: a 16-byte header (``LCPK``, version, entry size, entry
count, reserved), then one 36-byte entry per slice in slice order (slice
index, image height and width, pixels offset and length, view offset and
length; length 0: absent), then the members. A reader fetches the header and
the table with one ranged read (:data:`READ_AHEAD`; a second for a long
table) and then the one member it wants, so serving a slice never downloads
the pack.

A pack is never rewritten: its name is ``packs/<first slice index>-<random>.pack``,
new for every write, and each ``slice_predictions`` row names its pack
(``pack``). Two workers racing on one job after a takeover each write their
own pack, and the row that won the insert (rows are insert-or-ignore) points
at a pack that nothing replaces. The loser's pack is garbage until the job is
deleted with everything it stored.

Slices stored before packs (the row's ``pack`` is NULL) are still read from
their per-slice files (:func:`read_pixels`, :func:`read_view`).
"""

from __future__ import annotations

import io
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from storage.base import Storage

MAGIC = b"LCPK"
VERSION = 1
HEADER = struct.Struct("<4sHHII")  # magic, version, entry size, entry count, reserved
ENTRY = struct.Struct("<IIIQIQI")  # index, height, width, pixels off/len, view off/len
READ_AHEAD = 4096
"""Bytes of a pack's first ranged read: the header and the table of up to 113 slices
(a CPU worker's stored batch is at most 64), so a member costs two reads."""
MAX_PACK_BYTES = 64 * 1024**2
"""A job's slices of one stored batch go into several packs above this (a GPU worker's
large batches of DICOM viewing copies, 300 KiB each), so no pack needs a multipart upload
and none holds hundreds of MB in memory twice."""


@dataclass(frozen=True)
class PackSlice:
    """What a pack keeps of one slice: its model-input pixels and its viewing copy."""

    index: int
    pixels: np.ndarray | None  # (h, w) uint8
    view: bytes | None


class Entry(NamedTuple):
    """One slice's line in a pack's table (a length of 0: that member is absent)."""

    slice_index: int
    height: int
    width: int
    pixels_offset: int
    pixels_length: int
    view_offset: int
    view_length: int


def legacy_image_name(slice_index: int) -> str:
    """Where a slice's model-input image was stored before packs (a PNG)."""
    return f"images/{slice_index}.png"


def legacy_view_name(slice_index: int) -> str:
    """Where a slice's viewing copy was stored before packs."""
    return f"views/{slice_index}.view"


def new_name(first_index: int) -> str:
    """A pack name no other write uses (storage.base.DERIVED_NAME)."""
    return f"packs/{first_index}-{uuid.uuid4().hex[:12]}.pack"


def build(slices: Sequence[PackSlice]) -> bytes:
    """One pack holding ``slices`` (sorted by slice index in its table)."""
    ordered = sorted(slices, key=lambda s: s.index)
    offset = HEADER.size + ENTRY.size * len(ordered)
    table: list[bytes] = []
    members: list[bytes | memoryview] = []
    for s in ordered:
        height = width = pixels_offset = pixels_length = view_offset = view_length = 0
        if s.pixels is not None:
            pixels = _gray8(s.pixels)
            height, width = pixels.shape
            pixels_offset, pixels_length = offset, pixels.size
            members.append(pixels.reshape(-1).data)  # no copy
            offset += pixels_length
        if s.view:
            view_offset, view_length = offset, len(s.view)
            members.append(s.view)
            offset += view_length
        table.append(
            ENTRY.pack(
                s.index, height, width, pixels_offset, pixels_length, view_offset, view_length
            )
        )
    header = HEADER.pack(MAGIC, VERSION, ENTRY.size, len(ordered), 0)
    return b"".join([header, *table, *members])


def _gray8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or 0 in pixels.shape:
        raise ValueError(f"pack pixels must be 2-D uint8, not {pixels.dtype} {pixels.shape}")
    return np.ascontiguousarray(pixels)


def chunks(slices: Sequence[PackSlice], max_bytes: int = MAX_PACK_BYTES) -> list[list[PackSlice]]:
    """``slices`` in consecutive groups whose members stay under ``max_bytes`` (one pack each)."""
    out: list[list[PackSlice]] = []
    size = 0
    for s in slices:
        n = (0 if s.pixels is None else s.pixels.size) + len(s.view or b"")
        if not out or size + n > max_bytes:
            out.append([])
            size = 0
        out[-1].append(s)
        size += n
    return out


def write(
    storage: Storage, job_id: str, slices: Sequence[PackSlice], max_bytes: int = MAX_PACK_BYTES
) -> dict[int, str]:
    """Store a job's slices in new packs (one, unless over ``max_bytes``).

    Returns each slice index's pack name, for its row.
    """
    names: dict[int, str] = {}
    for group in chunks(slices, max_bytes):
        name = new_name(min(s.index for s in group))
        storage.put(job_id, name, build(group))
        names.update((s.index, name) for s in group)
    return names


def entries(data: bytes) -> list[Entry]:
    """The table of a pack whose first bytes (at least header and table) are ``data``."""
    count = _count(data)
    end = HEADER.size + count * ENTRY.size
    if len(data) < end:
        raise ValueError("truncated slice pack table")
    return [Entry(*e) for e in ENTRY.iter_unpack(data[HEADER.size : end])]


def _count(head: bytes) -> int:
    if len(head) < HEADER.size:
        raise ValueError("not a slice pack (too short)")
    magic, version, entry_size, count, _ = HEADER.unpack_from(head)
    if magic != MAGIC or version != VERSION or entry_size != ENTRY.size:
        raise ValueError("not a slice pack of this version")
    return int(count)


def find(storage: Storage, job_id: str, name: str, index: int) -> Entry | None:
    """The table entry of one slice in a stored pack (None: no such pack or slice)."""
    head = storage.get_range(job_id, name, 0, READ_AHEAD)
    if head is None:
        return None
    end = HEADER.size + _count(head) * ENTRY.size
    if len(head) < end:
        rest = storage.get_range(job_id, name, len(head), end - len(head))
        head += rest or b""
    return next((e for e in entries(head) if e.slice_index == index), None)


def _member(storage: Storage, job_id: str, name: str, offset: int, length: int) -> bytes:
    data = storage.get_range(job_id, name, offset, length)
    if data is None or len(data) != length:
        raise ValueError(f"slice pack {name!r} of job {job_id!r} is truncated")
    return data


def read_pixels(storage: Storage, job_id: str, pack: str | None, index: int) -> np.ndarray | None:
    """A slice's model-input pixels, (h, w) uint8, or None if none were kept.

    ``pack`` is the slice row's ``pack``; None reads the PNG a job stored before packs.
    The API, the worker's heat maps and the DICOM node's overlays all read through here.
    """
    if pack is None:
        png = storage.get(job_id, legacy_image_name(index))
        if png is None:
            return None
        return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.uint8)
    entry = find(storage, job_id, pack, index)
    if entry is None or not entry.pixels_length:
        return None
    data = _member(storage, job_id, pack, entry.pixels_offset, entry.pixels_length)
    return np.frombuffer(data, dtype=np.uint8).reshape(entry.height, entry.width)


def read_view(storage: Storage, job_id: str, pack: str | None, index: int) -> bytes | None:
    """A slice's viewing copy (ingest/views.py), or None if none was kept.

    ``pack`` as for :func:`read_pixels` (None: the file of a job stored before packs).
    """
    if pack is None:
        return storage.get(job_id, legacy_view_name(index))
    entry = find(storage, job_id, pack, index)
    if entry is None or not entry.view_length:
        return None
    return _member(storage, job_id, pack, entry.view_offset, entry.view_length)
