"""Bursts of single images vs one zip, through the whole service, side by side.

Usage: ``python -m bench.burst [--n 100] [--clients 4] [--rounds 2] [--model NAME]
[--compare-off]``

In one throwaway service (SQLite, Redis at REDIS_URL, real worker, gunicorn):

(a) ``n`` IQ-OTH/NCCD slices sent as ``n`` single-image jobs by ``clients``
    concurrent clients (each submits, polls every 20 ms until the job ended,
    then takes the next image): images/s over the whole burst;
(b) the same slices as one zip, one job: images/s from upload to ``succeeded``;
(c) single-image latency at low load: one client, one image at a time.

(a) and (b) alternate for ``rounds`` rounds (medians compared). The figure of
merit is (a)/(b): how close single images come to the batched study path.
``--compare-off`` first runs the same in a service with cross-request
micro-batching switched off (``MICROBATCH_MAX_JOBS=1``), i.e. one forward
pass per job.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.e2e import Service, service, time_one
from bench.throughput import make_zip, pick_slices


def _wait(svc: Service, job_id: str, poll_s: float = 0.02) -> dict:
    url = f"{svc.base}/api/v1/jobs/{job_id}"
    while True:
        job = svc.http.get(url, timeout=30).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(poll_s)


def single(svc: Service, image: Path) -> float:
    """Seconds from upload to the job's end, for one image."""
    start = time.perf_counter()
    with image.open("rb") as fh:
        r = svc.http.post(f"{svc.base}/api/v1/jobs", files={"file": (image.name, fh)}, timeout=60)
    r.raise_for_status()
    job = _wait(svc, r.json()["id"])
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job['error']}")
    return time.perf_counter() - start


def burst(svc: Service, images: list[Path], clients: int) -> float:
    """Images per second with ``clients`` concurrent clients sending one image each time."""
    todo = list(images)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                image = todo.pop()
            try:
                single(svc, image)
            except BaseException as exc:  # reported after the burst
                errors.append(exc)
                return

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return len(images) / (time.perf_counter() - start)


def measure(svc: Service, images: list[Path], archive: Path, clients: int, rounds: int) -> dict:
    """Alternate burst and zip rounds; then low-load latency."""
    time_one(svc, archive)  # warm-up: first job of a fresh service
    bursts, zips = [], []
    for _ in range(rounds):
        bursts.append(burst(svc, images, clients))
        zips.append(len(images) / time_one(svc, archive))
    latency = [single(svc, images[i]) for i in range(10)]
    return {
        "burst": statistics.median(bursts),
        "zip": statistics.median(zips),
        "latency": statistics.median(latency),
    }


def report(name: str, m: dict, clients: int, n: int) -> None:
    print(f"\n{name}")
    print(f"  (a) {n} single images, {clients} clients: {m['burst']:7.1f} images/s")
    print(f"  (b) the same as one zip:            {m['zip']:7.1f} images/s")
    print(f"  (a)/(b) = {m['burst'] / m['zip']:.2f}x (target >= 0.5x)")
    print(f"  (c) single-image latency, low load: {1000 * m['latency']:.0f} ms (median of 10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="lungct-cnn6")
    parser.add_argument("--compare-off", action="store_true")
    args = parser.parse_args()
    images = pick_slices(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        archive = make_zip(images, Path(tmp) / "burst.zip")
        configs = [("micro-batching on (defaults)", {})]
        if args.compare_off:
            configs.insert(
                0, ("micro-batching off (MICROBATCH_MAX_JOBS=1)", {"MICROBATCH_MAX_JOBS": "1"})
            )
        for name, env in configs:
            with service(args.model, extra_env=env) as svc:
                report(
                    name,
                    measure(svc, images, archive, args.clients, args.rounds),
                    args.clients,
                    args.n,
                )


if __name__ == "__main__":
    main()
