"""What the result pages show: each slice as the model saw it, and heat maps of the top slices.

Uploads are deleted when a job ends, so the worker keeps what a person needs
to look at while it predicts:

* ``images/<slice_index>.png``: the slice exactly as it went into the model
  (after windowing, resizing and scaling: the model's input size, 8-bit), one
  small PNG per readable slice (``STORE_SLICE_IMAGES``);
* ``heatmaps/<slice_index>.png``: a Grad-CAM map (models/gradcam.py) for the
  study's top slices and the ``HEATMAP_SLICES_PER_SERIES`` top slices of each
  series (the most suspicious ones), computed from those stored images after
  the summary is known, for the most severe class; the summary then lists them
  (``heatmaps``, and ``heatmap`` on each top slice). Grad-CAM costs about
  eight forward passes per slice on a CPU, so a study pays for a few slices
  only, and single-image jobs get one only with ``HEATMAPS_FOR_IMAGES`` (it
  would dominate the cost of a burst).

* ``views/<slice_index>.view``: the full-resolution viewing copy for the slice
  viewer (``STORE_SLICE_VIEWS``; ingest/views.py), made in the decode threads and
  stored with the slice images (worker/runner.py).

All live in the job's storage (storage/) and go when the job is deleted.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

from config import Settings
from storage import Storage

log = logging.getLogger(__name__)


def image_name(slice_index: int) -> str:
    return f"images/{slice_index}.png"


def heatmap_name(slice_index: int) -> str:
    return f"heatmaps/{slice_index}.png"


def to_png(tensor: np.ndarray) -> bytes:
    """A model input (h, w, c) in [0, 1] as an 8-bit grayscale PNG (first channel)."""
    pixels = np.clip(np.rint(tensor[..., 0] * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def from_png(data: bytes, channels: int) -> np.ndarray:
    """A stored slice image back as a model input (h, w, channels) float32 in [0, 1]."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0
    return np.repeat(pixels[..., None], channels, axis=-1)


def heatmap_png(cam: np.ndarray) -> bytes:
    """A heat map (h, w) in [0, 1] as a red RGBA PNG whose opacity is the map.

    Laid over the slice image of the same size, it shows where the model looked
    without hiding the anatomy where it did not.
    """
    cam = np.clip(cam, 0.0, 1.0)
    rgba = np.zeros((*cam.shape, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = np.rint(200 * (1 - cam)).astype(np.uint8)  # red where strong, orange below
    rgba[..., 3] = np.rint(210 * cam).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, "PNG")
    return buf.getvalue()


def store_images(storage: Storage, job_id: str, decoded: Iterable[Any]) -> None:
    """Store the model's view of every readable slice of a batch (``Decoded`` items)."""
    for d in decoded:
        if d.tensor is not None:
            storage.put(job_id, image_name(d.source.index), to_png(d.tensor))


def _groups(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The study and each of its series (a summary without series: itself)."""
    return [summary, *(summary.get("series") or [])]


def view_name(slice_index: int) -> str:
    return f"views/{slice_index}.view"


def top_slices(summary: dict[str, Any], per_series: int) -> dict[int, str]:
    """slice_index -> class to explain: the top slices of the study and of each series.

    The study's ``top_slices`` (all of them, the ones the result page shows)
    and each series' first ``per_series``: the most suspicious slices, for the
    class that ranks them (``top_class``, the most severe), so the map shows
    what looks suspicious rather than what looks normal.
    """
    chosen: dict[int, str] = {}
    for depth, group in enumerate(_groups(summary)):
        cls = group.get("top_class") or group.get("label")
        tops = group.get("top_slices") or []
        for top in tops if depth == 0 else tops[:per_series]:
            if cls is not None:
                chosen.setdefault(int(top["slice_index"]), cls)
    return chosen


def mark_heatmaps(summary: dict[str, Any], stored: set[int]) -> None:
    """Say in the summary which top slices have a heat map, so no client asks for a missing one."""
    summary["heatmaps"] = sorted(stored)
    for group in _groups(summary):
        for top in group.get("top_slices") or []:
            top["heatmap"] = int(top["slice_index"]) in stored


def store_heatmaps(
    jobs: dict[str, dict[str, Any]], predictor: Any, storage: Storage, settings: Settings
) -> None:
    """Grad-CAM maps for the top slices of each job (:func:`top_slices`), in one backward pass.

    ``jobs`` maps job ID -> its summary, which is updated in place
    (:func:`mark_heatmaps`): store the summary after this call. Missing images
    (STORE_SLICE_IMAGES off) are skipped; a failure is logged and never fails a
    job that already succeeded.
    """
    started = time.perf_counter()
    classes = list(predictor.card.classes)
    wanted: list[tuple[str, int, np.ndarray, int]] = []
    for job_id, summary in jobs.items():
        for index, label in top_slices(summary, settings.heatmap_slices_per_series).items():
            data = storage.get(job_id, image_name(index))
            if data is not None and label in classes:
                tensor = from_png(data, predictor.card.input.channels)
                wanted.append((job_id, index, tensor, classes.index(label)))
    stored: dict[str, set[int]] = {job_id: set() for job_id in jobs}
    try:
        if wanted:
            cams = predictor.explain(np.stack([w[2] for w in wanted]), [w[3] for w in wanted])
            for (job_id, index, _, _), cam in zip(wanted, cams, strict=True):
                storage.put(job_id, heatmap_name(index), heatmap_png(cam))
                stored[job_id].add(index)
    except Exception:
        log.exception("heat maps failed for jobs %s", sorted(jobs))
    for job_id, summary in jobs.items():
        mark_heatmaps(summary, stored[job_id])
    if not wanted:
        return
    log.info(
        "heat maps for %d slices of %d jobs in %.2f s",
        len(wanted),
        len(jobs),
        time.perf_counter() - started,
    )
