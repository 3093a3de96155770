"""Secondary Capture images of the heat maps, for viewers without SR support (optional).

With DICOM_HEATMAP_IMAGES=true, each top slice of the study that has a Grad-CAM
map (worker/images.py: the slice image in the job's slice pack, storage/packs.py,
and ``heatmaps/<i>.png``) becomes an RGB Secondary Capture image: the slice as the
model saw it with the map laid over it. They form their own series (number 9950 +
version) in the same study, are sent with the SR, and carry no patient identifiers
until send time (:func:`dicomnet.sr.with_patient`), like the SR.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session

from db.slices import pack_names
from dicomnet.sr import MANUFACTURER
from storage import Storage
from storage.packs import read_pixels


def heatmap_images(
    s: Session,
    storage: Storage,
    job_id: str,
    summary: Mapping[str, Any],
    study_uid: str,
    version: int,
) -> list[Dataset]:
    """One SC image per top slice with a stored heat map (none without maps)."""
    series_uid = generate_uid()
    out: list[Dataset] = []
    indexes = [int(item["slice_index"]) for item in summary.get("top_slices") or []]
    packs = pack_names(s, job_id, indexes)
    for index in indexes:
        heat = storage.get(job_id, f"heatmaps/{index}.png")
        base = None if heat is None else read_pixels(storage, job_id, packs[index], index)
        if base is None or heat is None:
            continue
        out.append(
            hd.sc.SCImage(
                pixel_array=overlay(base, heat),
                photometric_interpretation="RGB",
                bits_allocated=8,
                coordinate_system="PATIENT",
                patient_orientation=("L", "P"),
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                series_number=9950 + version,
                sop_instance_uid=generate_uid(),
                instance_number=len(out) + 1,
                manufacturer=MANUFACTURER,
                series_description=f"AI lung CT heat maps v{version} (research use)",
            )
        )
    return out


def overlay(pixels: np.ndarray, heat_png: bytes) -> np.ndarray:
    """The gray slice (h, w) with the RGBA heat map composited over it, as RGB uint8 (h, w, 3)."""
    base = Image.fromarray(pixels, mode="L").convert("RGBA")
    heat = Image.open(io.BytesIO(heat_png)).convert("RGBA").resize(base.size)
    return np.asarray(Image.alpha_composite(base, heat).convert("RGB"), dtype=np.uint8)
