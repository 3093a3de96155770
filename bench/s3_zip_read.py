"""How the worker should read a zipped study from S3: download it, or ranged reads?

    .venv/bin/python -m bench.s3_zip_read [STUDY_FOLDER] [--rounds 5]

Zips STUDY_FOLDER (default: the 128-slice DICOM study Lung_Dx-A0001 under
DATA_DIR) with deflate, as ``zip -r`` does, stores it through ``S3Storage`` in
a local moto server (a real HTTP S3 endpoint), and times, alternating the
variants and taking medians:

* **download**: ``S3Storage.local_file`` (download to an anonymous temporary
  file, 4 parallel 8 MB ranged GETs), then every member read in full by 2
  threads (DECODE_THREADS), each with its own ``ZipFile`` handle as the worker's;
* **ranged**: no local copy; each thread opens the object through a seekable
  reader that issues one ranged GET per 256 KB buffer refill, and reads every
  member in full the same way;
* **download + plan + decode**: the worker's real path on the downloaded file
  (``plan_upload`` and ``SliceSource.load`` of every slice), for scale.

It also times the API's upload check on the same zip: ``inspect_upload`` on
werkzeug's spooled temporary file through ``/proc/self/fd`` (what the API
does) against a copy to a named temporary file first.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.s3_server import moto_server, s3_env

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR", str(ROOT.parent / "shared" / "data")))
STUDY = DATA_DIR / "lung-pet-ct-dx" / "Lung_Dx-A0001"
THREADS = 2
RANGE_BUFFER = 256 * 1024


class RangedObject(io.RawIOBase):
    """A seekable, read-only view of one S3 object: each read is a ranged GET."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        self.pos = 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size or len(buffer) == 0:
            return 0
        end = min(self.size, self.pos + len(buffer)) - 1
        answer = self.client.get_object(
            Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-{end}"
        )
        data = answer["Body"].read()
        self.requests += 1
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _read_all_members(open_zip: Callable[[], zipfile.ZipFile]) -> int:
    """Read every member in full, split over THREADS threads with a handle each."""
    with open_zip() as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]

    def part(chunk: list[str]) -> int:
        with open_zip() as zf:
            return sum(len(zf.read(name)) for name in chunk)

    with ThreadPoolExecutor(THREADS) as pool:
        return sum(pool.map(part, [names[i::THREADS] for i in range(THREADS)]))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=STUDY)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    archive = work / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(args.folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(args.folder.parent))
    size_mb = archive.stat().st_size / 1024**2

    with moto_server(work / "moto.log") as endpoint, ExitStack() as closing:
        os.environ.update(s3_env(endpoint))
        from config import Settings
        from ingest import inspect_upload, plan_upload
        from storage import readable_path
        from storage.s3 import S3Storage, s3_client

        client = s3_client()
        client.create_bucket(Bucket="bench")
        storage = S3Storage("bench", "uploads")
        with archive.open("rb") as f:
            save_s = _timed(lambda: storage.save("job", "study.zip", f))
        key = "job/upload.zip"
        settings = Settings()

        def download() -> None:
            with storage.local_file(key) as path:
                _read_all_members(lambda: zipfile.ZipFile(path))

        requests: list[int] = []

        def ranged() -> None:
            readers: list[RangedObject] = []

            def open_zip() -> zipfile.ZipFile:
                raw = RangedObject(client, "bench", storage.object_key(key))
                readers.append(raw)
                return zipfile.ZipFile(io.BufferedReader(raw, RANGE_BUFFER))

            _read_all_members(open_zip)
            requests.append(sum(r.requests for r in readers))

        def worker_path() -> None:
            with storage.local_file(key) as path, plan_upload(path, settings, "upload.zip") as plan:
                for source in plan.slices:
                    source.load()

        # What werkzeug hands the API: a spooled temporary file (on disk above 500 KB).
        spooled = closing.enter_context(tempfile.SpooledTemporaryFile(max_size=500 * 1024))
        with archive.open("rb") as f:
            shutil.copyfileobj(f, spooled)
        spooled.seek(0)

        def check_in_place() -> None:
            with readable_path(spooled) as path:  # type: ignore[arg-type]
                inspect_upload(path, "study.zip", settings.limits)

        def check_copy() -> None:
            spooled.seek(0)
            with tempfile.NamedTemporaryFile() as copy:
                shutil.copyfileobj(spooled, copy, 1024**2)
                copy.flush()
                inspect_upload(Path(copy.name), "study.zip", settings.limits)

        variants = {
            "worker: download, then read every member": download,
            f"worker: ranged GETs ({RANGE_BUFFER // 1024} KB buffer), read every member": ranged,
            "worker: download + plan_upload + decode every slice": worker_path,
            "API check: inspect werkzeug's temp file (/proc/self/fd)": check_in_place,
            "API check: copy to a named temp file, then inspect": check_copy,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(_timed(fn))
        # What one ranged GET costs this server: from the study object, and from a small one.
        client.put_object(Bucket="bench", Key="small", Body=os.urandom(RANGE_BUFFER))
        probe = f"bytes=0-{RANGE_BUFFER - 1}"
        get_ms = {
            name: 1000
            * statistics.median(
                _timed(
                    lambda k=k: client.get_object(Bucket="bench", Key=k, Range=probe)["Body"].read()
                )
                for _ in range(10)
            )
            for name, k in (("study", storage.object_key(key)), ("256 KB", "small"))
        }

    shutil.rmtree(work, ignore_errors=True)
    members = sum(1 for p in args.folder.rglob("*") if p.is_file())
    print(f"study: {args.folder.name}, {members} files, zip {size_mb:.1f} MB (deflated)")
    print(f"S3Storage.save (multipart upload to moto): {save_s:.2f} s")
    print(f"{args.rounds} rounds, alternating; median (best) in seconds")
    for name, values in times.items():
        print(f"  {name:<72} {statistics.median(values):7.3f} ({min(values):.3f})")
    print(f"  ranged: {statistics.median(requests):.0f} GET requests per read of the study")
    print(
        f"  one 256 KB ranged GET: {get_ms['study']:.1f} ms from the study object, "
        f"{get_ms['256 KB']:.1f} ms from a 256 KB object (median of 10)"
    )


if __name__ == "__main__":
    main()
