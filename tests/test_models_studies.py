"""Training on labelled studies (DICOM folders, zips, CSV) through the serving decode path."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from config import Settings
from models.preprocessing import InputSpec
from models.studies import decode_study, is_study_source, list_studies, load_studies, study_split
from tests.fixtures_dicom import series, to_bytes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data"))
REAL_STUDY = DATA_DIR / "lung-pet-ct-dx" / "Lung_Dx-A0001"
SPEC = InputSpec(16, 16, 1)


def _study_files(folder: Path, hu: float, n: int = 4) -> None:
    """A synthetic CT series of ``n`` slices at ``hu`` HU (nested like a PACS export)."""
    uid = generate_uid()
    for ds in series(uid, [float(z) for z in range(n)], hu=hu, size=16):
        path = folder / "SERIES1" / f"IM{ds.InstanceNumber:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_bytes(ds))


def _zip_folder(folder: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())


def make_studies(root: Path, per_class: int = 3) -> Path:
    """normal/ (soft tissue, study folders) and malignant/ (brighter, study zips)."""
    for i in range(per_class):
        _study_files(root / "normal" / f"study{i}", hu=40.0 + i)
        tmp = root / "_tmp" / f"m{i}"
        _study_files(tmp, hu=300.0 + i)
        (root / "malignant").mkdir(parents=True, exist_ok=True)
        _zip_folder(tmp, root / "malignant" / f"study{i}.zip")
    for f in sorted((root / "_tmp").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    (root / "_tmp").rmdir()
    return root


def test_studies_are_listed_decoded_like_uploads_and_split_by_study(tmp_path: Path) -> None:
    root = make_studies(tmp_path / "studies")
    assert is_study_source(root)
    listed = list_studies(root)
    assert len(listed) == 6 and {label for _, label, _ in listed} == {"normal", "malignant"}
    data = load_studies(root, SPEC, Settings())
    assert data.x.shape == (24, 16, 16, 1) and data.dataset.classes == ["malignant", "normal"]
    # window 150/500: 40 HU -> (40 - (150 - 250)) / 500 * 255 = 71; 300 HU -> 204
    assert abs(data.x[data.dataset.labels == 1].mean() * 255 - 71.4) < 3
    split = study_split(data, seed=0)
    assert split.audit["groups"] == 6 and split.audit["groups_crossing_splits"] == 0
    assert all(len(v) == 2 for v in split.audit["studies"].values())  # one study per class each
    assert data.dataset.rel(0) == "malignant/study0.zip#0000"


def test_csv_with_patient_column_groups_studies(tmp_path: Path) -> None:
    root = make_studies(tmp_path / "studies")
    rows = ["path,label,patient"]
    rows += [f"studies/normal/study{i},normal,p{i // 2}" for i in range(3)]
    rows += [f"studies/malignant/study{i}.zip,malignant,q{i}" for i in range(3)]
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    assert is_study_source(csv_file) and root.is_dir()
    data = load_studies(csv_file, SPEC, Settings())
    assert len(np.unique(data.groups)) == 5  # normal studies 0 and 1 share patient p0
    assert data.dataset.rel(0) == "normal/studies/normal/study0#0000"
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx,y\n")
    with pytest.raises(ValueError, match="path,label"):
        load_studies(bad, SPEC, Settings())


def test_train_cli_on_dicom_studies_and_fine_tune(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    from models.registry import Registry
    from models.train import main

    root = make_studies(tmp_path / "studies", per_class=4)
    out = tmp_path / "models" / "site"
    args = ["--arch", "lenet", "--data", str(root), "--img-size", "16", "--epochs", "2"]
    args += ["--batch-size", "8", "--min-epochs", "1", "--verbose", "0"]
    main([*args, "--out", str(out)])
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["split"]["params"]["unit"] == "study"
    assert card["ood"]["validation"]["flag_rate"] <= 0.05 and "calibration" in card
    assert "studies):" in (out / "card.md").read_text(encoding="utf-8")
    tuned = tmp_path / "models" / "site-tuned"
    main([*args, "--out", str(tuned), "--init-from", str(out)])
    assert Registry([tmp_path / "models"]).get("site-tuned").classes == ["malignant", "normal"]


@pytest.mark.realdata
def test_shared_study_decodes_exactly_like_the_worker(tmp_path: Path) -> None:
    """No train/serve skew: training tensors equal the worker's for the real DICOM study."""
    if not REAL_STUDY.is_dir():
        pytest.skip("needs ../shared/data (DATA_DIR)")
    from ingest import plan_upload
    from models.preprocessing import preprocess

    spec = InputSpec(128, 128, 1)
    tensors, failed = decode_study(REAL_STUDY, spec, Settings())
    assert failed == 0 and len(tensors) == 128
    upload = tmp_path / "study.zip"
    _zip_folder(REAL_STUDY.parent, upload)  # as a user would zip it, patient folder included
    with plan_upload(upload, Settings()) as plan:
        served = [preprocess(s.load(), spec) for s in plan.slices]
    np.testing.assert_array_equal(np.stack(tensors), np.stack(served))
