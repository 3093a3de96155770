"""Whether a DICOM file's pixel data is there and whole, judged without decoding it.

The upload check (``inspect_upload``) refuses at once what a header read
already shows; a file whose pixel data is missing or cut short used to pass it
and fail as a job a moment later (issue 21). Reading up to the Pixel Data
element and its length says enough for the native (uncompressed) transfer
syntaxes; compressed pixel data is judged when it is decoded, in the job.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ImplicitVRLittleEndian

PIXEL_DATA = (0x7FE0, 0x0010)
UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_VRS = (b"OB", b"OW", b"UN")


def pixel_data_problem(fp: BinaryIO, *, force: bool = False) -> str | None:
    """Why this file's pixel data cannot give an image, or None when it looks whole."""
    fp.seek(0, 2)
    size = fp.tell()
    fp.seek(0)
    ds = dcmread(fp, stop_before_pixels=True, force=force, defer_size=4096)
    start = fp.tell()  # pydicom stops at the start of the Pixel Data element
    syntax = _transfer_syntax(ds)
    if not syntax.is_little_endian:
        return None  # retired big-endian syntax: left to the decoder
    element = _element_header(fp.read(12), implicit=syntax.is_implicit_VR)
    if element is None:
        return "no pixel data"
    length, header_bytes = element
    if length == UNDEFINED_LENGTH:
        return None  # encapsulated (compressed) frames: judged when decoded
    if size - start - header_bytes < length:
        return "truncated file: the pixel data is cut short"
    expected = _native_bytes(ds)
    if expected and length < expected:
        return f"pixel data holds {length} bytes; the image needs {expected}"
    return None


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else ImplicitVRLittleEndian


def _element_header(head: bytes, *, implicit: bool) -> tuple[int, int] | None:
    """(value length, header size) of the Pixel Data element at ``head``, else None."""
    if len(head) < 8 or struct.unpack("<HH", head[:4]) != PIXEL_DATA:
        return None
    if implicit:
        return struct.unpack("<I", head[4:8])[0], 8
    if head[4:6] in LONG_VRS:
        if len(head) < 12:
            return None
        return struct.unpack("<I", head[8:12])[0], 12
    return struct.unpack("<H", head[6:8])[0], 8


def _native_bytes(ds: Dataset) -> int:
    """Bytes the uncompressed frames need (0 when the header does not say)."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (AttributeError, TypeError, ValueError):
        return 0
    return rows * columns * samples * frames * bits // 8 if bits >= 8 else 0
