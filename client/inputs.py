"""What ``lungct submit`` uploads: files and folders turned into inputs.

A file named on the command line is uploaded as it is (the API recognises it
by content). Inside a folder, at any depth:

- every ``.zip`` is one study, every ``.png``/``.jpg``/``.jpeg`` one image;
- DICOM files (``.dcm``, or any file with the ``DICM`` magic at byte 128) are
  grouped into studies: by default each folder that holds DICOM files directly
  is one study (its own DICOM files, not its subfolders'); with
  ``study_per_path`` each folder named on the command line is one study with all
  the DICOM files below it. A study is zipped into a temporary file only when it
  is uploaded.

Hidden files and folders (names starting with ``.``) are skipped, and so are
PNG/JPEG files in a folder that also holds DICOM files (:data:`PREVIEW_RULE`,
the rule ingest applies to a zip: a PACS export's ``result/*.png`` previews are
not CT slices). The rule is duplicated here because ``client/`` imports nothing
of the service; tests/test_client_inputs.py checks that both agree.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from client.api import CHUNK, sha256_of

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
ZIP_SUFFIX = ".zip"
DICOM_SUFFIX = ".dcm"
PREVIEW_RULE = "PNG/JPEG next to DICOM series: only the DICOM series are used"
"""Same words as ingest/upload.py ``_assemble`` says for a zip."""


@dataclass(frozen=True)
class Skipped:
    """A file in a folder that is not uploaded, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Input:
    """One upload: a file, or a folder of DICOM files sent as one zipped study."""

    path: Path  # the file, or the study folder
    dicom_files: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def is_dicom_folder(self) -> bool:
        return bool(self.dicom_files)

    @property
    def size(self) -> int:
        """Bytes to upload (for a folder, the files before zipping: an estimate)."""
        files = self.dicom_files or (self.path,)
        return sum(f.stat().st_size for f in files)

    @property
    def upload_name(self) -> str:
        return f"{self.path.name or 'study'}.zip" if self.is_dicom_folder else self.path.name

    def members(self) -> list[str]:
        """The member names of the zip this input is uploaded as, in the zip's order.

        A folder: the paths :func:`zip_folder` gives its files; a ``.zip``: its
        central directory; a single file: none. The API numbers members from 1
        in this order (``#<n>.png`` when STORE_SOURCE_PATHS keeps no paths).
        """
        if self.is_dicom_folder:
            return [f.relative_to(self.path).as_posix() for f in self.dicom_files]
        if self.path.suffix.lower() == ZIP_SUFFIX:
            try:
                with zipfile.ZipFile(self.path) as zf:
                    return [info.filename for info in zf.infolist()]
            except (OSError, zipfile.BadZipFile):
                return []
        return []

    def content_sha256(self) -> str:
        """Identifies the content: the file's SHA-256, or one over a folder's names and files.

        A folder's value does not depend on how it is zipped, so a rerun finds
        the same study without zipping it again.
        """
        if not self.is_dicom_folder:
            return sha256_of(self.path)
        h = hashlib.sha256(b"lungct-dicom-folder\0")
        for f in self.dicom_files:
            h.update(f.relative_to(self.path).as_posix().encode() + b"\0")
            h.update(sha256_of(f).encode() + b"\0")
        return h.hexdigest()

    def materialize(self, tmp_dir: Path) -> Path:
        """The file to upload: the file itself, or a new zip of the folder in ``tmp_dir``."""
        if not self.is_dicom_folder:
            return self.path
        fd, name = tempfile.mkstemp(suffix=".zip", prefix="study-", dir=tmp_dir)
        os.close(fd)
        zip_folder(self.path, self.dicom_files, Path(name))
        return Path(name)


def zip_folder(root: Path, files: Iterable[Path], out: Path) -> Path:
    """Zip ``files`` under their paths relative to ``root`` (deflated, in chunks)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for f in files:
            with f.open("rb") as src, zf.open(f.relative_to(root).as_posix(), "w") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
    return out


def is_dicom(path: Path) -> bool:
    """A ``.dcm`` name, or the DICOM Part 10 magic ``DICM`` after the 128-byte preamble."""
    if path.suffix.lower() == DICOM_SUFFIX:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def discover(
    paths: Iterable[str | Path],
    *,
    study_per_path: bool = False,
    skipped: list[Skipped] | None = None,
) -> list[Input]:
    """The inputs under ``paths``, in a stable order, each once.

    Files left out by :data:`PREVIEW_RULE` are appended to ``skipped`` when given.
    ``FileNotFoundError`` for a path that does not exist; ``ValueError`` for a
    folder with nothing to upload.
    """
    found: list[Input] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {raw}")
        items = [Input(path)] if path.is_file() else _folder(path, study_per_path, skipped)
        if not items:
            raise ValueError(f"nothing to upload in {raw} (no .zip, .png, .jpg or DICOM files)")
        for item in items:
            key = item.path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(item)
    return found


def without_previews(inputs: list[Input]) -> tuple[list[Input], list[Skipped]]:
    """:data:`PREVIEW_RULE` over one folder's inputs: with DICOM, its PNG/JPEG files go."""
    if not any(i.is_dicom_folder for i in inputs):
        return inputs, []
    previews = [i for i in inputs if i.path.suffix.lower() in IMAGE_SUFFIXES]
    kept = [i for i in inputs if i not in previews]
    return kept, [Skipped(i.path, PREVIEW_RULE) for i in previews]


def _folder(root: Path, study_per_path: bool, skipped: list[Skipped] | None) -> list[Input]:
    kept, left_out = without_previews(list(_walk(root, study_per_path)))
    if skipped is not None:
        skipped.extend(left_out)
    return kept


def _walk(root: Path, study_per_path: bool) -> Iterator[Input]:
    """Files in ``root`` (sorted, recursive) as inputs; DICOM files grouped into studies."""
    groups: dict[Path, list[Path]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        for name in sorted(files):
            if name.startswith("."):
                continue
            f = here / name
            suffix = f.suffix.lower()
            if suffix == ZIP_SUFFIX or suffix in IMAGE_SUFFIXES:
                yield Input(f)
            elif f.is_file() and is_dicom(f):
                groups.setdefault(root if study_per_path else here, []).append(f)
    for group in sorted(groups):
        yield Input(group, tuple(sorted(groups[group])))
