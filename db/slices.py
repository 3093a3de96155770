"""Where a job's slices are stored: the pack each slice row names (storage/packs.py).

The readers of slice images and viewing copies (the API's slice routes, the
worker's heat maps, the DICOM node's heat-map overlays) ask here for the pack
names, close the session, then read through :func:`storage.packs.read_pixels`
and :func:`storage.packs.read_view`, which fall back to the per-slice files of
jobs stored before packs when the name is None.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import SlicePrediction


def pack_names(s: Session, job_id: str, indexes: Iterable[int]) -> dict[int, str | None]:
    """Each slice index's pack; None for a slice stored before packs, one that could
    not be decoded, or one with no row (not stored yet, or never)."""
    wanted = set(indexes)
    if not wanted:
        return {}
    q = select(SlicePrediction.slice_index, SlicePrediction.pack).where(
        SlicePrediction.job_id == job_id, SlicePrediction.slice_index.in_(wanted)
    )
    found = {int(index): pack for index, pack in s.execute(q)}
    return {index: found.get(index) for index in wanted}
