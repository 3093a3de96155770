"""DICOM headers, series selection, slice order and the display pixel pipeline.

Headers are read with ``stop_before_pixels`` and a fixed list of tags
(:data:`HEADER_TAGS`): only UIDs, numbers, positions, modality and the series
description leave this module. Patient identifiers (:data:`ingest.redact.IDENTIFYING_TAGS`)
are parsed only when the caller passes a collector, and only so that member paths
and messages can be scrubbed (see :mod:`ingest.privacy`); they never go on a header.

Display window. Every DICOM slice becomes the 8-bit image the classifier was
trained on: stored values -> Modality LUT (RescaleSlope/Intercept, i.e. HU for
CT) -> linear window ``[center - width/2, center + width/2]`` -> 0..255, and
MONOCHROME1 is inverted so that dense tissue is always bright, as a viewer shows
it. Center and width come from settings (DICOM_WINDOW_CENTER/WIDTH, default
150/500, the training-matched window). Which window reproduces the training
images matters more than its name: the IQ-OTH/NCCD slices are 8-bit JPEGs
exported by the hospital, and they were NOT exported with a lung window. Lungs
and fat are black, soft tissue grey and speckled, bone white. Comparing their
grey-level histogram with the real Lung-PET-CT-Dx study windowed over a grid of
center/width pairs (total-variation distance, lower is closer) gives 0.063 at
150/500, 0.069 at 100/400, 0.090 at the mediastinal 60/350 and 0.887 at the lung
window -600/1500; the fit pins the lower edge near -100 HU (see ingest/README.md,
"Windowing").
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ingest.errors import SliceError
from ingest.redact import IDENTIFYING_TAGS, Identifiers
from ingest.series_rules import FileFacts, SeriesRules, orientation_name
from ingest.sniff import natural_key
from ingest.views import hu_view, to_int16

HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
    "SeriesDescription", "Modality", "ImageType", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient", "SliceThickness", "Rows", "Columns", "NumberOfFrames",
    "SamplesPerPixel",
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
]  # fmt: skip
_NON_IMAGE_MODALITIES = {
    "SR": "structured report", "SEG": "segmentation", "RTSTRUCT": "RT structure set",
    "PR": "presentation state", "KO": "key object selection", "RTPLAN": "RT plan",
    "RTRECORD": "RT record", "REG": "registration", "DOC": "document", "PLAN": "plan",
}  # fmt: skip
_NON_IMAGE_SOP_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.66": "segmentation or registration",
    "1.2.840.10008.5.1.4.1.1.481.": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
}
# Deflated datasets inflate without a bound inside pydicom: refuse them unread.
DEFLATED_TS = b"1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class DicomHeader:
    """What planning needs from one DICOM file; no patient identifiers."""

    study_uid: str
    series_uid: str
    sop_uid: str | None
    sop_class: str
    series_number: int | None
    description: str | None
    modality: str
    image_type: tuple[str, ...]
    instance_number: int | None
    rows: int
    columns: int
    frames: int
    positions: tuple[float | None, ...]
    orientation: tuple[float, ...] | None
    transfer_syntax: str
    slice_thickness: float | None = None


@dataclass(frozen=True)
class DicomSlice:
    """One slice (a file, or a frame of a multi-frame file) before final ordering."""

    member: str
    header: DicomHeader
    frame: int | None
    position: float | None


class TooManyFrames(ValueError):
    """NumberOfFrames beyond the limit: refused before any per-frame work."""


def read_header(
    fp: BinaryIO,
    *,
    force: bool = False,
    identifiers: Identifiers | None = None,
    max_frames: int | None = None,
) -> DicomHeader:
    """Parse the header of one file (no pixel data, only :data:`HEADER_TAGS`).

    With ``identifiers``, the patient-identifying values are read too and learned
    by it, so the caller can scrub names and messages; they never go on the header.
    """
    tags = HEADER_TAGS if identifiers is None else [*HEADER_TAGS, *IDENTIFYING_TAGS]
    ds = dcmread(fp, stop_before_pixels=True, specific_tags=tags, force=force)
    if force and "SOPClassUID" not in ds and "Rows" not in ds:
        raise ValueError("not a DICOM dataset")
    if identifiers is not None:
        identifiers.learn(ds)
    return _header(ds, max_frames)


def _header(ds: Dataset, max_frames: int | None = None) -> DicomHeader:
    """The planning fields of a parsed header.

    The frame count is checked first: a 1 KB file can claim millions of frames, and
    positions are read per frame.
    """
    frames = max(_int(ds.get("NumberOfFrames")) or 1, 1)
    if max_frames is not None and frames > max_frames:
        raise TooManyFrames(f"DICOM file has {frames} frames; the limit is {max_frames}")
    orientation = _orientation(ds)
    return DicomHeader(
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_uid=str(ds.SOPInstanceUID) if "SOPInstanceUID" in ds else None,
        sop_class=str(ds.get("SOPClassUID", "")),
        series_number=_int(ds.get("SeriesNumber")),
        description=str(ds.SeriesDescription) if ds.get("SeriesDescription") else None,
        modality=str(ds.get("Modality", "")).upper(),
        image_type=tuple(str(v).upper() for v in _multi(ds.get("ImageType"))),
        instance_number=_int(ds.get("InstanceNumber")),
        rows=_int(ds.get("Rows")) or 0,
        columns=_int(ds.get("Columns")) or 0,
        frames=frames,
        positions=_positions(ds, frames, orientation),
        orientation=orientation,
        transfer_syntax=_transfer_syntax(ds),
        slice_thickness=_float(ds.get("SliceThickness")),
    )


def exclusion_reason(h: DicomHeader, rules: SeriesRules, max_pixels: int) -> str | None:
    """Why this file is not a slice for the model, or None to keep it.

    In order: :func:`image_problem` (non-image objects such as SR, SEG, RTSTRUCT,
    PR; no pixel matrix; undecodable transfer syntax; too large), then the
    model's series rules (:mod:`ingest.series_rules`; by default Modality in
    ALLOWED_MODALITIES and no ImageType value in SKIP_IMAGE_TYPES).
    """
    return image_problem(h, max_pixels) or rules.problem(facts(h))


def facts(h: DicomHeader) -> FileFacts:
    """What series rules read from a header."""
    return FileFacts(h.modality, h.image_type, h.slice_thickness, orientation_name(h.orientation))


def image_problem(h: DicomHeader, max_pixels: int) -> str | None:
    """Why this file cannot give a slice at all, whatever the selection rule."""
    kind = _non_image_kind(h)
    if kind:
        return f"not an image ({kind})"
    if not (h.rows and h.columns):
        return "no pixel data"
    problem = transfer_syntax_problem(h.transfer_syntax)
    if problem:
        return problem
    if h.rows * h.columns > max_pixels:
        return f"image too large ({h.columns}x{h.rows} > {max_pixels} pixels)"
    return None


def transfer_syntax_problem(ts: str) -> str | None:
    """None when pixel data in this transfer syntax can be decoded here."""
    uid = UID(ts)
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    return None if available else f"unsupported transfer syntax ({uid.name})"


def order_series(files: Iterable[tuple[str, DicomHeader]]) -> list[DicomSlice]:
    """Expand frames and sort one series into anatomical order.

    Position along the slice normal (cross product of the ImageOrientationPatient
    row and column vectors, dotted with ImagePositionPatient) when every slice has
    one and the orientation is shared; otherwise InstanceNumber; otherwise the
    natural order of member names. Sorted by position the run is ascending, then
    flipped if needed so InstanceNumber ascends too, as a PACS viewer numbers it.
    """
    slices = [s for member, h in files for s in _expand(member, h)]
    if _positions_usable(slices):
        slices.sort(key=lambda s: (s.position, _inst(s), natural_key(s.member), s.frame or 0))
        first, last = slices[0].header.instance_number, slices[-1].header.instance_number
        if first is not None and last is not None and first > last:
            slices.reverse()
    elif all(s.header.instance_number is not None for s in slices):
        slices.sort(key=lambda s: (_inst(s), natural_key(s.member), s.frame or 0))
    else:
        slices.sort(key=lambda s: (natural_key(s.member), s.frame or 0))
    return slices


_last_parsed = threading.local()


def _parsed(data: bytes) -> Dataset:
    """The dataset of ``data``, parsed once per thread for all frames of one file.

    The archive keeps each thread's last member as the same bytes object, so frame
    after frame of a multi-frame file reuses one parse instead of re-reading the
    whole file per frame (which made frame decoding quadratic in the frame count).
    """
    last = getattr(_last_parsed, "value", None)
    if last is not None and last[0] is data:
        return last[1]
    ds = dcmread(BytesIO(data), force=True)
    _last_parsed.value = (data, ds)
    return ds


def decode_dicom(
    data: bytes, frame: int | None, center: float, width: float, max_pixels: int
) -> np.ndarray:
    """Decode one slice to the display image (uint8, H x W); see the module docstring."""
    return _decode(data, frame, center, width, max_pixels, keep_values=False)[0]


def decode_dicom_view(
    data: bytes, frame: int | None, center: float, width: float, max_pixels: int
) -> tuple[np.ndarray, bytes | None]:
    """One decode, two results: the display image and its viewing copy (ingest/views.py).

    The viewing copy holds the modality values (HU for CT) as int16; None for
    colour images, which have no modality values to window.
    """
    image, values, monochrome1 = _decode(data, frame, center, width, max_pixels, keep_values=True)
    if values is None:
        return image, None
    return image, hu_view(values, center, width, monochrome1)


def _decode(
    data: bytes, frame: int | None, center: float, width: float, max_pixels: int, keep_values: bool
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(display image, int16 modality values if asked and grey, MONOCHROME1)."""
    ds = _parsed(data)
    if "PixelData" not in ds:
        raise SliceError("DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise SliceError(f"image too large ({cols}x{rows} > {max_pixels} pixels)")
    _ensure_transfer_syntax(ds)
    problem = transfer_syntax_problem(ds.file_meta.TransferSyntaxUID)
    if problem:
        raise SliceError(problem)
    arr = pixel_array(ds, index=frame)
    if arr.ndim == 3:
        return _color_to_gray(arr), None, False
    out = display(arr, ds, frame, center, width)
    monochrome1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if monochrome1:
        out = 255 - out
    return out, modality_values(arr, ds, frame) if keep_values else None, monochrome1


def modality_values(arr: np.ndarray, ds: Dataset, frame: int | None) -> np.ndarray:
    """Stored values -> modality values (HU for CT) as int16, integer math when it can."""
    if "ModalityLUTSequence" in ds:
        return to_int16(np.asarray(apply_modality_lut(arr, ds)))
    slope, intercept = _rescale(ds, frame)
    if arr.dtype.kind in "iu" and slope == 1.0 and float(intercept).is_integer():
        return to_int16(arr.astype(np.int32) + int(intercept))
    return to_int16(arr.astype(np.float32) * np.float32(slope) + np.float32(intercept))


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: ``center - width/2`` -> 0 and ``center + width/2`` -> 255."""
    lo = center - width / 2.0
    scaled = (values.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def display(
    arr: np.ndarray, ds: Dataset, frame: int | None, center: float, width: float
) -> np.ndarray:
    """Stored values -> modality values (HU for CT) -> window, as one 8-bit result.

    Integer pixels (the usual case) go through a cached lookup table over the whole
    16-bit range, which is several times faster than float math per pixel.
    """
    if "ModalityLUTSequence" in ds:
        return window(np.asarray(apply_modality_lut(arr, ds), dtype=np.float32), center, width)
    slope, intercept = _rescale(ds, frame)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        lut = _window_lut(arr.dtype.str, slope, intercept, center, width)
        index = arr.view(np.uint16) if arr.dtype.itemsize == 2 else arr.view(np.uint8)
        return lut[index]
    return window(arr.astype(np.float32) * np.float32(slope) + np.float32(intercept), center, width)


@lru_cache(maxsize=32)
def _window_lut(
    dtype: str, slope: float, intercept: float, center: float, width: float
) -> np.ndarray:
    """Display value for every bit pattern of ``dtype``, indexed by its unsigned view."""
    kind = np.dtype(dtype)
    unsigned = np.dtype(f"u{kind.itemsize}")
    patterns = np.arange(2 ** (8 * kind.itemsize), dtype=unsigned)
    stored = patterns.view(kind).astype(np.float32)
    lut = window(stored * np.float32(slope) + np.float32(intercept), center, width)
    lut.flags.writeable = False
    return lut


def _rescale(ds: Dataset, frame: int | None) -> tuple[float, float]:
    """RescaleSlope/Intercept: top level, else per-frame, else shared functional groups."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0))
    return _functional_rescale(ds, frame)


def _functional_rescale(ds: Dataset, frame: int | None) -> tuple[float, float]:
    """Rescale from PixelValueTransformationSequence (per-frame first, then shared)."""
    for group in (_frame_group(ds, frame), _shared_group(ds)):
        item = _first(group, "PixelValueTransformationSequence") if group else None
        if item is not None and "RescaleSlope" in item:
            return float(item.RescaleSlope), float(item.get("RescaleIntercept", 0.0))
    return 1.0, 0.0


def _color_to_gray(arr: np.ndarray) -> np.ndarray:
    """RGB (pydicom already converted YBR) to luma, the same weights Pillow's "L" uses."""
    rgb = arr.astype(np.float32)
    if arr.dtype != np.uint8:
        rgb *= 255.0 / max(float(rgb.max()), 1.0)
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Files without file meta (no preamble) get the syntax pydicom read them with."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = ts if little else ExplicitVRBigEndian


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return str(meta.TransferSyntaxUID)
    implicit, little = ds.original_encoding
    if not little:
        return str(ExplicitVRBigEndian)
    return str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)


