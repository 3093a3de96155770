"""Per-image predict (the seeds' way) vs the worker's batched path, and end to end.

Usage: ``python -m bench.throughput [--n 100] [--model NAME] [--e2e]``

On the same slices from DATA_DIR/iqoth-nccd and the same model it prints:

(a) images/s calling ``model.predict`` once per image (decode + preprocess +
    predict, one at a time), as the seed projects do;
(b) images/s of the worker's batched path (``worker.runner``: ingest plan of
    the zip, thread-pool decoding a window ahead, ``predict_on_batch`` per
    batch), in-process, no queue, no database: the bare batched model time;
(c) with ``--e2e``: a throwaway service (SQLite, Redis at REDIS_URL, a real
    worker subprocess, gunicorn) and the wall time from POSTing the zip to
    reading ``succeeded`` (polling every 20 ms), and its ratio to (b).

Each pair is timed alternately (a, b, a, b, ...; then c, b, c, b, ...) so that
load drifting on a shared machine affects both sides alike; medians are
compared, best times are shown too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from config import Settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR", str(ROOT.parent / "shared" / "data")))


def pick_slices(n: int) -> list[Path]:
    """``n`` slices spread over the three classes, in a fixed order."""
    files = sorted((DATA_DIR / "iqoth-nccd").glob("*/*.jpg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def make_zip(files: list[Path], out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in files:
            zf.write(f, f"study/{f.name}")
    return out


def per_image(files: list[Path], predictor) -> float:  # type: ignore[no-untyped-def]
    """Seconds for decode + preprocess + ``model.predict`` one image at a time."""
    from models.data import load_gray
    from models.preprocessing import preprocess

    spec = predictor.card.input
    start = time.perf_counter()
    for f in files:
        x = preprocess(load_gray(f), spec)
        predictor.model.predict(x[None], verbose=0)
    return time.perf_counter() - start


def batched(archive: Path, predictor, settings: Settings) -> float:  # type: ignore[no-untyped-def]
    """Seconds for the worker's own plan -> decode-ahead -> batched predict path."""
    from ingest import plan_upload
    from storage import open_storage
    from worker.inference import batch_size
    from worker.runner import Context, _batches, _decode_ahead

    ctx = Context(settings, open_storage(settings), lambda _: predictor, lambda *_: None)
    size = batch_size(predictor, settings.inference_batch_size)
    start = time.perf_counter()
    with plan_upload(archive, settings) as plan:
        decoded = _decode_ahead([("bench", s) for s in plan.slices], predictor, ctx, 2 * size)
        for batch in _batches(decoded, size):
            predictor.predict(np.stack([d.tensor for d in batch if d.tensor is not None]))
    return time.perf_counter() - start


def _interleaved(first, second, repeat: int) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Time two callables alternately, so drifting machine load hits both alike."""
    a, b = [], []
    for _ in range(repeat):
        a.append(first())
        b.append(second())
    return a, b


def _report(name: str, n: int, times: list[float]) -> None:
    best, med = min(times), statistics.median(times)
    print(f"{name}: {n / med:8.1f} images/s median ({med:.3f} s; best {best:.3f} s)")


Timed = tuple[str, Callable[[], float]]


def _side_by_side(n: int, repeat: int, slow: Timed, fast: Timed) -> float:
    """Time two labelled paths alternately, print both; the ratio of their medians."""
    t_slow, t_fast = _interleaved(slow[1], fast[1], repeat)
    _report(slow[0], n, t_slow)
    _report(fast[0], n, t_fast)
    return statistics.median(t_slow) / statistics.median(t_fast)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100, help="number of slices")
    parser.add_argument("--model", default=None, help="model name (default: DEFAULT_MODEL)")
    parser.add_argument("--repeat", type=int, default=7, help="timings per path (median shown)")
    parser.add_argument("--e2e", action="store_true", help="also time the whole service")
    args = parser.parse_args()

    from config import get_settings
    from worker.inference import batch_size, get_predictor, warm_up

    settings = get_settings()
    name = args.model or settings.default_model
    files = pick_slices(args.n)
    tmp = tempfile.TemporaryDirectory(prefix="bench-")
    archive = make_zip(files, Path(tmp.name) / "study.zip")
    warm_up(name, settings)
    predictor = get_predictor(name, settings.models_dirs)
    per_image(files[:5], predictor)  # warm the per-image path too
    batched(archive, predictor, settings)
    n = len(files)
    print(
        f"model {predictor.card.name} {predictor.card.version}, {n} slices, "
        f"batch size {batch_size(predictor, settings.inference_batch_size)} "
        f"(INFERENCE_BATCH_SIZE={settings.inference_batch_size}), "
        f"decode threads {settings.decode_threads}"
    )
    batch_path: Timed = (
        "(b) worker batched path     ",
        lambda: batched(archive, predictor, settings),
    )
    single_path: Timed = ("(a) per-image model.predict ", lambda: per_image(files, predictor))
    ratio = _side_by_side(n, args.repeat, single_path, batch_path)
    print(f"    batched / per-image speed-up (medians): {ratio:.1f}x")
    if args.e2e:
        from bench.e2e import service, time_one

        with service(name) as svc:
            time_one(svc, archive)  # first job of a fresh service: connections, imports
            e2e_path: Timed = ("(c) end to end, HTTP+queue+DB", lambda: time_one(svc, archive))
            ratio = _side_by_side(n, args.repeat, e2e_path, batch_path)
        print(f"    end-to-end / bare batched time (medians): {ratio:.2f}x")
    tmp.cleanup()


if __name__ == "__main__":
    main()
