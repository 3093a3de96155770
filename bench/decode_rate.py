"""Decode rate of ingest on the real study (slices/s with 1 and N threads).

Zips ``lung-pet-ct-dx/Lung_Dx-A0001/04-04-2007-NA-Chest-07990`` from DATA_DIR
(default ``../shared/data``) into a temporary file, as a user would upload it,
then times ``plan_upload`` and ``SliceSource.load()`` over every slice.

    .venv/bin/python bench/decode_rate.py [--threads 1 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.settings import PROJECT_ROOT, Settings
from ingest import plan_upload

STUDY = Path("lung-pet-ct-dx/Lung_Dx-A0001/04-04-2007-NA-Chest-07990")


def zip_study(folder: Path, target: Path, compression: int) -> None:
    """Zip the study folder the way an export tool would (relative member names)."""
    with zipfile.ZipFile(target, "w", compression=compression) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent).as_posix())


def rate(plan_path: Path, settings: Settings, threads: int, repeat: int) -> float:
    """Best slices/s over ``repeat`` full passes with a pool of ``threads``."""
    plan = plan_upload(plan_path, settings)
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for image in pool.map(lambda s: s.load(), plan.slices):
                assert image.dtype.name == "uint8"
        best = max(best, len(plan.slices) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = Path(os.environ.get("DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
    folder = data / STUDY
    if not folder.is_dir():
        sys.exit(f"study not found: {folder} (set DATA_DIR)")
    settings = Settings()
    print(f"cpus={os.cpu_count()} study={STUDY}")
    for label, compression in (("stored", zipfile.ZIP_STORED), ("deflated", zipfile.ZIP_DEFLATED)):
        with tempfile.TemporaryDirectory() as tmp:
            upload = Path(tmp) / "study.zip"
            zip_study(folder, upload, compression)
            start = time.perf_counter()
            n = len(plan_upload(upload, settings).slices)
            plan_s = time.perf_counter() - start
            rates = {t: rate(upload, settings, t, args.repeat) for t in args.threads}
        cells = "  ".join(f"{t} thread(s): {r:6.1f} slices/s" for t, r in rates.items())
        print(f"{label:9s} zip, {n} slices, plan {plan_s * 1000:5.0f} ms  {cells}")


if __name__ == "__main__":
    main()
