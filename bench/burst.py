"""Bursts of single images vs one zip, through the whole service, side by side.

Usage: ``python -m bench.burst [--n 100] [--clients 4] [--rounds 2] [--model NAME]
[--compare-off] [--poll-ms MS]``

In one throwaway service (SQLite, Redis at REDIS_URL, real worker, gunicorn):

(a) ``n`` IQ-OTH/NCCD slices sent as ``n`` single-image jobs by ``clients``
    concurrent clients, each with ``n / clients`` images, each waiting for an
    image's answer before uploading its next one: images/s over the burst
    (at most ``clients`` jobs are ever in flight, so this is latency-bound);
(a') the same clients uploading their images back to back and then collecting
    the answers with one long poll per round for all their jobs (how ``lungct``
    sends a folder): images/s over the burst;
(b) the same slices as one zip, one job: images/s from upload to ``succeeded``;
    each rate counts until the worker is idle again (:func:`settle`), so work a
    burst leaves queued behind it is charged to that burst;
(c) single-image latency at low load: one client, one image at a time.

(a), (a') and (b) alternate for ``rounds`` rounds (medians compared). The figures
of merit are (a)/(b) and (a')/(b): how close single images come to the batched
study path. Each is followed by the CPU milliseconds per image that the
worker, the API and the benchmark's own clients spent (all share this
machine's cores).
Clients wait with long polls (``GET /api/v1/jobs/<id>?wait=20``, answered when
the job ends), as ``lungct``/``LungCTClient`` and the web UI do; ``--poll-ms 20``
makes them poll every 20 ms instead (how this benchmark waited before long
polls existed), in all three measurements alike.
``--compare-off`` also runs the same in a service with cross-request
micro-batching switched off (``MICROBATCH_MAX_JOBS=1``, one forward pass per
job); the services run side by side and the rounds alternate between them.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench.e2e import Service, service, time_one, wait_job
from bench.throughput import make_zip, pick_slices


def submit(svc: Service, image: Path) -> str:
    """Upload one image; the job's URL."""
    with image.open("rb") as fh:
        r = svc.http.post(f"{svc.base}/api/v1/jobs", files={"file": (image.name, fh)}, timeout=60)
    r.raise_for_status()
    return svc.base + r.headers["Location"]


def finished(svc: Service, url: str, poll_s: float | None) -> None:
    """Wait for the job at ``url``; raise unless it succeeded."""
    job = wait_job(svc, url, poll_s)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job['error']}")


def single(svc: Service, image: Path, poll_s: float | None = None) -> float:
    """Seconds from upload to the job's end, for one image."""
    start = time.perf_counter()
    finished(svc, submit(svc, image), poll_s)
    return time.perf_counter() - start


def sync_client(svc: Service, images: list[Path], poll_s: float | None) -> None:
    """One image at a time: upload, wait for its answer, then the next."""
    for image in images:
        finished(svc, submit(svc, image), poll_s)


def pipelined_client(svc: Service, images: list[Path], poll_s: float | None) -> None:
    """Upload every image back to back, then collect the answers (as ``lungct`` does).

    Long polls (the default) collect with one request per round for all the
    client's unfinished jobs (``GET /api/v1/jobs?id=...&wait=20``, answered when
    one of them ends); ``poll_s`` polls each job in turn instead.
    """
    urls = [submit(svc, image) for image in images]
    if poll_s is not None:
        for url in urls:
            finished(svc, url, poll_s)
        return
    waiting = [url.rsplit("/", 1)[1] for url in urls]
    while waiting:
        params = {"id": waiting, "limit": len(waiting), "wait": 20}
        r = svc.http.get(f"{svc.base}/api/v1/jobs", params=params, timeout=60)
        r.raise_for_status()
        for job in r.json()["items"]:
            if job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"job {job['id']} {job['status']}: {job['error']}")
            if job["status"] == "succeeded":
                waiting.remove(job["id"])


