"""What the worker gets from ingest: an ordered list of slices, each able to load itself.

A :class:`SliceSource` holds no pixels and no pydicom Dataset, only where its bytes
are (upload path, member name, frame) and how to turn them into the display image,
so a plan for thousands of slices is small and ``load()`` can run in any thread.

Names and messages on a plan are already scrubbed (:mod:`ingest.privacy`); the plan
and each slice carry the scrubber so that text produced later (a slice's decode
error, a job's failure message) is scrubbed the same way: ``plan.scrub(text)``.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from ingest.archive import Origin, Skipped
from ingest.dicom import decode_dicom, decode_dicom_view
from ingest.errors import LimitExceeded, SliceError
from ingest.images import decode_image
from ingest.privacy import Scrubber, activate, deactivate, skipped_source, tag
from ingest.views import image_view
from ingest.visible import visible

__all__ = ["MemberReader", "SeriesInfo", "Skipped", "SliceSource", "UploadPlan"]

_MAX_MESSAGE = 300
_T = TypeVar("_T")


def _unchanged(text: str) -> str:
    """The scrubber of a slice or plan built by hand (tests); plan_upload sets the real one."""
    return text


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

    def view(self, frame: int | None) -> tuple[np.ndarray, bytes | None]:
        """The display image and its viewing copy (ingest/views.py) from one read and decode."""
        data = self._read()
        if self.fmt == "dicom":
            return decode_dicom_view(
                data, frame, self.window_center, self.window_width, self.max_pixels
            )
        image = decode_image(data, self.max_pixels)
        return image, image_view(data, image)

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
    scrub: Callable[[str], str] = field(default=_unchanged, repr=False, compare=False)

    def load(self) -> np.ndarray:
        """The display image, uint8 (H, W); raises :class:`SliceError` on a bad slice.

        The message is scrubbed: decoders may quote what they read.
        """
        reader = self.reader
        if reader is None:
            raise SliceError("slice has nothing to load from")
        return self._guarded(lambda: reader(self.frame))

    def load_with_view(self) -> tuple[np.ndarray, bytes | None]:
        """The display image and its viewing copy from ONE decode (ingest/views.py).

        A slice built with a plain reader function (tests) has no viewing copy.
        """
        reader = self.reader
        if not isinstance(reader, MemberReader):
            return self.load(), None
        return self._guarded(lambda: reader.view(self.frame))

    def _guarded(self, decode: Callable[[], _T]) -> _T:
        """Run a decoder; every failure becomes a scrubbed :class:`SliceError`."""
        try:
            return decode()
        except SliceError as exc:
            raise SliceError(self.scrub(str(exc))) from exc
        except LimitExceeded as exc:
            raise SliceError(self.scrub(str(exc))) from exc
        except Exception as exc:  # untrusted bytes: decoders fail in many ways
            raise SliceError(self.scrub(_describe(exc))) from exc


@dataclass(frozen=True)
class UploadPlan:
    """Slices in final order (series, then anatomical order) and what was left out."""

    kind: str
    slices: list[SliceSource]
    skipped: list[Skipped]
    series: list[SeriesInfo]
    origin: Origin | None = field(default=None, repr=False, compare=False)
    scrubber: Scrubber | None = field(default=None, repr=False, compare=False)

    def scrubbed(self, scrubber: Scrubber) -> UploadPlan:
        """This plan with every name and text scrubbed, carrying the scrubber for later text.

        Order and grouping were decided on the real names, so they do not change.
        """

        def shown(text: str | None) -> str | None:
            return visible(scrubber(text)) if text else text

        plan = replace(
            self,
            slices=[
                replace(s, source=scrubber.path(s.source), scrub=scrubber) for s in self.slices
            ],
            skipped=[
                Skipped(skipped_source(scrubber, k.source), visible(scrubber(k.reason)))
                for k in self.skipped
            ],
            series=[
                replace(
                    i,
                    modality=visible(scrubber(i.modality)),
                    description=shown(i.description),
                    note=shown(i.note),
                )
                for i in self.series
            ],
            scrubber=scrubber,
        )
        activate(scrubber)
        return plan

    def scrub(self, text: str) -> str:
        """``text`` as it may leave the worker (log line, error message): see ingest.privacy."""
        return self.scrubber(text) if self.scrubber is not None else text

    def close(self) -> None:
        """Release the archive handles held by loader threads (before deleting the upload),
        and stop scrubbing this process's log records with the plan's scrubber."""
        if self.origin is not None:
            self.origin.close()
        if self.scrubber is not None:
            deactivate(self.scrubber)

    def __enter__(self) -> UploadPlan:
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        """An exception leaving the plan is tagged, so its traceback is scrubbed when logged."""
        if exc is not None and self.scrubber is not None:
            tag(exc, self.scrubber)
        self.close()


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"cannot decode slice: {text}"[:_MAX_MESSAGE]
