"""``client.inputs``: what a folder yields, DICOM studies, on-the-fly zips, content hashes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from client.inputs import Input, discover, is_dicom
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


def test_folder_yields_zips_images_and_one_study_per_dicom_folder(tree: Path) -> None:
    found = discover([tree])
    rel = [(str(i.path.relative_to(tree)), len(i.dicom_files)) for i in found]
    assert rel == [
        ("a.zip", 0),
        ("b/photo.jpeg", 0),
        ("b/slice.PNG", 0),
        ("study1", 2),
        ("study2/series", 1),
    ]
    assert found[3].upload_name == "study1.zip" and found[0].upload_name == "a.zip"


def test_study_per_path_gathers_every_dicom_file_below(tree: Path) -> None:
    studies = [i for i in discover([tree], study_per_path=True) if i.is_dicom_folder]
    assert [s.path for s in studies] == [tree]
    assert len(studies[0].dicom_files) == 3


def test_files_are_taken_as_given_once_each(tree: Path) -> None:
    notes = tree / "notes.txt"
    found = discover([notes, tree / "a.zip", tree, notes])
    assert [i.path for i in found][:2] == [notes, tree / "a.zip"]
    assert len(found) == 6  # a.zip not twice, notes.txt once


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
