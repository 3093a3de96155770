"""plan_upload and load() on hostile or messy archives: skip, refuse or fail one slice."""

from __future__ import annotations

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from config.settings import Settings
from ingest import InvalidUpload, SliceError, UploadPlan, plan_upload
from tests.fixtures_dicom import (
    ct_slice,
    huge_png,
    image_bytes,
    patch_zip,
    symlink_info,
    to_bytes,
    write_zip,
)

# Sources named as given: these tests are about archive handling, and PNG/JPEG-only
# archives would otherwise get STORE_SOURCE_PATHS=none (tests/test_ingest_privacy.py).
SETTINGS = Settings(store_source_paths="redacted")
SERIES = "1.2.3.4.2"


def _slice(instance: int) -> bytes:
    return to_bytes(ct_slice(series_uid=SERIES, instance=instance, z=float(-instance)))


def _good() -> list[tuple[str, bytes]]:
    return [(f"study/s2/{i}.dcm", _slice(i)) for i in (1, 2, 3)]


def _reasons(plan: UploadPlan) -> dict[str, str]:
    return {s.source: s.reason for s in plan.skipped}


def _plan(tmp_path: Path, members: list, settings: Settings = SETTINGS, **kw: int) -> UploadPlan:
    return plan_upload(write_zip(tmp_path / "up.zip", members, **kw), settings)


def test_unsafe_names_are_skipped_and_the_rest_planned(tmp_path: Path) -> None:
    bad = ["../evil.dcm", "/abs/evil.dcm", "C:\\evil.dcm", "a\\..\\..\\evil.dcm"]
    plan = _plan(tmp_path, _good() + [(name, _slice(9)) for name in bad])
    assert [s.instance_number for s in plan.slices] == [1, 2, 3]
    reasons = _reasons(plan)
    assert all(reasons[name].startswith("unsafe member name") for name in bad)
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_symlink_encrypted_and_nested_members_are_skipped(tmp_path: Path) -> None:
    inner = write_zip(tmp_path / "inner.zip", _good()).read_bytes()
    members = [
        *_good(),
        (symlink_info("study/link.dcm"), b"/etc/passwd"),
        ("study/nested.zip", inner),
        ("study/sneaky.dcm", inner),  # zip magic under a DICOM name
        ("study/secret.dcm", _slice(7)),
    ]
    path = write_zip(tmp_path / "up.zip", members)
    patch_zip(path, "study/secret.dcm", flag_bits=0x1)
    plan = plan_upload(path, SETTINGS)
    assert len(plan.slices) == 3
    reasons = _reasons(plan)
    assert reasons["study/link.dcm"] == "symbolic link, not followed"
    assert reasons["study/nested.zip"] == "nested archive, not opened"
    assert reasons["study/sneaky.dcm"] == "nested archive, not opened"
    assert reasons["study/secret.dcm"] == "encrypted member, cannot be read"


def test_indexes_documents_and_metadata(tmp_path: Path) -> None:
    extra = [
        ("DICOMDIR", b"x" * 200),
        ("README.TXT", b"hello"),
        ("__MACOSX/study/._1.dcm", b"x"),
        (".DS_Store", b"x"),
        ("study/", b""),
        ("study/viewer.exe", b"MZ"),
        ("study/unknown.bin", b"random bytes that are not an image" * 10),
    ]
    plan = _plan(tmp_path, _good() + extra)
    reasons = _reasons(plan)
    assert reasons["DICOMDIR"] == "DICOMDIR index, not an image"
    assert reasons["README.TXT"] == "not an image (.txt file)"
    assert reasons["study/viewer.exe"] == "not an image (.exe file)"
    assert reasons["study/unknown.bin"] == "not a DICOM, PNG or JPEG file"
    assert not any("__MACOSX" in s or "DS_Store" in s for s in reasons)
    assert len(plan.slices) == 3


def test_corrupt_dicom_among_good_ones(tmp_path: Path) -> None:
    header_only = _slice(4)[:132] + b"\x02\x00\x10\x00UI\xff\xff" + b"garbage" * 10
    truncated_pixels = _slice(5)[:-100]
    members = [*_good(), ("study/s2/4.dcm", header_only), ("study/s2/5.dcm", truncated_pixels)]
    plan = _plan(tmp_path, members)
    assert _reasons(plan)["study/s2/4.dcm"] == "corrupt DICOM header"
    by_instance = {s.instance_number: s for s in plan.slices}
    assert sorted(by_instance) == [1, 2, 3, 5]
    with pytest.raises(SliceError, match="cannot decode slice"):
        by_instance[5].load()
    assert by_instance[1].load().shape == (16, 16)


