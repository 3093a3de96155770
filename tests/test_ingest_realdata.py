"""The real Lung-PET-CT-Dx study, zipped as a user would upload it (needs DATA_DIR)."""

from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from config.settings import PROJECT_ROOT, Settings
from ingest import inspect_upload, plan_upload

pytestmark = pytest.mark.realdata

DATA_DIR = Path(os.environ.get("DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
STUDY = DATA_DIR / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "04-04-2007-NA-Chest-07990"


def _zip_study(tmp_path_factory: pytest.TempPathFactory, base: Path) -> Path:
    """The study folder zipped (deflate) into a temp file, names relative to ``base``."""
    if not STUDY.is_dir():
        pytest.skip(f"real data not found at {STUDY} (set DATA_DIR)")
    path = tmp_path_factory.mktemp("real") / "study.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(STUDY.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(base).as_posix())
    return path


@pytest.fixture(scope="module")
def study_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``04-04-2007-NA-Chest-07990/...``: the study folder only; never into the repo."""
    return _zip_study(tmp_path_factory, STUDY.parent)


@pytest.fixture(scope="module")
def patient_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``Lung_Dx-A0001/04-04-.../...``: with the folder TCIA names after the PatientID."""
    return _zip_study(tmp_path_factory, STUDY.parent.parent)


def test_real_study_plan(study_zip: Path) -> None:
    settings = Settings()
    assert inspect_upload(study_zip, "study.zip", settings.limits) == "study"
    plan = plan_upload(study_zip, settings)
    assert plan.kind == "study"
    assert len(plan.slices) == 128
    assert [s.index for s in plan.slices] == list(range(128))
    assert [(i.slice_count, i.series_number) for i in plan.series] == [(64, 2), (64, 3)]
    for info in plan.series:
        run = [s for s in plan.slices if s.series_uid == info.series_uid]
        assert [s.instance_number for s in run] == list(range(1, 65))
        steps = np.diff([s.slice_position for s in run])
        assert np.allclose(steps, steps[0]) and abs(steps[0]) == pytest.approx(5.0)
    # The result/ folder of PNG renderings and the GIF are not slices of the study.
    assert all(s.source.endswith(".dcm") for s in plan.slices)
    assert {s.source.split("/")[1] for s in plan.skipped} == {"result"}


def test_real_study_loads(study_zip: Path) -> None:
    plan = plan_upload(study_zip, Settings(dicom_window_center=-600, dicom_window_width=1500))
    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(pool.map(lambda s: s.load(), plan.slices[20:24] + plan.slices[84:88]))
    for image in images:
        assert image.dtype == np.uint8 and image.shape == (512, 512)
    # Same anatomy at the same position in both series (reconstructed differently).
    assert np.corrcoef(images[0].ravel(), images[4].ravel())[0, 1] > 0.9
    # Lung window: outside air (-1024 HU) is dark grey, not black; bone saturates.
    assert int(images[0][5, 5]) == 55 and images[0].max() == 255


def test_real_patient_folder_is_redacted(patient_zip: Path) -> None:
    patient_id = str(dcmread(next(STUDY.rglob("*.dcm")), stop_before_pixels=True).PatientID)
    assert patient_id and patient_id in STUDY.parent.name  # the folder does name the patient
    plan = plan_upload(patient_zip, Settings())
    sources = [s.source for s in plan.slices] + [k.source for k in plan.skipped]
    assert len(plan.slices) == 128 and len(sources) > 128
    assert not any(patient_id.lower() in s.lower() for s in sources)
    assert all(s.startswith("[redacted]/04-04-2007-NA-Chest-07990/") for s in sources)
    assert [s.instance_number for s in plan.slices[:64]] == list(range(1, 65))
