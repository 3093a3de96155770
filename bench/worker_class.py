"""Upload throughput of the API under gunicorn's gevent and gthread workers, side by side.

``python -m bench.worker_class`` starts gunicorn as deployed
(``-c python:api.gunicorn_conf``, ``WEB_CONCURRENCY=2``) once per worker class
(``WEB_WORKER_CLASS``), on a private Redis and SQLite file and without a
Celery worker (jobs stay queued: only the API's part of a submit is timed).
Against each, ``--threads`` clients send ``--submits`` single-image submits
(a 64x64 PNG, each with an ``Idempotency-Key`` as the ``lungct`` CLI sends),
after a warm-up, in ``--rounds`` alternating rounds (gevent, gthread,
gevent, ...) so that a noisy neighbour hits both. Prints submits per second,
latency percentiles and the API's CPU time per submit per class, and the
ratios (CPU per submit does not depend on what else runs on the machine).
Issue 21 chose gevent for stalled uploads; this is its cost to normal uploads
(docs/hardening.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.faults import FAST, Config, Stack, build_tiny_model, png

CLASSES = ("gevent", "gthread")
ENV = {
    "MAX_ACTIVE_JOBS_PER_OWNER": "1000000",
    "RATE_LIMIT_SUBMIT": "1000000/minute",
    "RATE_LIMIT_READ": "1000000/minute",
    "LOG_LEVEL": "WARNING",
}


def api_cpu_s(st: Stack) -> float:
    """CPU seconds (user + system) used so far by the stack's gunicorn worker processes."""
    api = next(p for k, p in st.procs.items() if k.startswith("api#"))
    kids = subprocess.run(["pgrep", "-P", str(api.pid)], capture_output=True, text=True)
    ticks = 0
    for pid in kids.stdout.split():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _round(st: Stack, submits: int, threads: int) -> tuple[float, list[float], float]:
    """Seconds for ``submits`` submits from ``threads`` clients, each one's latency, and the
    API's CPU seconds per submit (immune to other processes taking the CPU)."""
    image = png(7, 64)
    local = [requests.Session() for _ in range(threads)]
    for s in local:
        s.headers["Authorization"] = f"Bearer {st.key}"

    def one(i: int) -> float:
        start = time.monotonic()
        r = local[i % threads].post(
            f"{st.base}/api/v1/jobs",
            files={"file": ("slice.png", image)},
            headers={"Idempotency-Key": uuid.uuid4().hex},
            timeout=60,
        )
        if r.status_code != 202:
            raise RuntimeError(f"submit answered {r.status_code}: {r.text[:200]}")
        return time.monotonic() - start

    cpu = api_cpu_s(st)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        latencies = list(pool.map(one, range(submits)))
    seconds = time.monotonic() - start
    return seconds, latencies, (api_cpu_s(st) - cpu) / submits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submits", type=int, default=100)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per worker class")
    parser.add_argument(
        "--postgres", default="", metavar="URL", help="PostgreSQL instead of SQLite (a schema)"
    )
    args = parser.parse_args(argv)
    database = "postgresql" if args.postgres else "sqlite"
    results: dict[str, list[tuple[float, list[float], float]]] = {c: [] for c in CLASSES}
    with tempfile.TemporaryDirectory(prefix="bench-wc-") as models:
        cfg = Config(FAST, build_tiny_model(Path(models)), args.postgres)
        stacks = {
            c: Stack(cfg, database, f"wc-{c}", {**ENV, "WEB_WORKER_CLASS": c}) for c in CLASSES
        }
        try:
            for st in stacks.values():
                st.__enter__()
                st.start_api()
            for st in stacks.values():
                st.wait_api()
                _round(st, 20, args.threads)  # warm-up: imports, connections, first pages
            for _ in range(args.rounds):
                for c in CLASSES:
                    results[c].append(_round(stacks[c], args.submits, args.threads))
        finally:
            for st in stacks.values():
                st.close()
    print(
        f"{args.submits} single-image submits x {args.rounds} rounds, {args.threads} client "
        f"threads, gunicorn WEB_CONCURRENCY=2, {database}, no Celery worker\n"
    )
    print("| worker class | submits/s (each round) | mean | p50 ms | p95 ms | API CPU ms/submit |")
    print("|---|---|---|---|---|---|")
    rates: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    for c in CLASSES:
        per_round = [args.submits / seconds for seconds, _, _ in results[c]]
        latencies = sorted(x for _, lat, _ in results[c] for x in lat)
        cpu_ms[c] = 1000 * statistics.mean(cpu for _, _, cpu in results[c])
        rates[c] = statistics.mean(per_round)
        p50 = latencies[len(latencies) // 2] * 1000
        p95 = latencies[int(len(latencies) * 0.95)] * 1000
        rounds = ", ".join(f"{r:.0f}" for r in per_round)
        print(f"| {c} | {rounds} | {rates[c]:.0f} | {p50:.0f} | {p95:.0f} | {cpu_ms[c]:.1f} |")
    print(f"\ngevent / gthread throughput: {rates['gevent'] / rates['gthread']:.2f}")
    print(f"gevent / gthread API CPU per submit: {cpu_ms['gevent'] / cpu_ms['gthread']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
