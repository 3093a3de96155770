"""Folder-per-class image datasets and a grouped, stratified, seeded train/val/test split.

Why grouped: IQ-OTH/NCCD has ~1,100 slices from only 110 patients and consecutive case
numbers are adjacent, near-identical slices of one patient. A per-image random split puts
the same patient on both sides and inflates test accuracy (see ../shared/data/README.md).
So images are first grouped, and whole groups are assigned to splits:

* files named ``..._<number>.<ext>`` (every file of a class numbered): contiguous blocks of
  case numbers of about ``block_size`` slices, each cut placed at the largest perceptual-hash
  (pHash) jump between consecutive slices in a window around the nominal cut, i.e. where
  the image changes most (a likely patient boundary); a gap in the numbering always wins;
* then, in every class, any two images whose pHash distance is <= ``dup_distance`` are
  merged into one group (union-find), which catches near-duplicates that are not adjacent
  and is the only grouping for datasets without case numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from models.preprocessing import InputSpec, preprocess

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif"})
SPLITS = ("train", "val", "test")
_NUMBER = re.compile(r"(\d+)(?!.*\d)")
_NO_NUMBER_GAP = 10**6  # distance used across a gap in the numbering: always a cut


@dataclass(frozen=True)
class Dataset:
    """Image paths with integer labels; ``classes[label]`` is the class (subfolder) name."""

    root: Path
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]

    def rel(self, index: int) -> str:
        """Path of image ``index`` relative to the dataset root (what the card records)."""
        return self.paths[index].relative_to(self.root).as_posix()


@dataclass
class Split:
    """Index arrays per split, the group of every image and an audit of the split."""

    method: str
    indices: dict[str, np.ndarray]
    groups: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)

    def split_of(self) -> np.ndarray:
        """Name of the split of every image (for tests and the audit)."""
        out = np.empty(len(self.groups), dtype=object)
        for name, idx in self.indices.items():
            out[idx] = name
        return out


def scan_folder(root: Path | str) -> Dataset:
    """List a folder-per-class dataset; classes are the sorted subfolder names."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(
            f
            for f in (root / name).rglob("*")
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        paths.extend(files)
        labels.extend([label] * len(files))
    if len(classes) < 2 or not paths:
        raise ValueError(f"{root} needs at least two class subfolders with images")
    return Dataset(root, paths, np.asarray(labels, dtype=np.int64), classes)


def load_gray(path: Path) -> np.ndarray:
    """Decode an image file to the display-image contract: 2-D uint8 grayscale (mode L)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def load_arrays(dataset: Dataset, spec: InputSpec) -> np.ndarray:
    """Decode and preprocess every image, exactly as the serving path does."""
    out = np.empty((len(dataset.paths), *spec.shape), dtype=np.float32)
    for i, path in enumerate(dataset.paths):
        out[i] = preprocess(load_gray(path), spec)
    return out


def case_number(path: Path) -> int | None:
    """The last integer in the file stem (``malignant_0042.jpg`` -> 42), else None."""
    match = _NUMBER.search(path.stem)
    return int(match.group(1)) if match else None


def phash_bits(paths: Sequence[Path]) -> np.ndarray:
    """64-bit perceptual hashes as a (n, 64) bool matrix, for fast pairwise distances."""
    return np.array([imagehash.phash(Image.fromarray(load_gray(p))).hash.ravel() for p in paths])


def _hamming(bits: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between rows of a bool matrix."""
    as_int = bits.astype(np.int16)
    same_ones = as_int @ as_int.T
    ones = as_int.sum(axis=1)
    return ones[:, None] + ones[None, :] - 2 * same_ones


def _block_cuts(jumps: np.ndarray, block_size: int) -> list[int]:
    """Cut positions (cut after slice ``i``) near every ``block_size`` slices at max jump."""
    n = len(jumps) + 1
    n_blocks = max(1, round(n / block_size))
    cuts: set[int] = set()
    for k in range(1, n_blocks):
        target = round(k * n / n_blocks) - 1
        half = max(1, block_size // 4)  # blocks stay between ~1/2 and ~3/2 block_size
        lo, hi = max(0, target - half), min(len(jumps), target + half + 1)
        window = [i for i in range(lo, hi) if i not in cuts]
        if window:
            cuts.add(max(window, key=lambda i: (jumps[i], -abs(i - target))))
    return sorted(cuts)


def _blocks_for_class(numbers: list[int], bits: np.ndarray, block_size: int) -> np.ndarray:
    """Contiguous case-number blocks (in the order given, which is sorted by number)."""
    n = len(numbers)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    jumps = np.count_nonzero(bits[1:] != bits[:-1], axis=1).astype(np.int64)
    gaps = np.diff(np.asarray(numbers)) != 1
    jumps[gaps] = _NO_NUMBER_GAP
    cuts = set(_block_cuts(jumps, block_size)) | set(np.flatnonzero(gaps).tolist())
    block = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        block[i] = block[i - 1] + (1 if (i - 1) in cuts else 0)
    return block


def _union_near_duplicates(block: np.ndarray, bits: np.ndarray, dup_distance: int) -> np.ndarray:
    """Merge blocks that share any pair of images at pHash distance <= ``dup_distance``."""
    parent = list(range(int(block.max()) + 1))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if dup_distance >= 0:
        close = np.argwhere(np.triu(_hamming(bits) <= dup_distance, k=1))
        for i, j in close:
            ra, rb = find(int(block[i])), find(int(block[j]))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(int(b)) for b in block])
    _, dense = np.unique(roots, return_inverse=True)
    return dense


