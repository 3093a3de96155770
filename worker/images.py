"""What the result pages show: each slice as the model saw it, and heat maps of the top slices.

Uploads are deleted when a job ends, so the worker keeps what a person needs
to look at while it predicts:

* the slice exactly as it went into the model (after windowing, resizing and
  scaling: the model's input size, 8-bit gray, :func:`gray8`) for every
  readable slice (``STORE_SLICE_IMAGES``), and its full-resolution viewing copy
  for the slice viewer (``STORE_SLICE_VIEWS``; ingest/views.py), both made in
  the decode threads and stored by the writer thread as one slice pack per job
  per stored batch (storage/packs.py: raw pixels, nothing encoded while the
  model waits; the API PNG-encodes an image when it is asked for). Each slice
  row names its pack. Jobs stored before packs kept ``images/<i>.png`` and
  ``views/<i>.view`` per slice, and are read from those;
* ``heatmaps/<slice_index>.png``: a Grad-CAM map (models/gradcam.py) for the
  study's top slices and the ``HEATMAP_SLICES_PER_SERIES`` top slices of each
  series (the most suspicious ones), computed from those stored images after
  the summary is known, for the most severe class; the summary then lists them
  (``heatmaps``, and ``heatmap`` on each top slice). Grad-CAM costs about
  eight forward passes per slice on a CPU, so a study pays for a few slices
  only, and single-image jobs get one only with ``HEATMAPS_FOR_IMAGES`` (it
  would dominate the cost of a burst).

All live in the job's storage (storage/) and go when the job is deleted.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
from PIL import Image

from config import Settings
from db.session import session_scope
from db.slices import pack_names
from storage import Storage
from storage.packs import read_pixels

log = logging.getLogger(__name__)


HEATMAP_PNG_LEVEL = 1
"""zlib level of a heat map's PNG: a 128x128 map of the shipped model took 4.3 ms at
Pillow's default (6) and 0.9 ms at 1, for 17.6 instead of 14.7 KB. A study's maps are
made after its last forward pass, while its client waits for the verdict."""


def heatmap_name(slice_index: int) -> str:
    return f"heatmaps/{slice_index}.png"


def gray8(tensor: np.ndarray) -> np.ndarray:
    """A model input (h, w, c) in [0, 1] as the 8-bit gray image a person looks at
    (first channel); what a slice pack keeps (storage/packs.py)."""
    return np.clip(np.rint(tensor[..., 0] * 255.0), 0, 255).astype(np.uint8)


def from_gray8(pixels: np.ndarray, channels: int) -> np.ndarray:
    """A stored slice image back as a model input (h, w, channels) float32 in [0, 1]."""
    scaled = pixels.astype(np.float32) / 255.0
    return np.repeat(scaled[..., None], channels, axis=-1)


def heatmap_png(cam: np.ndarray) -> bytes:
    """A heat map (h, w) in [0, 1] as a red RGBA PNG whose opacity is the map.

    Laid over the slice image of the same size, it shows where the model looked
    without hiding the anatomy where it did not. zlib level 1 (:data:`HEATMAP_PNG_LEVEL`).
    """
    cam = np.clip(cam, 0.0, 1.0)
    rgba = np.zeros((*cam.shape, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = np.rint(200 * (1 - cam)).astype(np.uint8)  # red where strong, orange below
    rgba[..., 3] = np.rint(210 * cam).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, "PNG", compress_level=HEATMAP_PNG_LEVEL)
    return buf.getvalue()


def _groups(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The study and each of its series (a summary without series: itself)."""
    return [summary, *(summary.get("series") or [])]


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
    chosen = {
        job_id: top_slices(summary, settings.heatmap_slices_per_series)
        for job_id, summary in jobs.items()
    }
    with session_scope(settings.database_url) as s:
        packs = {job_id: pack_names(s, job_id, tops) for job_id, tops in chosen.items()}
    wanted: list[tuple[str, int, np.ndarray, int]] = []
    for job_id, tops in chosen.items():
        for index, label in tops.items():
            pixels = read_pixels(storage, job_id, packs[job_id][index], index)
            if pixels is not None and label in classes:
                tensor = from_gray8(pixels, predictor.card.input.channels)
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
