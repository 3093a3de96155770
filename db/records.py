"""One slice's result, defined once.

:class:`SliceResult` is what the worker produces for a slice, what a
``slice_predictions`` row holds (db/models.py, checked by a test; the row
also names the pack that stores the slice's image, storage/packs.py), what the
API answers for it (api/schemas.py builds ``SliceOut`` from these fields),
what the study summary reads (worker/summary.py) and what a CSV export
writes per slice. The ``lungct`` client keeps its own copy (it imports
nothing of the service); a test checks it against ``/openapi.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class SliceResult:
    """The model's output for one slice of a job, or why the slice could not be read."""

    slice_index: int = field(metadata={"description": "position in the job's slice order"})
    source: str = field(metadata={"description": "where the slice came from in the upload"})
    series_uid: str | None = field(
        default=None, metadata={"description": "DICOM SeriesInstanceUID"}
    )
    instance_number: int | None = field(
        default=None, metadata={"description": "DICOM InstanceNumber"}
    )
    slice_position: float | None = field(
        default=None, metadata={"description": "position along the series axis (mm)"}
    )
    frame: int | None = field(
        default=None, metadata={"description": "frame of a multi-frame DICOM file"}
    )
    label: str | None = field(
        default=None, metadata={"description": "the class with the highest probability"}
    )
    probabilities: dict[str, float] | None = field(
        default=None, metadata={"description": "calibrated probability of each class"}
    )
    ood_score: float | None = field(
        default=None,
        metadata={"description": "Distance from the training data (about 1 = typical)"},
    )
    out_of_distribution: bool | None = field(
        default=None,
        metadata={"description": "ood_score above the model card's threshold, or input checks"},
    )
    error: str | None = field(
        default=None, metadata={"description": "why the slice could not be read"}
    )

    def row(self, job_id: str, pack: str | None = None) -> dict[str, Any]:
        """The ``slice_predictions`` row of this result, with the name of the pack
        that stores its image and viewing copy (storage/packs.py; not part of the
        result: the API never shows it)."""
        return {"job_id": job_id, **asdict(self), "pack": pack}

    @classmethod
    def of(cls, row: Any) -> SliceResult:
        """The result a stored row (or any object with these attributes) holds."""
        return cls(**{name: getattr(row, name) for name in SLICE_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SLICE_FIELDS = tuple(f.name for f in fields(SliceResult))