def _expand(member: str, h: DicomHeader) -> list[DicomSlice]:
    if h.frames <= 1:
        return [DicomSlice(member, h, None, h.positions[0])]
    return [DicomSlice(member, h, i, h.positions[i]) for i in range(h.frames)]


def _positions_usable(slices: Sequence[DicomSlice]) -> bool:
    """Positions order a series only if all exist and share one orientation."""
    orientations = [o for s in slices if (o := s.header.orientation) is not None]
    if len(orientations) < len(slices) or any(s.position is None for s in slices):
        return False
    ref = np.asarray(orientations[0])
    return all(np.allclose(o, ref, atol=1e-3) for o in orientations)


def _inst(s: DicomSlice) -> int:
    return s.header.instance_number if s.header.instance_number is not None else 0


def _non_image_kind(h: DicomHeader) -> str | None:
    if h.modality in _NON_IMAGE_MODALITIES:
        return _NON_IMAGE_MODALITIES[h.modality]
    for prefix, kind in _NON_IMAGE_SOP_PREFIXES.items():
        if h.sop_class.startswith(prefix):
            return kind
    return None


def _orientation(ds: Dataset) -> tuple[float, ...] | None:
    """ImageOrientationPatient: top level, else the functional groups (enhanced)."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        for group in (_shared_group(ds), _frame_group(ds, 0)):
            item = _first(group, "PlaneOrientationSequence") if group else None
            if item is not None and "ImageOrientationPatient" in item:
                iop = item.ImageOrientationPatient
                break
    values = _floats(iop)
    return tuple(values) if values and len(values) == 6 else None


def _positions(
    ds: Dataset, frames: int, orientation: tuple[float, ...] | None
) -> tuple[float | None, ...]:
    """Position of each frame along the slice normal (None where unknown)."""
    if frames <= 1:
        return (_project(_floats(ds.get("ImagePositionPatient")), orientation),)
    out: list[float | None] = []
    for i in range(frames):
        item = _first(_frame_group(ds, i), "PlanePositionSequence")
        ipp = item.get("ImagePositionPatient") if item is not None else None
        out.append(_project(_floats(ipp), orientation))
    return tuple(out)


def _project(ipp: list[float] | None, orientation: tuple[float, ...] | None) -> float | None:
    if not ipp or len(ipp) != 3 or orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        return None
    return float(np.dot(ipp, normal))


def _frame_group(ds: Dataset, frame: int | None) -> Dataset | None:
    seq = ds.get("PerFrameFunctionalGroupsSequence")
    if frame is None or not seq or frame >= len(seq):
        return None
    return seq[frame]


def _shared_group(ds: Dataset) -> Dataset | None:
    seq = ds.get("SharedFunctionalGroupsSequence")
    return seq[0] if seq else None


def _first(group: Dataset | None, keyword: str) -> Dataset | None:
    seq = group.get(keyword) if group is not None else None
    return seq[0] if seq else None


def _multi(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _floats(value: Any) -> list[float] | None:
    try:
        values = [float(v) for v in _multi(value)]
    except (TypeError, ValueError):
        return None
    return values if values and all(np.isfinite(values)) else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    values = _floats(value) if value not in (None, "") else None
    return values[0] if values else None
