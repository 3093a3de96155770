"""A throwaway service (SQLite, REDIS_URL, worker subprocess, gunicorn) for timing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    argv: list[str], env: dict[str, str], log: Path, root: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``root`` (a source tree) in its own process group, output to
    ``log`` (tests use it too)."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM), then kill the whole process group if it hangs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Service:
    """A running throwaway service: its base URL and an HTTP session with an API key."""

    base: str
    http: requests.Session
    folder: Path
    workers: list[subprocess.Popen[bytes]]
    api: subprocess.Popen[bytes] | None = None
    root: Path = ROOT
    """The source tree its processes run from (bench/ab.py compares two)."""
    receives: dict[str, list[float]] = field(default_factory=dict)
    """Seconds from starting each upload to its 202, per archive name (:func:`time_one`)."""

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the workers' and the API's process groups (all processes)."""
        groups = {"worker": [p.pid for p in self.workers]}
        if self.api is not None:
            groups["api"] = [self.api.pid]
        return {name: sum(group_cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid`` (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _wait_ready(base: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/readyz", timeout=15).status_code == 200:
                return
        except requests.RequestException:  # not up yet, or too busy starting
            pass
        time.sleep(0.5)
    raise RuntimeError("service did not become ready")


def api_key(env: dict[str, str], owner: str = "bench", root: Path = ROOT) -> str:
    """Create an API key with ``python -m api.keys`` (its last output line is the key)."""
    out = subprocess.run(
        [sys.executable, "-m", "api.keys", "create", owner],
        cwd=root, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


LIFTED = {
    "RATE_LIMIT_SUBMIT": "100000/minute",
    "RATE_LIMIT_READ": "1000000/minute",
    "MAX_ACTIVE_JOBS_PER_OWNER": "100000",
}


@contextmanager
def service(
    model: str,
    *,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    limits: bool = True,
    root: Path = ROOT,
) -> Iterator[Service]:
    """Start migrate + ``workers`` worker processes + gunicorn on a temp SQLite file.

    ``limits`` lifts the rate limits and the per-owner cap (benchmarks of the
    machinery); ``limits=False`` keeps every access setting at its default
    (bench/paths.py, what a user of ``make run`` gets). ``root``: the source
    tree to run (bench/ab.py). Yields the running service; everything is
    stopped and removed afterwards.
    """
    holder = tempfile.TemporaryDirectory(prefix="bench-e2e-")
    tmp = Path(holder.name)
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "STORAGE_DIR": str(tmp / "uploads"),
        "DEFAULT_MODEL": model,
        "CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "WORKER_METRICS_PORT": "0",
        **(LIFTED if limits else {}),
        **(extra_env or {}),
    }
    subprocess.run(
        [sys.executable, "-m", "db.migrate"], cwd=root, env=env, check=True, capture_output=True
    )
    procs = [
        spawn(
            [sys.executable, "-m", "worker", "--name", f"cpu{i}"], env, tmp / f"worker{i}.log", root
        )
        for i in range(workers)
    ]
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf", "api.wsgi:app"]
    procs.append(spawn(gunicorn, env, tmp / "api.log", root))
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {api_key(env, root=root)}"
        yield Service(base, http, tmp, procs[:workers], procs[-1], root)
    finally:
        for p in procs:
            stop(p)
        holder.cleanup()


def wait_job(svc: Service, url: str, poll_s: float | None = None) -> dict:
    """Read the job at ``url`` until it has ended.

    ``poll_s`` None: long polls (``?wait=``, answered when the job ends), as the
    client library and the web UI do; a number: plain polls that far apart.
    """
    query = {"wait": 20} if poll_s is None else {}
    while True:
        job = svc.http.get(url, params=query, timeout=60).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.02 if poll_s is None else poll_s)  # a wait answered early: no spinning


def time_one(svc: Service, archive: Path, poll_s: float | None = None) -> float:
    """Seconds from starting the upload to reading status ``succeeded``."""
    start = time.perf_counter()
    with archive.open("rb") as fh:
        r = svc.http.post(f"{svc.base}/api/v1/jobs", files={"file": (archive.name, fh)}, timeout=60)
    r.raise_for_status()
    svc.receives.setdefault(archive.name, []).append(time.perf_counter() - start)
    job = wait_job(svc, svc.base + r.headers["Location"], poll_s)
    elapsed = time.perf_counter() - start
    if job["status"] != "succeeded":
        raise RuntimeError(f"job failed: {job['error']}")
    return elapsed