def burst(
    svc: Service,
    images: list[Path],
    clients: int,
    poll_s: float | None = None,
    behaviour: Callable[[Service, list[Path], float | None], None] = sync_client,
) -> float:
    """Images per second with ``clients`` concurrent clients, each with its share of images."""
    errors: list[BaseException] = []

    def client(share: list[Path]) -> None:
        try:
            behaviour(svc, share, poll_s)
        except BaseException as exc:  # reported after the burst
            errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(images[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return len(images) / (time.perf_counter() - start + settle(svc))


QUIET_POLL_S = 0.05
QUIET_CPU_S = 0.02


def settle(svc: Service) -> float:
    """Seconds the worker stays busy after the last job ended (0 when it is idle at once).

    Work a burst leaves behind (deliveries of jobs that a micro-batch already
    ran) is part of its cost: counting it keeps each measurement to its own
    work, so the next one starts on an idle worker. Busy: more than
    QUIET_CPU_S of CPU in a QUIET_POLL_S interval (/proc counts in 10 ms ticks).
    """
    start = last_busy = time.perf_counter()
    before = svc.cpu_seconds()["worker"]
    quiet = 0
    while quiet < 2:
        time.sleep(QUIET_POLL_S)
        now, used = time.perf_counter(), svc.cpu_seconds()["worker"]
        if used - before > QUIET_CPU_S:
            last_busy, quiet = now, 0
        else:
            quiet += 1
        before = used
    return last_busy - start


def with_cpu(svc: Service, n: int, run: Callable[[], float]) -> tuple[float, dict[str, float]]:
    """``run()``'s images/s and the CPU milliseconds per image of each part of the service.

    Parts: the worker (main and pool processes), the API (gunicorn and its
    workers), and this client (all its threads). Redis is not counted.
    """
    before, mine = svc.cpu_seconds(), _own_cpu_seconds()
    rate = run()
    after = svc.cpu_seconds()
    cpu = {k: 1000 * (after[k] - before[k]) / n for k in after}
    cpu["client"] = 1000 * (_own_cpu_seconds() - mine) / n
    return rate, cpu


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(
    services: dict[str, Service],
    images: list[Path],
    archive: Path,
    clients: int,
    rounds: int,
    poll_s: float | None = None,
) -> dict[str, dict]:
    """Per service: the three rates and CPU costs (rounds alternate across services), latency.

    Every round runs (a), (a') and (b) on each service in turn, so a machine
    that slows down during the run slows every configuration alike.
    """
    for svc in services.values():
        time_one(svc, archive, poll_s)  # warm-up: first job of a fresh service
        settle(svc)
    n = len(images)
    kinds: dict[str, Callable[[Service], float]] = {
        "sync": lambda svc: burst(svc, images, clients, poll_s, sync_client),
        "pipelined": lambda svc: burst(svc, images, clients, poll_s, pipelined_client),
        "zip": lambda svc: n / (time_one(svc, archive, poll_s) + settle(svc)),
    }
    rates = {name: {k: [] for k in kinds} for name in services}
    cpus: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {k: [] for k in kinds} for name in services
    }
    for _ in range(rounds):
        for name, svc in services.items():
            for kind, run in kinds.items():
                rate, cpu = with_cpu(svc, n, lambda: run(svc))  # noqa: B023 (called at once)
                rates[name][kind].append(rate)
                cpus[name][kind].append(cpu)
    return {
        name: {
            "rate": {k: statistics.median(v) for k, v in rates[name].items()},
            "cpu": {
                k: {p: statistics.median(c[p] for c in v) for p in v[0]}
                for k, v in cpus[name].items()
            },
            "latency": statistics.median(single(svc, images[i], poll_s) for i in range(10)),
        }
        for name, svc in services.items()
    }


def report(name: str, m: dict, clients: int, n: int) -> None:
    rate, cpu = m["rate"], m["cpu"]
    print(f"\n{name}")
    print(f"  (a) {n} single images, {clients} clients, each waiting for every answer")
    print(f"      before its next upload:            {rate['sync']:7.1f} images/s")
    print("  (a') the same, each client uploading its images back to back,")
    print(f"      then collecting the answers:       {rate['pipelined']:7.1f} images/s")
    print(f"  (b) the same images as one zip:        {rate['zip']:7.1f} images/s")
    print(
        f"  (a)/(b) = {rate['sync'] / rate['zip']:.2f}x, "
        f"(a')/(b) = {rate['pipelined'] / rate['zip']:.2f}x (target >= 0.5x)"
    )
    print(f"  (c) single-image latency, low load: {1000 * m['latency']:.0f} ms (median of 10)")
    print("  CPU ms per image (median of rounds):  worker     API  client   total")
    for key, label in (("sync", "(a) "), ("pipelined", "(a')"), ("zip", "(b) ")):
        c = cpu[key]
        total = sum(c.values())
        print(
            f"    {label}                              "
            f"{c['worker']:6.1f}  {c['api']:6.1f}  {c['client']:6.1f}  {total:6.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="lungct-cnn6")
    parser.add_argument("--compare-off", action="store_true")
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=None,
        help="clients poll this often instead of long polls (?wait=); e.g. 20 as before",
    )
    args = parser.parse_args()
    poll_s = None if args.poll_ms is None else args.poll_ms / 1000
    images = pick_slices(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        archive = make_zip(images, Path(tmp) / "burst.zip")
        configs = [("micro-batching on (defaults)", {})]
        if args.compare_off:
            configs[:0] = [
                ("micro-batching off (MICROBATCH_MAX_JOBS=1)", {"MICROBATCH_MAX_JOBS": "1"}),
            ]
        with ExitStack() as stack:
            services = {
                name: stack.enter_context(service(args.model, extra_env=env))
                for name, env in configs
            }
            results = measure(services, images, archive, args.clients, args.rounds, poll_s)
        for name, result in results.items():
            report(name, result, args.clients, args.n)


if __name__ == "__main__":
    main()
