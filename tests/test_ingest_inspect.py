"""inspect_upload: what the API accepts or refuses before a job exists."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from config.settings import ArchiveLimits
from ingest import InvalidUpload, inspect_upload
from tests.fixtures_dicom import (
    ct_slice,
    huge_png,
    image_bytes,
    patch_zip,
    preambleless,
    symlink_info,
    to_bytes,
    write_zip,
)

LIMITS = ArchiveLimits()


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _slice_bytes(instance: int = 1) -> bytes:
    return to_bytes(ct_slice(series_uid="1.2.3.4.1", instance=instance, z=float(instance)))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.png", image_bytes("PNG")),
        ("a.jpg", image_bytes("JPEG")),
        ("a.jpeg", image_bytes("JPEG")),
        ("slice.dcm", _slice_bytes()),
        ("IM000001", _slice_bytes()),  # PACS exports often have no extension
        ("old.dcm", preambleless(ct_slice(series_uid="1.2.3.4.1", instance=1, z=0.0))),
        ("misnamed.png", _slice_bytes()),  # content decides, not the extension
    ],
)
def test_single_images_are_image_jobs(tmp_path: Path, name: str, data: bytes) -> None:
    assert inspect_upload(_file(tmp_path, name, data), name, LIMITS) == "image"


def test_zip_is_a_study(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "s.zip", [("a/1.dcm", _slice_bytes()), ("a/2.dcm", _slice_bytes(2))]
    )
    assert inspect_upload(path, "s.zip", LIMITS) == "study"


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidUpload, match="empty"):
        inspect_upload(_file(tmp_path, "x.dcm", b""), "x.dcm", LIMITS)


@pytest.mark.parametrize("name", ["notes.dcm", "notes.png", "notes.zip", "notes"])
def test_text_file_with_any_name_is_refused(tmp_path: Path, name: str) -> None:
    path = _file(tmp_path, name, b"hello, this is not an image\n" * 20)
    with pytest.raises(InvalidUpload, match="not a DICOM/PNG/JPEG/zip file"):
        inspect_upload(path, name, LIMITS)


def test_other_archive_formats_are_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "s.gz", gzip.compress(_slice_bytes()))
    with pytest.raises(InvalidUpload, match=r"upload a \.zip"):
        inspect_upload(path, "s.gz", LIMITS)


def test_corrupt_zip(tmp_path: Path) -> None:
    path = _file(tmp_path, "s.zip", b"PK\x03\x04" + b"\x00" * 200)
    with pytest.raises(InvalidUpload, match="corrupt zip"):
        inspect_upload(path, "s.zip", LIMITS)


def test_truncated_zip(tmp_path: Path) -> None:
    good = write_zip(tmp_path / "good.zip", [("1.dcm", _slice_bytes())]).read_bytes()
    path = _file(tmp_path, "s.zip", good[: len(good) // 2])
    with pytest.raises(InvalidUpload, match="corrupt zip"):
        inspect_upload(path, "s.zip", LIMITS)


def test_zip_bomb_by_compression_ratio(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "bomb.zip",
        [("1.dcm", _slice_bytes()), ("big.dcm", b"\x00" * (4 * 1024**2))],
        zipfile.ZIP_DEFLATED,
    )
    with pytest.raises(InvalidUpload, match="possible zip bomb"):
        inspect_upload(path, "bomb.zip", LIMITS)


def test_too_many_members(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "s.zip", [(f"{i}.dcm", _slice_bytes(i)) for i in range(4)])
    with pytest.raises(InvalidUpload, match="4 members; the limit is 3"):
        inspect_upload(path, "s.zip", ArchiveLimits(max_members=3))


def test_declared_total_over_limit(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "s.zip", [(f"{i}.dcm", b"x" * 600_000) for i in range(2)])
    with pytest.raises(InvalidUpload, match="would expand to 1 MB; the limit is 1 MB"):
        inspect_upload(path, "s.zip", ArchiveLimits(max_uncompressed_bytes=1024**2))


def test_declared_member_over_limit(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "s.zip", [("big.dcm", b"x" * (2 * 1024**2))])
    with pytest.raises(InvalidUpload, match="per-file limit is 1 MB"):
        inspect_upload(path, "s.zip", ArchiveLimits(max_member_bytes=1024**2))


def test_zip_of_only_encrypted_members(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "s.zip", [("1.dcm", _slice_bytes())])
    patch_zip(path, "1.dcm", flag_bits=0x1)
    with pytest.raises(InvalidUpload, match="encrypted"):
        inspect_upload(path, "s.zip", LIMITS)


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../evil.dcm", "path traversal"),
        ("a/../../evil.dcm", "path traversal"),
        ("/etc/evil.dcm", "absolute path"),
        ("C:\\Windows\\evil.dcm", "absolute path"),
        ("..\\evil.dcm", "path traversal"),
    ],
)
def test_zip_of_only_unsafe_names(tmp_path: Path, member: str, reason: str) -> None:
    path = write_zip(tmp_path / "s.zip", [(member, _slice_bytes())])
    with pytest.raises(InvalidUpload, match=reason):
        inspect_upload(path, "s.zip", LIMITS)


def test_zip_of_only_a_symlink(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "s.zip", [(symlink_info("1.dcm"), b"/etc/passwd")])
    with pytest.raises(InvalidUpload, match="symbolic link"):
        inspect_upload(path, "s.zip", LIMITS)


def test_zip_of_only_a_nested_zip(tmp_path: Path) -> None:
    inner = write_zip(tmp_path / "inner.zip", [("1.dcm", _slice_bytes())]).read_bytes()
    path = write_zip(tmp_path / "s.zip", [("inner.zip", inner)])
    with pytest.raises(InvalidUpload, match="nested archive"):
        inspect_upload(path, "s.zip", LIMITS)


def test_zip_without_candidate_members(tmp_path: Path) -> None:
    members = [("DICOMDIR", b"x"), ("README.txt", b"x"), ("__MACOSX/._1.dcm", b"x"), ("a/", b"")]
    path = write_zip(tmp_path / "s.zip", members)
    with pytest.raises(InvalidUpload, match="no image or DICOM files"):
        inspect_upload(path, "s.zip", LIMITS)


def test_empty_zip(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "s.zip", [])
    with pytest.raises(InvalidUpload, match="no image or DICOM files"):
        inspect_upload(path, "s.zip", LIMITS)


@pytest.mark.parametrize("pixels", [5000 * 5000, 20000 * 20000])
def test_png_over_pixel_limit(tmp_path: Path, pixels: int) -> None:
    # Both Pillow's warning band (limit..2x limit) and its error band are refused.
    side = int(pixels**0.5)
    path = _file(tmp_path, "big.png", huge_png(side, side))
    with pytest.raises(InvalidUpload, match="too large"):
        inspect_upload(path, "big.png", ArchiveLimits(max_image_pixels=4000 * 4000))


def test_corrupt_png(tmp_path: Path) -> None:
    data = bytearray(image_bytes("PNG", (32, 32)))
    data[40:60] = b"\xff" * 20  # breaks a chunk CRC
    path = _file(tmp_path, "x.png", bytes(data))
    with pytest.raises(InvalidUpload, match="corrupt image"):
        inspect_upload(path, "x.png", LIMITS)


def test_dicom_over_pixel_limit(tmp_path: Path) -> None:
    ds = ct_slice(series_uid="1.2.3.4.1", instance=1, z=0.0)
    ds.Rows = ds.Columns = 9000  # header only: refused before any pixel is read
    path = _file(tmp_path, "big.dcm", to_bytes(ds))
    with pytest.raises(InvalidUpload, match="too large"):
        inspect_upload(path, "big.dcm", LIMITS)


def test_dicom_without_image(tmp_path: Path) -> None:
    path = Path(get_testdata_file("test-SR.dcm"))
    with pytest.raises(InvalidUpload, match=r"not an image \(structured report\)"):
        inspect_upload(path, "report.dcm", LIMITS)


def test_corrupt_dicom(tmp_path: Path) -> None:
    data = _slice_bytes()[:132] + b"\xff" * 300
    with pytest.raises(InvalidUpload, match="corrupt DICOM"):
        inspect_upload(_file(tmp_path, "x.dcm", data), "x.dcm", LIMITS)


# --- issue 21, item 11: a single DICOM file the job would refuse is refused at upload


def _refused(tmp_path: Path, ds_or_bytes: object, match: str) -> None:
    data = ds_or_bytes if isinstance(ds_or_bytes, bytes) else to_bytes(ds_or_bytes)  # type: ignore[arg-type]
    with pytest.raises(InvalidUpload, match=match):
        inspect_upload(_file(tmp_path, "x.dcm", data), "x.dcm", LIMITS)


def test_single_mr_file_is_refused_at_upload(tmp_path: Path) -> None:
    _refused(tmp_path, ct_slice(series_uid="1.2.3.4.1", instance=1, z=0.0, modality="MR"),
             r"modality MR is not one of the allowed \(CT\)")  # fmt: skip


def test_single_localizer_is_refused_at_upload(tmp_path: Path) -> None:
    ds = ct_slice(series_uid="1.2.3.4.1", instance=1, z=0.0,
                  image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))  # fmt: skip
    _refused(tmp_path, ds, "localizer image")


def test_dicom_without_pixel_data_is_refused_at_upload(tmp_path: Path) -> None:
    ds = ct_slice(series_uid="1.2.3.4.1", instance=1, z=0.0)
    del ds.PixelData
    _refused(tmp_path, ds, "no pixel data")


@pytest.mark.parametrize("cut", [1, 100, 500])
def test_truncated_dicom_is_refused_at_upload(tmp_path: Path, cut: int) -> None:
    data = _slice_bytes()
    _refused(tmp_path, data[:-cut], "cut short")


def test_short_pixel_data_is_refused_at_upload(tmp_path: Path) -> None:
    ds = ct_slice(series_uid="1.2.3.4.1", instance=1, z=0.0)
    ds.PixelData = ds.PixelData[:64]  # the element is whole, the image is not
    _refused(tmp_path, ds, "the image needs 512")


def test_whole_ct_slice_still_passes(tmp_path: Path) -> None:
    assert inspect_upload(_file(tmp_path, "x.dcm", _slice_bytes()), "x.dcm", LIMITS) == "image"
