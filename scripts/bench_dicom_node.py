"""Time the DICOM node: C-STORE receive rate, and last instance -> SR at a destination.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_dicom_node.py [--instances 1000]

A throwaway service on a temporary SQLite file and storage folder (Redis at
REDIS_URL): ``python -m worker``, ``python -m dicomnet``, and a pynetdicom
storescp as the destination. One association sends a synthetic CT study of
``--instances`` 64x64 slices; the receive rate is instances / wall time of the
sends (each answered only once stored and recorded). The sender sets TCP_NODELAY
(``--nagle``: it does not, and every C-STORE waits ~40 ms for a delayed ACK). Then the time from the
last instance's answer to the SR arriving at the destination, which is the
study timeout + the job (queue, inference) + building and sending the SR.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import spawn, stop  # noqa: E402
from tests.conftest import free_port, wait_for_worker  # noqa: E402
from tests.dicom_peers import destination, send, start_node, wait_until  # noqa: E402
from tests.fixtures_dicom import series  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--study-timeout", type=float, default=2.0)
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave Nagle's algorithm on at the sender (pynetdicom's and dcmtk's default)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dicom-") as folder:
        run(Path(folder), args.instances, args.study_timeout, not args.nagle)


def run(tmp: Path, n: int, timeout_s: float, nodelay: bool) -> None:
    node_port, dest_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "STORAGE_DIR": str(tmp / "uploads"),
        "CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "WORKER_METRICS_PORT": "0",
        "DICOM_PORT": str(node_port),
        "DICOM_STUDY_TIMEOUT_S": str(timeout_s),
        "DICOM_POLL_INTERVAL_S": "0.2",
        "DICOM_DESTINATIONS": f"bench=BENCH@127.0.0.1:{dest_port}",
        "DICOM_MIN_FREE_MB": "0",
    }
    os.environ.update(env)
    subprocess.run([sys.executable, "-m", "db.migrate"], cwd=ROOT, env=env, check=True)
    worker = spawn([sys.executable, "-m", "worker", "--concurrency", "1"], env, tmp / "w.log")
    node = start_node(env, tmp / "node.log")
    try:
        wait_for_worker(worker, tmp / "w.log")
        datasets = series(generate_uid(), [float(z) for z in range(n)], size=64)
        study_uid = generate_uid()
        for ds in datasets:
            ds.StudyInstanceUID = study_uid
        with destination("BENCH", dest_port) as dest:
            start = time.perf_counter()
            statuses = send(node_port, datasets, nodelay=nodelay)
            last = time.perf_counter()
            assert statuses == [0] * n, "some instances were refused"
            wait_until(lambda: dest.received, 600, "the SR", every_s=0.05)
            arrived = time.perf_counter()
        rate = n / (last - start)
        sender = "TCP_NODELAY" if nodelay else "Nagle on"
        print(
            f"received {n} instances, one association ({sender}): {last - start:.1f}s, {rate:.0f}/s"
        )
        print(
            f"last instance -> SR at the destination: {arrived - last:.1f}s "
            f"(DICOM_STUDY_TIMEOUT_S={timeout_s:g}, {n} slices classified)"
        )
    finally:
        stop(node)
        stop(worker)


if __name__ == "__main__":
    main()
