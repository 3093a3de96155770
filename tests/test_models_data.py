"""The grouped split: no group (patient) crosses splits, stratified per class, seeded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data import (
    SPLITS,
    assign_groups,
    case_number,
    grouped_split,
    load_arrays,
    scan_folder,
    split_file_lists,
)
from models.preprocessing import InputSpec

REPO_ROOT = Path(__file__).resolve().parent.parent


def _patient_base(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random 'anatomy': low-frequency noise, so pHash differs between patients."""
    coarse = rng.uniform(0, 255, (8, 8)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def make_dataset(
    root: Path, patients: dict[str, list[int]], size: int = 64, seed: int = 0, numbered: bool = True
) -> dict[str, str]:
    """Write ``<class>/<class>_<NNNN>.png`` slices; ``patients[cls]`` = slices per patient.

    Consecutive numbers within a patient are near-identical (tiny noise), like adjacent CT
    slices. Returns ``{relative file: patient id}``.
    """
    rng = np.random.default_rng(seed)
    owner: dict[str, str] = {}
    for cls, sizes in patients.items():
        (root / cls).mkdir(parents=True)
        number = 1
        for p, n_slices in enumerate(sizes):
            base = _patient_base(rng, size).astype(np.int16)
            for _ in range(n_slices):
                noisy = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
                name = f"{cls}_{number:04d}.png" if numbered else _word(rng) + ".png"
                Image.fromarray(noisy).save(root / cls / name)
                owner[f"{cls}/{name}"] = f"{cls}-{p}"
                number += 1
    return owner


def _word(rng: np.random.Generator) -> str:
    """A random lowercase file stem without digits (no case number to find)."""
    return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 12))


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    patients = {"benign": [5] * 8, "malignant": [7] * 10, "normal": [4] * 12}
    owner = make_dataset(tmp_path / "ds", patients)
    return tmp_path / "ds", owner


def _assert_patients_intact(files: dict[str, list[str]], owner: dict[str, str]) -> None:
    where: dict[str, set[str]] = {}
    for split_name, names in files.items():
        for name in names:
            where.setdefault(owner[name], set()).add(split_name)
    crossing = {p: s for p, s in where.items() if len(s) > 1}
    assert not crossing, f"patients crossing splits: {crossing}"


def test_scan_folder_sorted_classes(synthetic: tuple[Path, dict[str, str]]) -> None:
    root, owner = synthetic
    ds = scan_folder(root)
    assert ds.classes == ["benign", "malignant", "normal"]
    assert len(ds.paths) == len(owner)
    assert np.bincount(ds.labels).tolist() == [40, 70, 48]


def test_case_number() -> None:
    assert case_number(Path("malignant_0042.jpg")) == 42
    assert case_number(Path("Bengin case (17).jpg")) == 17
    assert case_number(Path("scan.png")) is None


def test_no_patient_crosses_splits_and_stratified(synthetic: tuple[Path, dict[str, str]]) -> None:
    root, owner = synthetic
    ds = scan_folder(root)
    split = grouped_split(ds, seed=3, block_size=4)
    files = split_file_lists(ds, split)
    _assert_patients_intact(files, owner)
    assert split.audit["groups_crossing_splits"] == 0
    every = sorted(f for names in files.values() for f in names)
    assert every == sorted(owner)  # every image exactly once
    for k, cls in enumerate(ds.classes):
        n = int((ds.labels == k).sum())
        for s, frac in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
            got = split.audit["counts"][s][cls]
            assert got > 0, f"{cls} missing from {s}"
            assert abs(got - frac * n) <= max(8, 0.15 * n), (cls, s, got)  # ~ one group
    assert "grouped" in split.method and "seed=3" in split.method


def test_split_is_seeded(synthetic: tuple[Path, dict[str, str]]) -> None:
    root, _ = synthetic
    ds = scan_folder(root)
    first = split_file_lists(ds, grouped_split(ds, seed=7))
    again = split_file_lists(ds, grouped_split(ds, seed=7))
    other = split_file_lists(ds, grouped_split(ds, seed=8))
    assert first == again
    assert first != other


def test_unnumbered_files_grouped_by_near_duplicates(tmp_path: Path) -> None:
    owner = make_dataset(tmp_path, {"a": [4] * 8, "b": [3] * 10}, numbered=False)
    ds = scan_folder(tmp_path)
    split = grouped_split(ds, seed=1)
    assert set(split.params["per_class_method"].values()) == {"pHash near-duplicates"}
    _assert_patients_intact(split_file_lists(ds, split), owner)


def test_assign_groups_whole_groups_only() -> None:
    labels = np.repeat([0, 1], 50)
    groups = np.arange(100) // 5
    idx = assign_groups(labels, groups, seed=0)
    for g in np.unique(groups):
        homes = [s for s in SPLITS if np.isin(np.flatnonzero(groups == g), idx[s]).any()]
        assert len(homes) == 1


def test_load_arrays_shape_and_range(synthetic: tuple[Path, dict[str, str]]) -> None:
    root, _ = synthetic
    x = load_arrays(scan_folder(root), InputSpec(16, 16, 1))
    assert x.shape == (158, 16, 16, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def _real_data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", REPO_ROOT.parent / "shared" / "data")) / "iqoth-nccd"


@pytest.mark.realdata
def test_real_iqoth_split_has_no_leakage() -> None:
    root = _real_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set DATA_DIR)")
    ds = scan_folder(root)
    split = grouped_split(ds)
    audit = split.audit
    assert audit["groups_crossing_splits"] == 0
    totals = {c: sum(audit["counts"][s][c] for s in SPLITS) for c in ds.classes}
    assert totals == {"benign": 100, "malignant": 475, "normal": 349}
    for cls, total in totals.items():
        assert all(audit["counts"][s][cls] > 0 for s in SPLITS)
        assert audit["counts"]["test"][cls] <= 0.25 * total
    # No test slice is a near-duplicate (pHash <= 4) of a training slice of its class.
    assert min(audit["min_phash_distance_test_to_train"].values()) > 4
    # Each split holds contiguous runs of case numbers, not scattered single slices.
    numbers = {
        s: sorted(case_number(ds.paths[i]) for i in idx if ds.labels[i] == 1)
        for s, idx in split.indices.items()
    }
    runs = sum(1 for a, b in zip(numbers["test"], numbers["test"][1:], strict=False) if b != a + 1)
    assert runs < 10
