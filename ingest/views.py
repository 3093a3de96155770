"""Viewing copies of slices: what the slice viewer shows at full resolution.

The worker keeps one per readable slice (``STORE_SLICE_VIEWS``) next to the
model-input image, under the same retention (the job's storage, deleted with
the job). They are made from the same decode as the model input, so a slice is
never decoded twice, and they are cheap (docs/review.md, "Cost"):

* DICOM: the modality values (HU for CT) as raw little-endian int16 after a
  24-byte header (:func:`hu_view`). No header element of the file goes in:
  only the pixel grid, the window the model used and whether the file was
  MONOCHROME1. It is stored as it is: compressing it cost 4.5 ms of CPU a
  512x512 slice (zlib level 1 with run-length matching), more than the model's
  forward pass, for every slice of every study, while a person looks at a few.
  The API compresses a copy when it is asked for (:func:`deflated`) and sends
  it with ``Content-Encoding: deflate``, so the browser inflates it and reads
  an ``Int16Array`` (16-bit PNG values cannot be read back from a canvas).
  Copies stored compressed by earlier versions are sent as they are.
* PNG/JPEG: the uploaded bytes, not re-encoded, with the chunks and segments
  that may carry text (PNG ``tEXt``/``iTXt``/``zTXt``/``eXIf``, JPEG ``APPn``
  except JFIF/Adobe colour, and ``COM``) dropped (:func:`image_view`): an
  identifier written into an image comment must not outlive the upload.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

HU_MAGIC = b"HU16"
HU_HEADER = struct.Struct("<4sIIIff")  # magic, rows, columns, flags, window center, width
HU_MONOCHROME1 = 1
ZLIB_LEVEL = 1
ZLIB_STRATEGY = zlib.Z_RLE
"""How the API compresses a HU view it sends: level 1 with run-length matching only, on
the real CT study 4.5 ms and 308 KiB per 512x512 slice, against 7.3 ms / 300 KiB for
plain level 1 and 33 ms / 293 KiB for level 6 (docs/review.md, "Cost"); any zlib
inflater reads it."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEEP = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"sRGB", b"cHRM"})
JPEG_KEEP_APP = {0xE0: b"JFIF\x00", 0xEE: b"Adobe"}  # APP0 JFIF, APP14 Adobe (colour transform)


def hu_view(hu: np.ndarray, center: float, width: float, monochrome1: bool) -> bytes:
    """The 2-D int16 modality values after their header, uncompressed (see the module)."""
    rows, cols = hu.shape
    header = HU_HEADER.pack(
        HU_MAGIC, rows, cols, HU_MONOCHROME1 if monochrome1 else 0, center, width
    )
    return header + np.ascontiguousarray(hu, dtype="<i2").tobytes()


def deflated(data: bytes) -> bytes:
    """A HU view as the API sends it (``Content-Encoding: deflate``): compressed now when it
    was stored raw, as it is when an earlier version stored it compressed."""
    if not data.startswith(HU_MAGIC):
        return data
    packer = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, 15, 8, ZLIB_STRATEGY)
    return packer.compress(data) + packer.flush()


def read_hu_view(data: bytes) -> tuple[np.ndarray, dict[str, float | bool]]:
    """The pixels and header of a HU view, stored raw or sent compressed (tests and tools)."""
    raw = data if data.startswith(HU_MAGIC) else zlib.decompress(data)
    magic, rows, cols, flags, center, width = HU_HEADER.unpack_from(raw)
    if magic != HU_MAGIC:
        raise ValueError("not a HU view")
    pixels = np.frombuffer(raw, dtype="<i2", offset=HU_HEADER.size, count=rows * cols)
    meta = {"center": center, "width": width, "monochrome1": bool(flags & HU_MONOCHROME1)}
    return pixels.reshape(rows, cols), meta


def to_int16(values: np.ndarray) -> np.ndarray:
    """Modality values rounded and clipped to int16 (CT spans about -1024..3071 HU)."""
    if values.dtype.kind in "iu" and values.dtype.itemsize <= 2 and values.dtype != np.uint16:
        return values.astype("<i2", copy=False)
    rounded = np.rint(values) if values.dtype.kind == "f" else values
    return np.clip(rounded, -32768, 32767).astype("<i2")


def image_view(data: bytes, pixels: np.ndarray) -> bytes:
    """The uploaded PNG/JPEG without its text-bearing parts; else ``pixels`` as a PNG."""
    try:
        if data.startswith(PNG_SIGNATURE):
            return _png_without_text(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_without_text(data)
    except (ValueError, struct.error):
        pass
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _png_without_text(data: bytes) -> bytes:
    """The PNG's critical and colour chunks only (no text, EXIF or private chunks)."""
    out = [PNG_SIGNATURE]
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ValueError("truncated PNG chunk")
        if kind in PNG_KEEP:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


def _jpeg_without_text(data: bytes) -> bytes:
    """The JPEG without COM and APPn segments (except JFIF and Adobe colour markers)."""
    out = [data[:2]]
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("JPEG marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if marker == 0xDA:  # start of scan: the rest is image data
            out.append(data[pos:])
            return b"".join(out)
        keep = marker not in JPEG_KEEP_APP and not (0xE0 <= marker <= 0xEF or marker == 0xFE)
        if (
            marker in JPEG_KEEP_APP
            and data[pos + 4 : pos + 4 + len(JPEG_KEEP_APP[marker])] == (JPEG_KEEP_APP[marker])
        ):
            keep = True
        if keep:
            out.append(data[pos:end])
        pos = end
    raise ValueError("JPEG without a scan")
