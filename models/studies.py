"""Labelled studies (DICOM or image zips) as training data, decoded exactly like uploads.

``python -m models.train --data X`` accepts, besides a folder of images per class:

* a folder per class of **studies**: each class folder holds study folders (a PACS
  export: DICOM files in any nesting) and/or study ``.zip`` archives;
* a **CSV** file with a header and columns ``path,label`` and an optional ``patient``
  column: ``path`` is a study folder, a study zip or a single DICOM/image file, relative to
  the CSV's folder or absolute.

Every study goes through :func:`ingest.plan_upload` and ``SliceSource.load`` with the
service's settings (``DICOM_WINDOW_CENTER``/``WIDTH``, series rules, archive limits), then
:func:`models.preprocessing.preprocess`: the tensors the network trains on are the tensors
the worker will feed it, so there is no train/serve skew. A study folder is first packed
into a temporary stored (uncompressed) zip, i.e. the upload a user would send. All slices
of a study take the study's label. Splits are grouped by study (or by the ``patient``
column when given), stratified per class, so no study or patient crosses splits.
"""

from __future__ import annotations

import csv
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data import Dataset, Split, assign_groups
from models.preprocessing import InputSpec, preprocess

STUDY_SUFFIXES = frozenset({".zip"})
SLICE_MARK = "#"  # "<class>/<study>#<slice>": the per-slice names recorded in the card


@dataclass
class StudyData:
    """Decoded, preprocessed slices with their labels, study of origin and grouping."""

    dataset: Dataset  # paths are "<root>/<study>#<slice>" names (not files)
    x: np.ndarray
    groups: np.ndarray
    studies: list[str]  # study names relative to the root, one per group of ``study_of``
    study_of: np.ndarray  # study index of every slice
    skipped: list[str]  # studies or slices that could not be read, with the reason


def is_study_source(root: Path) -> bool:
    """A CSV file, or a folder whose class folders hold study folders, zips or DICOM files."""
    if root.is_file():
        return root.suffix.lower() == ".csv"
    for cls in (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for item in cls.iterdir():
            if item.is_dir() or item.suffix.lower() in STUDY_SUFFIXES | {".dcm"}:
                return True
    return False


def list_studies(root: Path) -> list[tuple[Path, str, str]]:
    """(study path, label, patient) from a class-folder tree or a CSV."""
    if root.is_file():
        base = root.parent
        with root.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"path", "label"} <= set(rows[0]):
            raise ValueError(f"{root}: needs a header with columns path,label[,patient]")
        out = []
        for row in rows:
            path = Path(row["path"])
            path = path if path.is_absolute() else base / path
            out.append((path, row["label"].strip(), (row.get("patient") or "").strip()))
        return out
    out = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for item in sorted(cls.iterdir()):
            if item.name.startswith("."):
                continue
            if item.is_dir() or item.suffix.lower() in STUDY_SUFFIXES | {".dcm"}:
                out.append((item, cls.name, ""))
    return out


def _as_upload(study: Path, tmp: Path) -> Path:
    """A study folder packed into a stored zip (what a user uploads); files as they are."""
    if not study.is_dir():
        return study
    target = tmp / f"{len(list(tmp.iterdir()))}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(p for p in study.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(study).as_posix())
    return target


def decode_study(study: Path, spec: InputSpec, settings: object) -> tuple[list[np.ndarray], int]:
    """Preprocessed slices of one study through the serving path; (tensors, slices failed)."""
    from ingest import InvalidUpload, SliceError, plan_upload

    with tempfile.TemporaryDirectory(prefix="lungct-study-") as tmp:
        upload = _as_upload(study, Path(tmp))
        try:
            plan = plan_upload(upload, settings)  # type: ignore[arg-type]
        except InvalidUpload as exc:
            raise ValueError(str(exc)) from None
        tensors, failed = [], 0
        with plan:
            for source in plan.slices:
                try:
                    tensors.append(preprocess(source.load(), spec))
                except SliceError:
                    failed += 1
    return tensors, failed


def load_studies(root: Path, spec: InputSpec, settings: object) -> StudyData:
    """Decode every listed study; studies that fail entirely are skipped with the reason.

    ``settings``: the service's settings (``config.Settings``), so studies decode as the
    worker would decode them; the caller's entry point reads them.
    """
    listed = list_studies(root)
    classes = sorted({label for _, label, _ in listed})
    if len(classes) < 2:
        raise ValueError(f"{root}: studies of at least two classes are needed, got {classes}")
    base = root.parent if root.is_file() else root
    tensors: list[np.ndarray] = []
    labels, study_of, names, patients, skipped = [], [], [], [], []
    studies: list[str] = []
    for path, label, patient in listed:
        name = _relative(path, base)
        try:
            slices, failed = decode_study(path, spec, settings)
        except (ValueError, OSError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        if failed:
            skipped.append(f"{name}: {failed} slice(s) could not be decoded")
        if not slices:
            continue
        k = len(studies)
        studies.append(name)
        labelled = name if name.startswith(f"{label}/") else f"{label}/{name}"
        for i, t in enumerate(slices):
            tensors.append(t)
            labels.append(classes.index(label))
            study_of.append(k)
            patients.append(patient or f"study:{name}")
            names.append(base / f"{labelled}{SLICE_MARK}{i:04d}")
    if not tensors:
        raise ValueError(f"{root}: no study could be decoded ({'; '.join(skipped[:3])})")
    _, groups = np.unique(np.asarray(patients), return_inverse=True)
    dataset = Dataset(base, names, np.asarray(labels, dtype=np.int64), classes)
    return StudyData(dataset, np.stack(tensors), groups, studies, np.asarray(study_of), skipped)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name


def study_split(data: StudyData, seed: int = 42) -> Split:
    """Whole studies (or patients) to train/val/test, 70/15/15 % per class by slice count."""
    indices = assign_groups(data.dataset.labels, data.groups, seed=seed)
    method = (
        "grouped stratified split by study (or the CSV's patient column), 70%/15%/15% "
        f"train/val/test by slice count per class, seed={seed}"
    )
    split = Split(method, indices, data.groups, {"seed": seed, "unit": "study"})
    names = split.split_of()
    counts = {
        s: {
            c: int(np.sum(data.dataset.labels[idx] == k))
            for k, c in enumerate(data.dataset.classes)
        }
        for s, idx in indices.items()
    }
    split.audit = {
        "groups": len(np.unique(data.groups)),
        "groups_crossing_splits": sum(
            len(set(names[data.groups == g])) > 1 for g in np.unique(data.groups)
        ),
        "min_phash_distance_test_to_train": "not computed (grouped by study)",
        "counts": counts,
        "studies": {
            s: sorted({data.studies[int(data.study_of[i])] for i in idx})
            for s, idx in indices.items()
        },
        "skipped": data.skipped,
    }
    return split
