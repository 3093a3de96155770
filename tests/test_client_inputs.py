"""``client.inputs``: what a folder yields, DICOM studies, on-the-fly zips, content hashes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from client.inputs import PREVIEW_RULE, Input, Skipped, discover, is_dicom
from tests.conftest import DATA_DIR
from tests.fixtures_dicom import ct_slice, image_bytes, preambleless, to_bytes, write_zip


def _dicom(path: Path, instance: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(ct_slice(series_uid="1.2.3.4", instance=instance, z=float(instance))))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with a zip, images, DICOM in two folders (one without suffixes), and noise."""
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    write_zip(root / "a.zip", [("x.png", image_bytes())])
    (root / "b" / "slice.PNG").write_bytes(image_bytes())
    (root / "b" / "photo.jpeg").write_bytes(image_bytes("JPEG"))
    (root / "notes.txt").write_text("not an input")
    (root / ".hidden.png").write_bytes(image_bytes())
    _dicom(root / "study1" / "IM1.dcm", 1)
    _dicom(root / "study1" / "IM2.dcm", 2)
    _dicom(root / "study2" / "series" / "IM0001", 1)  # no suffix: found by its DICM magic
    (root / "study2" / "series" / "README").write_text("x" * 200)
    return root


def test_folder_yields_zips_and_one_study_per_dicom_folder_and_skips_previews(tree: Path) -> None:
    skipped: list[Skipped] = []
    found = discover([tree], skipped=skipped)
    rel = [(str(i.path.relative_to(tree)), len(i.dicom_files)) for i in found]
    assert rel == [("a.zip", 0), ("study1", 2), ("study2/series", 1)]
    assert found[1].upload_name == "study1.zip" and found[0].upload_name == "a.zip"
    # issue 20: PNG/JPEG next to DICOM are left out, as in a zip
    assert [(str(s.path.relative_to(tree)), s.reason) for s in skipped] == [
        ("b/photo.jpeg", PREVIEW_RULE),
        ("b/slice.PNG", PREVIEW_RULE),
    ]


def test_a_folder_of_images_alone_keeps_them(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(image_bytes())
    assert [i.path.name for i in discover([tmp_path / "imgs"])] == ["a.png"]


def _pacs_export(root: Path) -> Path:
    """Lung_Dx-A0001's layout: two DICOM series folders and result/*.png previews."""
    for series in ("2.000000-5mm", "3.000000-5mm"):
        for i in (1, 2):
            _dicom(root / "study" / series / f"1-0{i}.dcm", i)
    (root / "study" / "result").mkdir()
    for i in range(3):
        (root / "study" / "result" / f"{i}.png").write_bytes(image_bytes())
    return root


def test_the_cli_and_the_zip_path_leave_out_the_same_previews(tmp_path: Path) -> None:
    """The rule is written twice (client/ imports nothing of ingest/): both must agree."""
    from config import Settings
    from ingest import plan_upload

    root = _pacs_export(tmp_path / "export")
    skipped: list[Skipped] = []
    found = discover([root], skipped=skipped)
    assert [i.path.name for i in found] == ["2.000000-5mm", "3.000000-5mm"]
    upload = write_zip(
        tmp_path / "export.zip",
        [
            (p.relative_to(root).as_posix(), p.read_bytes())
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ],
    )
    with plan_upload(upload, Settings(store_source_paths="full"), filename="export.zip") as plan:
        by_zip = {(k.source, k.reason) for k in plan.skipped}
    by_cli = {(s.path.relative_to(root).as_posix(), s.reason) for s in skipped}
    assert by_cli == by_zip and len(by_cli) == 3


def test_the_real_pacs_export_submits_its_two_series_only() -> None:
    study = DATA_DIR / "lung-pet-ct-dx" / "Lung_Dx-A0001"
    if not study.is_dir():
        pytest.skip(f"no real data at {DATA_DIR}")
    skipped: list[Skipped] = []
    found = discover([study], skipped=skipped)
    assert sum(len(i.dicom_files) for i in found) == 128 and len(found) == 2
    assert len(skipped) == 11 and all(s.path.parent.name == "result" for s in skipped)


def test_study_per_path_gathers_every_dicom_file_below(tree: Path) -> None:
    studies = [i for i in discover([tree], study_per_path=True) if i.is_dicom_folder]
    assert [s.path for s in studies] == [tree]
    assert len(studies[0].dicom_files) == 3


def test_files_are_taken_as_given_once_each(tree: Path) -> None:
    notes = tree / "notes.txt"
    found = discover([notes, tree / "a.zip", tree, notes])
    assert [i.path for i in found][:2] == [notes, tree / "a.zip"]
    assert len(found) == 4  # a.zip not twice, notes.txt once; the folder's images skipped


def test_missing_path_and_empty_folder_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        discover([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="nothing to upload"):
        discover([tmp_path / "empty"])


def test_dicom_magic(tmp_path: Path) -> None:
    raw = _dicom(tmp_path / "x" / "IM", 1)
    short = tmp_path / "short"
    short.write_bytes(b"DICM")
    old = tmp_path / "old"  # no preamble: not recognised without a .dcm name
    old.write_bytes(preambleless(ct_slice(series_uid="1.2", instance=1, z=0.0)))
    assert is_dicom(raw) and not is_dicom(short) and not is_dicom(old)


def test_dicom_folder_is_zipped_with_relative_names(tree: Path, tmp_path: Path) -> None:
    study = next(i for i in discover([tree], study_per_path=True) if i.is_dicom_folder)
    out = study.materialize(tmp_path)
    assert out.parent == tmp_path and out.suffix == ".zip"
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
        assert names == ["study1/IM1.dcm", "study1/IM2.dcm", "study2/series/IM0001"]
        assert zf.read("study1/IM1.dcm") == (tree / "study1" / "IM1.dcm").read_bytes()
    assert Input(tree / "a.zip").materialize(tmp_path) == tree / "a.zip"  # files as they are


def test_content_hash_follows_content_not_zipping(tree: Path) -> None:
    study = Input(tree / "study1", tuple(sorted((tree / "study1").iterdir())))
    first = study.content_sha256()
    assert study.content_sha256() == first
    (tree / "study1" / "IM2.dcm").write_bytes(b"changed")
    assert study.content_sha256() != first
    assert len(Input(tree / "a.zip").content_sha256()) == 64