def _noise_jpeg(size: int = 64) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def test_truncated_jpeg_is_a_slice_error(tmp_path: Path) -> None:
    jpeg = _noise_jpeg()
    members = [("a.jpg", jpeg), ("b.jpg", jpeg[: len(jpeg) // 2]), ("c.png", image_bytes())]
    plan = _plan(tmp_path, members)
    assert [s.source for s in plan.slices] == ["a.jpg", "b.jpg", "c.png"]
    with pytest.raises(SliceError, match="truncated"):
        plan.slices[1].load()
    assert plan.slices[0].load().shape == (64, 64)
    assert plan.slices[2].load().dtype == np.uint8


def test_image_header_past_the_first_read_is_still_read(tmp_path: Path) -> None:
    """The plan checks an image from one read of its first 64 KiB; a header that runs
    longer (a 100 kB text chunk before the pixels) is read from the member again,
    while a corrupt header within that read is skipped at once."""
    from PIL.PngImagePlugin import PngInfo

    from ingest.upload import IMAGE_HEAD_BYTES

    info = PngInfo()
    info.add_text("Comment", "x" * (IMAGE_HEAD_BYTES + 40_000))
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30), 7, dtype=np.uint8)).save(buf, format="PNG", pnginfo=info)
    corrupt = b"\xff\xd8\xff" + b"\x00" * 500
    plan = _plan(tmp_path, [("long.png", buf.getvalue()), ("bad.jpg", corrupt)])
    assert [s.source for s in plan.slices] == ["long.png"]
    assert plan.slices[0].load().shape == (20, 30)
    assert _reasons(plan) == {"bad.jpg": "corrupt image: PNG/JPEG header cannot be read"}


def test_images_in_natural_order(tmp_path: Path) -> None:
    names = ["scan/slice_10.png", "scan/slice_2.png", "scan/slice_1.jpg", "scan/Slice_3.PNG"]
    plan = _plan(
        tmp_path, [(n, image_bytes("JPEG" if n.endswith("jpg") else "PNG")) for n in names]
    )
    assert [s.source for s in plan.slices] == [names[2], names[1], names[3], names[0]]
    assert [s.index for s in plan.slices] == [0, 1, 2, 3]
    assert all(s.series_uid is None and s.slice_position is None for s in plan.slices)
    image = plan.slices[0].load()
    assert image.dtype == np.uint8 and image.shape == (12, 16)


def test_images_next_to_dicom_are_left_out(tmp_path: Path) -> None:
    plan = _plan(tmp_path, [*_good(), ("study/preview.png", image_bytes())])
    assert len(plan.slices) == 3
    assert "only the DICOM series are used" in _reasons(plan)["study/preview.png"]


def test_image_over_pixel_limit_is_skipped(tmp_path: Path) -> None:
    settings = Settings(max_image_pixels=1000 * 1000, store_source_paths="redacted")
    plan = _plan(tmp_path, [("a.png", image_bytes()), ("b.png", huge_png(1500, 1000))], settings)
    assert [s.source for s in plan.slices] == ["a.png"]
    assert "too large" in _reasons(plan)["b.png"]


def test_zip_bomb_is_refused_at_plan_time_too(tmp_path: Path) -> None:
    members = [*_good(), ("study/zeros.dcm", b"\x00" * (4 * 1024**2))]
    with pytest.raises(InvalidUpload, match="possible zip bomb"):
        _plan(tmp_path, members, compression=zipfile.ZIP_DEFLATED)


def _lying_zip(tmp_path: Path, extra_pixels: int) -> Path:
    """A DICOM slice padded with ``extra_pixels`` bytes of zeros, declaring 100 KB."""
    ds = ct_slice(series_uid=SERIES, instance=1, z=0.0)
    ds.PixelData = ds.PixelData + b"\x00" * extra_pixels
    path = write_zip(tmp_path / "up.zip", [("lie.dcm", to_bytes(ds))], zipfile.ZIP_DEFLATED)
    patch_zip(path, "lie.dcm", declared_size=100_000)
    return path


def test_lying_declared_size_is_stopped_while_streaming(tmp_path: Path) -> None:
    path = _lying_zip(tmp_path, 8 * 1024**2)  # 8 MB of zeros behind a 100 KB claim
    settings = Settings(max_member_mb=1)
    plan = plan_upload(path, settings)  # the header is small: planned
    with pytest.raises(SliceError, match="beyond the 1 MB per-file limit"):
        plan.slices[0].load()


