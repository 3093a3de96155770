"""What the worker gets from ingest: an ordered list of slices, each able to load itself.

A :class:`SliceSource` holds no pixels and no pydicom Dataset, only where its bytes
are (upload path, member name, frame) and how to turn them into the display image,
so a plan for thousands of slices is small and ``load()`` can run in any thread.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ingest.archive import Origin, Skipped
from ingest.dicom import decode_dicom
from ingest.errors import LimitExceeded, SliceError
from ingest.images import decode_image

__all__ = ["MemberReader", "SeriesInfo", "Skipped", "SliceSource", "UploadPlan"]

_MAX_MESSAGE = 300


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in the upload; ``slice_count`` 0 with a note if skipped."""

    series_uid: str
    study_uid: str
    modality: str
    description: str | None = None
    slice_count: int = 0
    note: str | None = None
    series_number: int | None = None


@dataclass(frozen=True)
class MemberReader:
    """What ``load()`` needs: where the bytes are and how to decode them.

    ``member`` is the real, unredacted path (it addresses the bytes), so it is kept
    out of ``repr`` and out of error messages: only ``SliceSource.source`` is shown.
    """

    origin: Origin = field(repr=False)
    member: str = field(repr=False)
    fmt: str  # "dicom" or "image"
    window_center: float
    window_width: float
    max_pixels: int

    def __call__(self, frame: int | None) -> np.ndarray:
        data = self._read()
        if self.fmt == "dicom":
            return decode_dicom(data, frame, self.window_center, self.window_width, self.max_pixels)
        return decode_image(data, self.max_pixels)

    def _read(self) -> bytes:
        """The member's bytes; zipfile's messages quote the member name, so keep only the type."""
        try:
            return self.origin.read(self.member)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise SliceError(f"corrupt archive member ({type(exc).__name__})") from exc


@dataclass(frozen=True)
class SliceSource:
    """One slice of the job, in final order; ``load()`` decodes it on demand."""

    index: int
    source: str
    series_uid: str | None
    instance_number: int | None
    slice_position: float | None
    frame: int | None = None
    reader: Callable[[int | None], np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )

    def load(self) -> np.ndarray:
        """The display image, uint8 (H, W); raises :class:`SliceError` on a bad slice."""
        if self.reader is None:
            raise SliceError("slice has nothing to load from")
        try:
            return self.reader(self.frame)
        except SliceError:
            raise
        except LimitExceeded as exc:
            raise SliceError(str(exc)) from exc
        except Exception as exc:  # untrusted bytes: decoders fail in many ways
            raise SliceError(_describe(exc)) from exc


@dataclass(frozen=True)
class UploadPlan:
    """Slices in final order (series, then anatomical order) and what was left out."""

    kind: str
    slices: list[SliceSource]
    skipped: list[Skipped]
    series: list[SeriesInfo]
    origin: Origin | None = field(default=None, repr=False, compare=False)

    def close(self) -> None:
        """Release the archive handles held by loader threads (before deleting the upload)."""
        if self.origin is not None:
            self.origin.close()

    def __enter__(self) -> UploadPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"cannot decode slice: {text}"[:_MAX_MESSAGE]
