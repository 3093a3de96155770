"""CPU time and bytes per slice of the slice viewer's viewing copy (docs/review.md, "Cost").

    PYTHONPATH=$PWD .venv/bin/python scripts/measure_views.py [DATA_DIR]

Decodes every slice of the real DICOM study and of the IQ-OTH/NCCD JPEGs twice,
without and with the viewing copy (ingest/views.py), and prints the extra CPU
milliseconds and the stored bytes per slice; then the wall time per slice of
storing the copies in a local storage folder (storage.LocalStorage.put, what the
worker's writer thread adds). Runs in well under a minute.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from ingest.dicom import decode_dicom, decode_dicom_view
from ingest.images import decode_image
from ingest.views import image_view
from storage.local import LocalStorage

MAX_PIXELS = 50_000_000
CENTER, WIDTH = 150.0, 500.0


def _cpu_ms(work: Callable[[bytes], object], blobs: Sequence[bytes]) -> float:
    started = time.process_time()
    for data in blobs:
        work(data)
    return (time.process_time() - started) * 1000 / len(blobs)


def _row(name: str, blobs: Sequence[bytes], plain: Callable, viewed: Callable) -> None:
    base = min(_cpu_ms(plain, blobs) for _ in range(3))
    with_view = min(_cpu_ms(viewed, blobs) for _ in range(3))
    stored = [len(viewed(b)[1] or b"") for b in blobs]
    print(
        f"{name:<28} {len(blobs):>5} slices  decode {base:6.2f} ms  with view {with_view:6.2f} ms"
        f"  (+{with_view - base:5.2f} ms)  view {sum(stored) / len(stored) / 1024:7.1f} KiB/slice"
        f"  (upload {sum(map(len, blobs)) / len(blobs) / 1024:7.1f} KiB/slice)"
    )


def _store_ms(name: str, views: Sequence[bytes]) -> None:
    """Wall time per slice of writing the copies as the worker does (one job folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        storage, job = LocalStorage(Path(tmp)), str(uuid.uuid4())
        started = time.perf_counter()
        for i, view in enumerate(views):
            storage.put(job, f"views/{i}.view", view)
        took = (time.perf_counter() - started) * 1000 / len(views)
    print(f"{name:<28} store {took:5.2f} ms/slice (local folder)")


def main(data: Path) -> None:
    dicom = [p.read_bytes() for p in sorted((data / "lung-pet-ct-dx").rglob("*.dcm"))]
    jpegs = [p.read_bytes() for p in sorted((data / "iqoth-nccd").glob("*/*.jpg"))]
    _row(
        "DICOM (Lung_Dx-A0001)",
        dicom,
        lambda b: decode_dicom(b, None, CENTER, WIDTH, MAX_PIXELS),
        lambda b: decode_dicom_view(b, None, CENTER, WIDTH, MAX_PIXELS),
    )
    _row(
        "JPEG (IQ-OTH/NCCD)",
        jpegs,
        lambda b: decode_image(b, MAX_PIXELS),
        lambda b: (img := decode_image(b, MAX_PIXELS), image_view(b, img)),
    )
    _store_ms(
        "DICOM (Lung_Dx-A0001)",
        [decode_dicom_view(b, None, CENTER, WIDTH, MAX_PIXELS)[1] or b"" for b in dicom],
    )
    _store_ms("JPEG (IQ-OTH/NCCD)", [image_view(b, decode_image(b, MAX_PIXELS)) for b in jpegs])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DATA_DIR", "../shared/data")))
