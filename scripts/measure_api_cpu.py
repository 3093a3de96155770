"""The API's CPU per single-image submit and per 25-job list, for one or more checkouts.

    PYTHONPATH=$PWD .venv/bin/python scripts/measure_api_cpu.py [--rounds 12] CHECKOUT...

Starts, for each checkout (a folder with this repository and its ``.venv``),
its gunicorn API with every setting at ``make run``'s default (rate limits and
the per-owner cap included; SQLite, local storage and the Redis at REDIS_URL;
no worker, so the queued jobs are marked ended in the database). Then, for
``--rounds`` rounds, alternating between the checkouts so that a machine that
slows down slows them all alike, each API gets:

* 100 IQ-OTH/NCCD slices uploaded by 4 clients, each sending its 25 back to back
  (``POST /api/v1/jobs``, as in ``bench.paths``'s burst);
* 5 rounds of the documented long poll per client for its 25 jobs
  (``GET /api/v1/jobs?id=..&wait=20``), answered at once since they have ended.

Prints, per checkout, the medians (and every round) of the CPU milliseconds
that the API's processes (gunicorn and its workers, from /proc) spent per
upload and per list. Two checkouts of the same code differed by 0-4 percent;
compare with ``git worktree``/``git archive`` copies side by side
(docs/benchmarks.md). Runs in about two seconds a round and checkout.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import requests
from redis import Redis

from bench.e2e import group_cpu_seconds, stop
from bench.throughput import pick_slices

CLIENTS = 4
LISTS = 5


@dataclass
class Api:
    """One checkout's running API and what it measured."""

    checkout: Path
    folder: Path
    queue: str
    base: str
    keys: list[str]
    process: subprocess.Popen[bytes]
    submit_ms: list[float] = field(default_factory=list)
    list_ms: list[float] = field(default_factory=list)


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(checkout: Path) -> Api:
    """Migrate a fresh SQLite file, make one key per client, start gunicorn."""
    folder = Path(tempfile.mkdtemp(prefix="measure-api-cpu-"))
    queue, port = f"apicpu-{uuid.uuid4().hex[:8]}", _port()
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "DATABASE_URL": f"sqlite:///{folder / 'api.db'}",
        "STORAGE_DIR": str(folder / "uploads"),
        "CELERY_QUEUE": queue,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "WORKER_METRICS_PORT": "0",
    }
    python = str(checkout / ".venv" / "bin" / "python")

    def run(*args: str) -> str:
        argv = [python, "-m", *args]
        done = subprocess.run(argv, cwd=checkout, env=env, check=True, capture_output=True)
        return done.stdout.decode()

    run("db.migrate")
    keys = [run("api.keys", "create", f"c{i}").strip().splitlines()[-1] for i in range(CLIENTS)]
    gunicorn = [python, "-m", "gunicorn", "-c", "python:api.gunicorn_conf", "api.wsgi:app"]
    with (folder / "api.log").open("wb") as log:
        process = subprocess.Popen(
            gunicorn, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    api = Api(checkout, folder, queue, f"http://127.0.0.1:{port}", keys, process)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{api.base}/healthz", timeout=2).status_code == 200:
                return api
        except requests.RequestException:  # not listening yet
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API of {checkout} did not start: see {folder / 'api.log'}")


def _in_parallel(work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def one_round(api: Api, slices: list[tuple[str, bytes]]) -> tuple[float, float]:
    """CPU ms per upload and per list of this round (the queued jobs are then marked ended)."""
    ids: dict[int, list[str]] = {}

    def upload(i: int) -> None:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {api.keys[i]}"
            ids[i] = []
            for name, data in slices[i::CLIENTS]:
                r = http.post(f"{api.base}/api/v1/jobs", files={"file": (name, data)}, timeout=60)
                r.raise_for_status()
                ids[i].append(r.json()["id"])

    def collect(i: int) -> None:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {api.keys[i]}"
            query: dict[str, str | int | list[str]] = {"id": ids[i], "limit": 25, "wait": 20}
            for _ in range(LISTS):
                r = http.get(f"{api.base}/api/v1/jobs", params=query, timeout=60)
                r.raise_for_status()

    before = group_cpu_seconds(api.process.pid)
    _in_parallel(upload)
    uploaded = group_cpu_seconds(api.process.pid)
    with sqlite3.connect(api.folder / "api.db", timeout=30) as db:  # what a worker would do
        db.execute("UPDATE jobs SET status = 'succeeded', finished_at = created_at")
    listed_from = group_cpu_seconds(api.process.pid)
    _in_parallel(collect)
    listed = group_cpu_seconds(api.process.pid)
    per_upload = 1000 * (uploaded - before) / len(slices)
    return per_upload, 1000 * (listed - listed_from) / (CLIENTS * LISTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("checkouts", nargs="+", type=Path)
    args = parser.parse_args()
    slices = [(f.name, f.read_bytes()) for f in pick_slices(100)]
    apis: list[Api] = []
    try:
        apis = [start(c.resolve()) for c in args.checkouts]
        for api in apis:
            one_round(api, slices)  # warm-up
        for _ in range(args.rounds):
            for api in apis:
                submit_ms, list_ms = one_round(api, slices)
                api.submit_ms.append(submit_ms)
                api.list_ms.append(list_ms)
        for api in apis:
            print(
                f"{api.checkout}: API CPU ms per upload {statistics.median(api.submit_ms):.2f} "
                f"{[round(x, 1) for x in api.submit_ms]}; per 25-job list "
                f"{statistics.median(api.list_ms):.2f} {[round(x, 1) for x in api.list_ms]}"
            )
    finally:
        redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        for api in apis:
            stop(api.process)
            lists = cast(list[bytes], redis.keys(f"lungct:images:{api.queue}:*"))
            redis.delete(api.queue, *lists)


if __name__ == "__main__":
    main()
