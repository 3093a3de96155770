"""Synthetic DICOM, PNG/JPEG and zip uploads for tests (no real data needed).

Every dataset carries fake patient identifiers (``PATIENT_NAME``...) so tests can
check that none of them leaves ingest. Pixel values encode the instance number
(``hu_base + instance``) so a test can tell which slice was loaded.
"""

from __future__ import annotations

import copy
import io
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042-SECRET"
ACCESSION = "ACC-777-SECRET"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def _base(
    *, series_uid: str, modality: str, image_type: Sequence[str], size: int, sop_class: str
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = ACCESSION
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_uid.rsplit(".", 1)[-1]) % 1000
    ds.SeriesDescription = f"synthetic {modality}"
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    return ds


def ct_slice(
    *,
    series_uid: str,
    instance: int,
    z: float | None,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    photometric: str = "MONOCHROME2",
    hu: float | None = None,
    size: int = 16,
    orientation: Sequence[float] = AXIAL,
) -> Dataset:
    """One single-frame slice; pixels are ``hu`` (default ``-1000 + instance``) in HU."""
    ds = _base(
        series_uid=series_uid,
        modality=modality,
        image_type=image_type,
        size=size,
        sop_class=CTImageStorage,
    )
    ds.PhotometricInterpretation = photometric
    ds.InstanceNumber = instance
    if z is not None:
        ds.ImagePositionPatient = [-100.0, -100.0, z]
        ds.ImageOrientationPatient = list(orientation)
    value = -1000 + instance if hu is None else hu
    stored = np.full((size, size), value + 1024, dtype=np.int16)
    stored[0, 0] = 2000  # one bright pixel, so windowing is not trivially flat
    ds.PixelData = stored.tobytes()
    return ds


def multiframe(*, series_uid: str, zs: Sequence[float], size: int = 16) -> Dataset:
    """Enhanced-CT-like multi-frame: per-frame positions, shared orientation and rescale.

    Frame ``i`` has HU ``-900 + 10 * i``; ``zs`` gives each frame's z (any order).
    """
    ds = _base(
        series_uid=series_uid,
        modality="CT",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        size=size,
        sop_class=EnhancedCTImageStorage,
    )
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(zs)
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([_item(ImageOrientationPatient=list(AXIAL))])
    shared.PixelValueTransformationSequence = DicomSequence(
        [_item(RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU")]
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(
        [
            _item(PlanePositionSequence=DicomSequence([_item(ImagePositionPatient=[0, 0, z])]))
            for z in zs
        ]
    )
    frames = [np.full((size, size), -900 + 10 * i + 1024, np.int16) for i in range(len(zs))]
    ds.PixelData = np.stack(frames).tobytes()
    return ds


def _item(**values: object) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def compressed(ds: Dataset, transfer_syntax: str) -> Dataset:
    """A compressed copy (RLE and JPEG 2000 encoders ship with pydicom/pylibjpeg)."""
    out = copy.deepcopy(ds)
    out.compress(transfer_syntax)
    return out


def to_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble + DICM + file meta)."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def series(series_uid: str, zs: Sequence[float], **kwargs: object) -> list[Dataset]:
    """A series whose instance numbers follow ``zs`` (instance i+1 at zs[i])."""
    return [
        ct_slice(series_uid=series_uid, instance=i + 1, z=z, **kwargs) for i, z in enumerate(zs)
    ]  # type: ignore[arg-type]


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (16, 12), value: int = 128) -> bytes:
    """A small grayscale PNG or JPEG."""
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format=fmt)
    return buf.getvalue()


def write_zip(
    path: Path,
    members: Iterable[tuple[str | zipfile.ZipInfo, bytes]],
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """Write members (names or prepared ZipInfo) into a zip at ``path``."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def patch_zip(
    path: Path, member: str, *, flag_bits: int = 0, declared_size: int | None = None
) -> None:
    """Rewrite a member's headers in place: OR ``flag_bits`` in, replace the declared size.

    Used to craft archives that zipfile would never write: an "encrypted" member
    (flag bit 0x1) or one whose declared uncompressed size lies.
    """
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo(member).header_offset
    data = bytearray(path.read_bytes())
    name = member.encode()
    _patch_header(data, offset, 6, 22, flag_bits, declared_size)  # local file header
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        n = int.from_bytes(data[pos + 28 : pos + 30], "little")
        if bytes(data[pos + 46 : pos + 46 + n]) == name:
            _patch_header(data, pos, 8, 24, flag_bits, declared_size)  # central directory
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))


def _patch_header(
    data: bytearray, pos: int, flag_at: int, size_at: int, flag_bits: int, size: int | None
) -> None:
    flags = int.from_bytes(data[pos + flag_at : pos + flag_at + 2], "little") | flag_bits
    data[pos + flag_at : pos + flag_at + 2] = flags.to_bytes(2, "little")
    if size is not None:
        data[pos + size_at : pos + size_at + 4] = size.to_bytes(4, "little")


def huge_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (the pixel data does not match)."""
    import struct
    import zlib

    data = bytearray(image_bytes("PNG", (4, 4)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def symlink_info(name: str) -> zipfile.ZipInfo:
    """ZipInfo for a Unix symbolic link member (mode S_IFLNK in external_attr)."""
    import stat

    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def preambleless(ds: Dataset) -> bytes:
    """The dataset without preamble, DICM prefix or file meta (old ACR-NEMA style)."""
    out = copy.deepcopy(ds)
    del out.file_meta
    buf = io.BytesIO()
    dcmwrite(buf, out, implicit_vr=True, little_endian=True)
    return buf.getvalue()
