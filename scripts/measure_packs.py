"""CPU per slice of storing a batch's slice images and viewing copies: files vs. one pack.

    PYTHONPATH=$PWD .venv/bin/python scripts/measure_packs.py [DATA_DIR]

On batches of 16 real IQ-OTH/NCCD JPEG slices, decoded and preprocessed for
the shipped model as the worker does (with their viewing copies), it times,
alternating in one run, single-threaded:

* files (before storage/packs.py): a PNG of each model input plus two files a
  slice in a local storage folder (``images/<i>.png``, ``views/<i>.view``);
* pack: each model input's 8-bit pixels and one ``packs/...pack`` file a batch;

and the API's side of reading one slice image back (the PNG file, or two ranged
reads of a pack plus the PNG encode the API now does). Prints medians of the
CPU milliseconds per slice (``time.process_time``: user + system). Runs in
seconds (docs/benchmarks.md).
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from api.jobs import gray_png
from ingest.images import decode_image
from ingest.views import image_view
from models.preprocessing import preprocess
from models.registry import Registry
from storage import LocalStorage, packs
from worker.images import gray8

BATCH = 16
ROUNDS = 25
MAX_PIXELS = 50_000_000
Slice = tuple[np.ndarray, bytes]  # the model input, the viewing copy


def _png(tensor: np.ndarray) -> bytes:
    """What worker/images.py ``to_png`` stored per slice before packs."""
    pixels = np.clip(np.rint(tensor[..., 0] * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def store_files(storage: LocalStorage, job: str, batch: list[Slice]) -> None:
    """What the worker did before packs: a PNG in the decode thread, two files a slice."""
    for i, (tensor, view) in enumerate(batch):
        storage.put(job, f"images/{i}.png", _png(tensor))
        storage.put(job, f"views/{i}.view", view)


def store_pack(storage: LocalStorage, job: str, batch: list[Slice]) -> None:
    """What the worker does now: 8-bit pixels in the decode thread, one pack a batch."""
    slices = [packs.PackSlice(i, gray8(t), v) for i, (t, v) in enumerate(batch)]
    packs.write(storage, job, slices)


def read_file(storage: LocalStorage, job: str, index: int) -> bytes | None:
    """The image route before packs: the stored PNG as it is."""
    return storage.get(job, f"images/{index}.png")


def read_pack(storage: LocalStorage, job: str, index: int, pack: str) -> bytes:
    """The image route now: the pixels from the pack (two ranged reads), PNG-encoded."""
    pixels = packs.read_pixels(storage, job, pack, index)
    assert pixels is not None
    return gray_png(pixels)


def _cpu_ms(work: Callable[[], object], slices: int) -> float:
    """CPU milliseconds per slice of ``work`` (user + system)."""
    started = time.process_time()
    work()
    return (time.process_time() - started) * 1000 / slices


def _round(storage: LocalStorage, batch: list[Slice], flip: bool) -> dict[str, float]:
    """Store one batch both ways (in alternating order), then read every image back."""
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    out: dict[str, float] = {}
    order = [("files", old, store_files), ("pack", new, store_pack)]
    for name, job, store in order[::-1] if flip else order:
        out[name] = _cpu_ms(lambda: store(storage, job, batch), len(batch))  # noqa: B023
    [pack] = [p.relative_to(storage.root / new).as_posix() for p in storage.root.glob(f"{new}/*/*")]
    out["read file"] = _cpu_ms(lambda: [read_file(storage, old, i) for i in range(BATCH)], BATCH)
    out["read pack"] = _cpu_ms(
        lambda: [read_pack(storage, new, i, pack) for i in range(BATCH)], BATCH
    )
    out["KiB files"] = _kib(storage.root / old)
    out["KiB pack"] = _kib(storage.root / new)
    return out


def _kib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / BATCH / 1024


def main(data: Path) -> None:
    card = Registry([Path("models/store")]).get("lungct-cnn6")
    every = sorted((data / "iqoth-nccd").glob("*/*.jpg"))
    files = every[:: max(1, len(every) // (BATCH * 4))][: BATCH * 4]  # all three classes
    batches: list[list[Slice]] = [[] for _ in range(4)]
    for n, path in enumerate(files):
        raw = path.read_bytes()
        image = decode_image(raw, MAX_PIXELS)
        batches[n // BATCH].append((preprocess(image, card.input), image_view(raw, image)))
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = LocalStorage(Path(tmp))
        for r in range(ROUNDS):
            rounds.append(_round(storage, batches[r % len(batches)], flip=bool(r % 2)))
    print(f"{ROUNDS} rounds, batches of {BATCH} real JPEG slices, model input {card.input}")
    for name in ("files", "pack", "read file", "read pack"):
        values = [r[name] for r in rounds]
        print(
            f"  {name:<10} {statistics.median(values):6.3f} ms CPU/slice "
            f"(median; min {min(values):.3f}, max {max(values):.3f})"
        )
    for name in ("KiB files", "KiB pack"):
        print(f"  {name:<10} {statistics.median(r[name] for r in rounds):6.1f} stored per slice")
    print("  objects per batch: files 32 (two PUTs a slice on S3), pack 1")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DATA_DIR", "../shared/data")))
