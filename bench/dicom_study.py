"""The real DICOM CT study end to end, with ``make run``'s settings: seconds and worker CPU.

Usage: ``python -m bench.dicom_study [--rounds 4] [--data DIR]``

Zips the Lung-PET-CT-Dx study in ``DATA_DIR`` (default ``../shared/data``:
``lung-pet-ct-dx/Lung_Dx-A0001``, 2 series of 64 512x512 slices and preview
files, stored), starts ``bench.e2e``'s throw-away service (SQLite, the Redis at
``REDIS_URL``, one worker, gunicorn; every setting at its default), uploads it
once to warm up, then ``--rounds`` times, printing each round's seconds from
upload to ``succeeded`` and the worker's CPU seconds, and the median. What the
JPEG benchmarks (bench/paths.py) do not show: the DICOM decode, windowing and
the viewing copy of the modality values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import zipfile
from pathlib import Path

from bench.e2e import ROOT, service, time_one

STUDY = Path("lung-pet-ct-dx") / "Lung_Dx-A0001"


def study_zip(data: Path, out: Path) -> Path:
    """The study's files (no LICENSE) in a stored zip, under the study's folder name."""
    root = data / STUDY
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file() and f.name != "LICENSE":
                zf.write(f, f.relative_to(root.parent))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    default_data = os.environ.get("DATA_DIR", str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=Path(default_data))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-dicom-") as tmp:
        archive = study_zip(args.data, Path(tmp) / "study.zip")
        size_mb = archive.stat().st_size / 1e6
        with service("lungct-cnn6", limits=False) as svc:
            time_one(svc, archive)  # warm-up
            seconds = []
            for r in range(args.rounds):
                before = svc.cpu_seconds()["worker"]
                seconds.append(time_one(svc, archive))
                cpu = svc.cpu_seconds()["worker"] - before
                print(f"round {r + 1}: {seconds[-1]:.2f} s, worker CPU {cpu:.2f} s")
    median = statistics.median(seconds)
    print(f"real DICOM study end to end: median {median:.2f} s ({size_mb:.0f} MB zip)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