def test_lying_declared_size_within_limit_is_corrupt(tmp_path: Path) -> None:
    plan = plan_upload(_lying_zip(tmp_path, 300_000), SETTINGS)
    with pytest.raises(SliceError, match="declares 100000"):
        plan.slices[0].load()


def test_total_budget_counts_real_bytes(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "up.zip",
        [(f"{i}.dcm", to_bytes(_padded(i))) for i in (1, 2, 3)],
        zipfile.ZIP_DEFLATED,
    )
    for i in (1, 2, 3):
        patch_zip(path, f"{i}.dcm", declared_size=1000)
    plan = plan_upload(path, Settings(max_uncompressed_mb=1, max_member_mb=1))
    errors = []
    for s in plan.slices:
        try:
            s.load()
        except SliceError as exc:
            errors.append(str(exc))
    assert any("1 MB total limit" in e for e in errors)


def _padded(instance: int) -> Dataset:
    ds = ct_slice(series_uid=SERIES, instance=instance, z=float(instance))
    ds.PixelData = ds.PixelData + b"\x00" * 500_000
    return ds


def test_no_decodable_slices(tmp_path: Path) -> None:
    members = [("a.dcm", b"not dicom at all, just text" * 20), ("DICOMDIR", b"x")]
    with pytest.raises(InvalidUpload, match=r"no decodable slices: .*not a DICOM, PNG or JPEG"):
        _plan(tmp_path, members)


def test_single_image_plan(tmp_path: Path) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes(image_bytes("JPEG", (40, 30), 200))
    plan = plan_upload(path, SETTINGS, filename="chest.jpg")
    assert plan.kind == "image" and plan.series == [] and plan.skipped == []
    (only,) = plan.slices
    assert (only.index, only.source, only.series_uid, only.frame) == (0, "chest.jpg", None, None)
    image = only.load()
    assert image.shape == (30, 40) and image.dtype == np.uint8 and abs(int(image.mean()) - 200) < 3


def test_single_text_file_plan(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_text("just text " * 50)
    with pytest.raises(InvalidUpload, match="not a DICOM/PNG/JPEG/zip file"):
        plan_upload(path, SETTINGS)


def test_loads_are_thread_safe(tmp_path: Path) -> None:
    members = [(f"s/{i}.dcm", _slice(i)) for i in range(1, 25)]
    # Slices differ by 1 HU near -1000: the lung window tells them apart, 150/500 would not.
    lung = Settings(dicom_window_center=-600, dicom_window_width=1500)
    with _plan(tmp_path, members, lung, compression=zipfile.ZIP_DEFLATED) as plan:
        serial = [s.load() for s in plan.slices]
        with ThreadPoolExecutor(max_workers=4) as pool:
            parallel = list(pool.map(lambda s: s.load(), plan.slices))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel, strict=True))
    assert len({int(a[5, 5]) for a in serial}) > 1  # different slices, not one cached image


def test_frame_count_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    """A tiny DICOM claiming millions of frames is refused before per-frame work."""
    import time

    from pydicom import dcmread

    from ingest import InvalidUpload, inspect_upload, plan_upload
    from tests.fixtures_dicom import ct_slice, to_bytes

    ds = dcmread(io.BytesIO(to_bytes(ct_slice(series_uid="1.2.3.9", instance=1, z=0.0))))
    ds.NumberOfFrames = 2_000_000
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    single = tmp_path / "bomb.dcm"
    single.write_bytes(buf.getvalue())
    start = time.perf_counter()
    with pytest.raises(InvalidUpload, match="frames"):
        inspect_upload(single, "bomb.dcm", Settings().limits)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bomb.dcm", buf.getvalue())
        zf.writestr("ok.dcm", to_bytes(ct_slice(series_uid="1.2.3.9", instance=2, z=1.0)))
    with plan_upload(archive, Settings()) as plan:
        assert [k.reason for k in plan.skipped if "frames" in k.reason]
        assert len(plan.slices) == 1
    assert time.perf_counter() - start < 5


def test_corrupt_lzma_member_is_skipped_not_fatal(tmp_path: Path) -> None:
    from ingest import plan_upload
    from tests.fixtures_dicom import ct_slice, to_bytes

    good = to_bytes(ct_slice(series_uid="1.2.3.8", instance=1, z=0.0))
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.dcm", good)
        zf.writestr("bad.dcm", good, compress_type=zipfile.ZIP_LZMA)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("bad.dcm")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 4
    data[start : start + 40] = b"\xff" * 40  # wreck the LZMA stream
    archive.write_bytes(bytes(data))
    with plan_upload(archive, Settings()) as plan:
        assert [s.source for s in plan.slices] == ["good.dcm"]
        assert any(k.source == "bad.dcm" for k in plan.skipped)
