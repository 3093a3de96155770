"""How cost grows with study size, and what a second worker process adds.

Usage: ``python -m bench.scale [--sizes 100 1000 5000] [--model NAME]
[--workers-only | --growth-only]``

(a) Growth: one service, one worker; zips of 100, 1,000 and 5,000 slices (the
    IQ-OTH/NCCD slices from DATA_DIR repeated under new names, stored zip) go
    through the whole service one after another. For each: wall time from
    upload to ``succeeded``, slices per second, and the worker pool process's
    resident memory after the job and its peak (VmRSS / VmHWM from /proc).
    Memory should stay flat: slices are decoded a window ahead and stored per
    batch, never held for the whole study.
(b) Workers: the same 1,000-slice zip submitted twice at once, to a service
    with 1 worker process and to one with 2 (each its own model copy):
    slices per second over both jobs.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from bench.e2e import Service, service, time_one
from bench.throughput import pick_slices


def make_study(n: int, out: Path) -> Path:
    """A stored zip of ``n`` real slices (the 100 picked ones, repeated under new names)."""
    files = pick_slices(100)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.write(files[i % len(files)], f"study/slice_{i:05}.jpg")
    return out


def pool_memory_mb(svc: Service) -> tuple[float, float]:
    """(current, peak) resident memory of the first worker's pool process, in MB."""
    main = svc.workers[0].pid
    children = subprocess.run(
        ["pgrep", "-P", str(main)], capture_output=True, text=True, check=False
    ).stdout.split()
    status = Path(f"/proc/{children[0]}/status").read_text() if children else ""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def mb(key: str) -> float:
        return int(fields.get(key, "0 kB").split()[0]) / 1024

    return mb("VmRSS"), mb("VmHWM")


def growth(model: str, sizes: list[int], tmp: Path) -> None:
    print("\n(a) growth with study size (one worker)")
    print(f"{'slices':>7} {'seconds':>8} {'slices/s':>9} {'pool RSS MB':>12} {'peak MB':>8}")
    with service(model) as svc:
        time_one(svc, make_study(50, tmp / "warm.zip"))
        for n in sizes:
            seconds = time_one(svc, make_study(n, tmp / f"s{n}.zip"), poll_s=0.1)
            rss, peak = pool_memory_mb(svc)
            print(f"{n:>7} {seconds:>8.1f} {n / seconds:>9.0f} {rss:>12.0f} {peak:>8.0f}")


def workers(model: str, tmp: Path, n: int = 1000) -> None:
    print(f"\n(b) two {n}-slice studies at once, 1 vs 2 worker processes")
    archive = make_study(n, tmp / "w.zip")
    for count in (1, 2):
        with service(model, workers=count) as svc:
            time_one(svc, make_study(50, tmp / "warm.zip"))
            start = time.perf_counter()
            threads = [threading.Thread(target=time_one, args=(svc, archive, 0.1)) for _ in (1, 2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rate = 2 * n / (time.perf_counter() - start)
            print(f"  {count} worker process(es): {rate:6.0f} slices/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--model", default="lungct-cnn6")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--growth-only", action="store_true")
    group.add_argument("--workers-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if not args.workers_only:
            growth(args.model, args.sizes, Path(tmp))
        if not args.growth_only:
            workers(args.model, Path(tmp))


if __name__ == "__main__":
    main()
