"""DICOM: series selection, slice order, pixel pipeline, compressed syntaxes, privacy."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

from config.settings import Settings
from ingest import InvalidUpload, SliceError, UploadPlan, plan_upload
from ingest.dicom import window
from ingest.plan import MemberReader
from tests.fixtures_dicom import (
    ACCESSION,
    PATIENT_ID,
    PATIENT_NAME,
    compressed,
    ct_slice,
    multiframe,
    preambleless,
    series,
    to_bytes,
    write_zip,
)

SETTINGS = Settings()
LUNG = Settings(dicom_window_center=-600, dicom_window_width=1500)
ALL_MODALITIES = Settings(
    allowed_modalities=("CT", "MR", "NM", "OT", "US"),
    dicom_window_center=1000,
    dicom_window_width=3000,
)


def _zip(tmp_path: Path, datasets: list, name: str = "s{}/{}.dcm") -> Path:
    """Zip datasets in shuffled order under per-series folders."""
    members = [
        (name.format(ds.SeriesNumber, ds.SOPInstanceUID[-6:]), to_bytes(ds)) for ds in datasets
    ]
    random.Random(7).shuffle(members)
    return write_zip(tmp_path / "study.zip", members)


def _plan(tmp_path: Path, datasets: list, settings: Settings = SETTINGS) -> UploadPlan:
    return plan_upload(_zip(tmp_path, datasets), settings)


def test_two_shuffled_series_in_anatomical_order(tmp_path: Path) -> None:
    # Series 3 was acquired head-first (z falls as InstanceNumber rises), series 2 feet-first.
    first = series("1.2.3.4.2", [10.0, 15.0, 20.0, 25.0, 30.0])
    second = series("1.2.3.4.3", [-124.0, -129.0, -134.0, -139.0])
    plan = _plan(tmp_path, second + first)
    assert [s.index for s in plan.slices] == list(range(9))
    assert [s.series_uid for s in plan.slices] == ["1.2.3.4.2"] * 5 + ["1.2.3.4.3"] * 4
    assert [s.instance_number for s in plan.slices] == [1, 2, 3, 4, 5, 1, 2, 3, 4]
    assert [s.slice_position for s in plan.slices[:5]] == [10.0, 15.0, 20.0, 25.0, 30.0]
    assert [s.slice_position for s in plan.slices[5:]] == [-124.0, -129.0, -134.0, -139.0]
    assert [(i.series_uid, i.slice_count, i.modality) for i in plan.series] == [
        ("1.2.3.4.2", 5, "CT"),
        ("1.2.3.4.3", 4, "CT"),
    ]
    assert plan.skipped == []


def test_position_beats_wrong_instance_numbers(tmp_path: Path) -> None:
    datasets = series("1.2.3.4.2", [0.0, 5.0, 10.0])
    datasets[0].InstanceNumber, datasets[2].InstanceNumber = 3, 1  # scrambled numbering
    plan = _plan(tmp_path, datasets)
    positions = [s.slice_position for s in plan.slices]
    assert positions in ([0.0, 5.0, 10.0], [10.0, 5.0, 0.0])


def test_position_along_the_slice_normal(tmp_path: Path) -> None:
    # Sagittal slices: normal = row x column = (0,1,0) x (0,0,-1) = -x; z is the same for all.
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    datasets = series("1.2.3.4.2", [0.0, 0.0, 0.0], orientation=sagittal)
    for ds, x in zip(datasets, [30.0, 10.0, 20.0], strict=True):
        ds.ImagePositionPatient = [x, -50.0, 0.0]
    plan = _plan(tmp_path, datasets)
    assert [s.slice_position for s in plan.slices] == [-30.0, -20.0, -10.0]
    assert [s.instance_number for s in plan.slices] == [1, 3, 2]


def test_falls_back_to_instance_number_then_name(tmp_path: Path) -> None:
    no_position = [ct_slice(series_uid="1.2.3.4.2", instance=i, z=None) for i in (3, 1, 2)]
    plan = _plan(tmp_path, no_position)
    assert [s.instance_number for s in plan.slices] == [1, 2, 3]
    assert all(s.slice_position is None for s in plan.slices)

    bare = [ct_slice(series_uid="1.2.3.4.2", instance=i, z=None) for i in (1, 2, 3)]
    for ds in bare:
        del ds.InstanceNumber
    members = [(f"IM{n}", to_bytes(ds)) for n, ds in zip((10, 2, 1), bare, strict=True)]
    plan = plan_upload(write_zip(tmp_path / "n.zip", members), SETTINGS)
    assert [s.source for s in plan.slices] == ["IM1", "IM2", "IM10"]


def test_localizer_and_non_ct_series_are_skipped(tmp_path: Path) -> None:
    axial = series("1.2.3.4.2", [0.0, 5.0])
    scout = series("1.2.3.4.1", [0.0], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    mr = series("1.2.3.4.5", [0.0, 5.0], modality="MR")
    plan = _plan(tmp_path, axial + scout + mr)
    assert [s.series_uid for s in plan.slices] == ["1.2.3.4.2"] * 2
    reasons = {s.source: s.reason for s in plan.skipped}
    assert reasons["series 1.2.3.4.1"].startswith("localizer image (ImageType LOCALIZER)")
    assert reasons["series 1.2.3.4.5"] == ("modality MR is not one of the allowed (CT) (2 files)")
    notes = {i.series_uid: (i.slice_count, i.note) for i in plan.series}
    assert notes["1.2.3.4.1"][0] == 0 and notes["1.2.3.4.1"][1].startswith("skipped: localizer")
    assert notes["1.2.3.4.2"] == (2, None)


def test_selection_rule_is_configurable(tmp_path: Path) -> None:
    mr = series("1.2.3.4.5", [0.0, 5.0], modality="MR")
    scout = series("1.2.3.4.1", [0.0], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    settings = Settings(allowed_modalities=("CT", "MR"), skip_image_types=())
    assert len(_plan(tmp_path, mr + scout, settings).slices) == 3


def test_only_skipped_series_fails_the_plan(tmp_path: Path) -> None:
    scout = series("1.2.3.4.1", [0.0], image_type=("ORIGINAL", "PRIMARY", "SCOUT"))
    with pytest.raises(InvalidUpload, match="no decodable slices: scout image"):
        _plan(tmp_path, scout)


def test_structured_report_is_skipped(tmp_path: Path) -> None:
    report = Path(get_testdata_file("test-SR.dcm")).read_bytes()
    members = [("a/1.dcm", to_bytes(ct_slice(series_uid="1.2.3.4.2", instance=1, z=0.0)))]
    plan = plan_upload(write_zip(tmp_path / "s.zip", [*members, ("a/sr.dcm", report)]), SETTINGS)
    assert len(plan.slices) == 1
    assert any("not an image (structured report)" in s.reason for s in plan.skipped)


def test_duplicate_instances_are_skipped(tmp_path: Path) -> None:
    ds = ct_slice(series_uid="1.2.3.4.2", instance=1, z=0.0)
    path = write_zip(tmp_path / "s.zip", [("a/1.dcm", to_bytes(ds)), ("b/1.dcm", to_bytes(ds))])
    plan = plan_upload(path, SETTINGS)
    assert [s.source for s in plan.slices] == ["a/1.dcm"]
    assert plan.skipped[0].reason == "duplicate of another file (same SOPInstanceUID)"


def test_lung_window_values(tmp_path: Path) -> None:
    datasets = [ct_slice(series_uid="1.2.3.4.2", instance=1, z=0.0, hu=-600.0)]
    image = _plan(tmp_path, datasets, LUNG).slices[0].load()
    assert image.dtype == np.uint8 and image.shape == (16, 16)
    assert image[5, 5] == 128  # center of the window
    assert image[0, 0] == 255  # 976 HU is above the window
    hu = np.array([-1350.0, -1000.0, -600.0, 150.0, 3000.0])
    assert window(hu, -600, 1500).tolist() == [0, 60, 128, 255, 255]


def test_default_window_is_training_matched(tmp_path: Path) -> None:
    # 150/500 (IQ-OTH/NCCD export, see ingest/README.md): -100 HU and below black.
    datasets = [
        ct_slice(series_uid="1.2.3.4.2", instance=i + 1, z=float(i), hu=hu)
        for i, hu in enumerate([-600.0, -100.0, 150.0])
    ]
    plan = _plan(tmp_path, datasets)
    assert (SETTINGS.dicom_window_center, SETTINGS.dicom_window_width) == (150.0, 500.0)
    assert [int(s.load()[5, 5]) for s in plan.slices] == [0, 0, 128]


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    mono2 = ct_slice(series_uid="1.2.3.4.2", instance=1, z=0.0, hu=-800.0)
    mono1 = ct_slice(series_uid="1.2.3.4.3", instance=1, z=0.0, hu=-800.0)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    plan = _plan(tmp_path, [mono2, mono1], LUNG)
    normal, inverted = (s.load() for s in plan.slices)
    assert np.array_equal(inverted, 255 - normal)
    assert normal[5, 5] == 94 and inverted[5, 5] == 161


def test_multiframe_frames_become_ordered_slices(tmp_path: Path) -> None:
    ds = multiframe(series_uid="1.2.3.4.7", zs=[20.0, 0.0, 10.0])
    plan = _plan(tmp_path, [ds], LUNG)
    assert [s.frame for s in plan.slices] == [1, 2, 0]
    assert [s.slice_position for s in plan.slices] == [0.0, 10.0, 20.0]
    assert len({s.source for s in plan.slices}) == 1
    expected = window(np.array([-890.0, -880.0, -900.0]), -600, 1500).tolist()
    assert [int(s.load()[3, 3]) for s in plan.slices] == expected


def test_single_multiframe_file_is_an_n_slice_image_job(tmp_path: Path) -> None:
    path = tmp_path / "mf.dcm"
    path.write_bytes(to_bytes(multiframe(series_uid="1.2.3.4.7", zs=[0.0, 1.0])))
    plan = plan_upload(path, SETTINGS)
    assert plan.kind == "image" and len(plan.slices) == 2
    assert [s.load().shape for s in plan.slices] == [(16, 16), (16, 16)]


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_decode_like_uncompressed(tmp_path: Path, syntax: str) -> None:
    plain = series("1.2.3.4.2", [0.0, 5.0, 10.0], size=32)
    packed = [compressed(ds, syntax) for ds in series("1.2.3.4.3", [0.0, 5.0, 10.0], size=32)]
    plan = _plan(tmp_path, plain + packed, LUNG)
    images = [s.load() for s in plan.slices]
    for a, b in zip(images[:3], images[3:], strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"],
)
def test_bundled_lossless_files_match_uncompressed(name: str) -> None:
    reference = plan_upload(Path(get_testdata_file("MR_small.dcm")), ALL_MODALITIES)
    plan = plan_upload(Path(get_testdata_file(name)), ALL_MODALITIES)
    assert np.array_equal(plan.slices[0].load(), reference.slices[0].load())


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", (100, 100)),  # JPEG baseline, YBR colour
        ("SC_rgb_jpeg_gdcm.dcm", (100, 100)),  # JPEG lossless, RGB
        ("JPGExtended.dcm", (1024, 256)),  # JPEG extended 12-bit
        ("693_J2KI.dcm", (512, 512)),  # JPEG 2000 CT
        ("SC_rgb_rle.dcm", (100, 100)),  # RLE colour
    ],
)
def test_bundled_compressed_files_decode(name: str, shape: tuple[int, int]) -> None:
    plan = plan_upload(Path(get_testdata_file(name)), ALL_MODALITIES)
    image = plan.slices[0].load()
    assert image.dtype == np.uint8 and image.shape == shape and image.max() > image.min()


def test_preambleless_dicom(tmp_path: Path) -> None:
    path = tmp_path / "old.dcm"
    path.write_bytes(preambleless(ct_slice(series_uid="1.2.3.4.2", instance=1, z=0.0, hu=-600)))
    assert plan_upload(path, LUNG).slices[0].load()[5, 5] == 128


def test_pixels_over_limit_at_load(tmp_path: Path) -> None:
    plan = _plan(tmp_path, [ct_slice(series_uid="1.2.3.4.2", instance=1, z=0.0, size=64)])
    source = plan.slices[0]
    assert isinstance(source.reader, MemberReader)
    tight = replace(source, reader=replace(source.reader, max_pixels=100))
    with pytest.raises(SliceError, match=r"image too large \(64x64 > 100 pixels\)"):
        tight.load()


def test_no_patient_identifiers_leave_ingest(tmp_path: Path) -> None:
    datasets = series("1.2.3.4.2", [0.0, 5.0]) + series(
        "1.2.3.4.1", [0.0], image_type=("ORIGINAL", "LOCALIZER")
    )
    plan = _plan(tmp_path, datasets)
    text = repr(plan) + repr([vars(s) for s in plan.slices])
    for secret in (PATIENT_NAME, PATIENT_ID, ACCESSION, "19700101", "Who^Doctor"):
        assert secret not in text
    assert not any("Dataset" in type(v).__name__ for s in plan.slices for v in vars(s).values())