def build_groups(
    dataset: Dataset, bits: np.ndarray, block_size: int = 16, dup_distance: int = 4
) -> tuple[np.ndarray, dict[str, str]]:
    """Group id of every image (never shared across classes) and the method used per class."""
    groups = np.empty(len(dataset.paths), dtype=np.int64)
    methods: dict[str, str] = {}
    offset = 0
    for label, name in enumerate(dataset.classes):
        idx = np.flatnonzero(dataset.labels == label)
        numbers = [case_number(dataset.paths[i]) for i in idx]
        if all(n is not None for n in numbers):
            order = np.argsort(np.asarray(numbers), kind="stable")
            idx = idx[order]
            block = _blocks_for_class([numbers[o] for o in order], bits[idx], block_size)
            methods[name] = "case-number blocks + pHash near-duplicates"
        else:
            block = np.arange(len(idx))
            methods[name] = "pHash near-duplicates"
        dense = _union_near_duplicates(block, bits[idx], dup_distance)
        groups[idx] = dense + offset
        offset += int(dense.max()) + 1
    return groups, methods


def _assign_class(
    sizes: np.ndarray, order: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, float]:
    """Greedy pass: each group (in ``order``) goes to the split furthest below its target."""
    counts = np.zeros(len(targets))
    where = np.empty(len(sizes), dtype=np.int64)
    for g in order:
        k = int(np.argmax((targets - counts) / targets))
        counts[k] += sizes[g]
        where[g] = k
    return where, float(np.abs(counts - targets).sum())


def assign_groups(
    labels: np.ndarray,
    groups: np.ndarray,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    tries: int = 200,
) -> dict[str, np.ndarray]:
    """Stratified assignment of whole groups to train/val/test, per class.

    Groups of similar-looking sizes can land far from the targets in one random greedy
    pass, so ``tries`` seeded random orders are tried and the one whose per-split image
    counts are closest to the targets wins. Same seed, same data: same split.
    """
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        group_ids, sizes = np.unique(groups[members], return_counts=True)
        targets = np.maximum(np.asarray(fractions, dtype=float) * len(members), 1e-9)
        best = min(
            (_assign_class(sizes, rng.permutation(len(sizes)), targets) for _ in range(tries)),
            key=lambda result: result[1],
        )[0]
        for k, name in enumerate(SPLITS):
            chosen[name].append(members[np.isin(groups[members], group_ids[best == k])])
    return {s: np.sort(np.concatenate(chosen[s])) for s in SPLITS}


def _audit(dataset: Dataset, split: Split, bits: np.ndarray) -> dict[str, Any]:
    """Leakage checks: groups crossing splits, closest train/test pHash pair per class."""
    names = split.split_of()
    crossing = sum(len(set(names[split.groups == g])) > 1 for g in np.unique(split.groups))
    dist = _hamming(bits)
    closest: dict[str, int | None] = {}
    for label, cls in enumerate(dataset.classes):
        tr = np.intersect1d(split.indices["train"], np.flatnonzero(dataset.labels == label))
        te = np.intersect1d(split.indices["test"], np.flatnonzero(dataset.labels == label))
        closest[cls] = int(dist[np.ix_(te, tr)].min()) if len(tr) and len(te) else None
    counts = {
        s: {c: int(np.sum(dataset.labels[idx] == k)) for k, c in enumerate(dataset.classes)}
        for s, idx in split.indices.items()
    }
    return {
        "groups": len(np.unique(split.groups)),
        "groups_crossing_splits": int(crossing),
        "min_phash_distance_test_to_train": closest,
        "counts": counts,
    }


def grouped_split(
    dataset: Dataset,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    block_size: int = 16,
    dup_distance: int = 4,
) -> Split:
    """Group the images (see module doc), then split whole groups per class, seeded."""
    bits = phash_bits(dataset.paths)
    groups, methods = build_groups(dataset, bits, block_size, dup_distance)
    indices = assign_groups(dataset.labels, groups, fractions, seed)
    kinds = sorted(set(methods.values()))
    method = (
        f"grouped stratified split ({' / '.join(kinds)}; block_size={block_size}, "
        f"pHash dup distance<={dup_distance}), {'/'.join(f'{f:.0%}' for f in fractions)} "
        f"train/val/test by image count per class, seed={seed}"
    )
    params = {
        "fractions": list(fractions),
        "seed": seed,
        "block_size": block_size,
        "dup_distance": dup_distance,
        "per_class_method": methods,
    }
    split = Split(method, indices, groups, params)
    split.audit = _audit(dataset, split, bits)
    return split


def split_file_lists(dataset: Dataset, split: Split) -> dict[str, list[str]]:
    """Per-split relative file names, recorded in the model card for reproducibility."""
    return {s: [dataset.rel(int(i)) for i in idx] for s, idx in split.indices.items()}


def grouped_kfold(
    labels: np.ndarray, groups: np.ndarray, k: int = 5, seed: int = 42, tries: int = 200
) -> np.ndarray:
    """Fold number (0..k-1) of every image: whole groups per fold, stratified per class.

    Same greedy balancing as :func:`assign_groups`, with ``k`` equal targets: per class,
    ``tries`` seeded random group orders are assigned to the fold furthest below its
    target and the most balanced assignment wins. A class with fewer groups than folds
    leaves some folds without that class (its metrics are then computed on fewer folds).
    """
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    rng = np.random.default_rng(seed)
    fold = np.full(len(labels), -1, dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        group_ids, sizes = np.unique(groups[members], return_counts=True)
        targets = np.full(k, len(members) / k, dtype=float)
        best = min(
            (_assign_class(sizes, rng.permutation(len(sizes)), targets) for _ in range(tries)),
            key=lambda result: result[1],
        )[0]
        for g, f in zip(group_ids, best, strict=True):
            fold[members[groups[members] == g]] = f
    return fold
