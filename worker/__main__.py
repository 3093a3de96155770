"""Start one Celery worker, optionally pinned to one GPU (``python -m worker --gpu 0``).

``CUDA_VISIBLE_DEVICES`` must be set before TensorFlow is imported anywhere in
the process tree, so this entry point sets it first and only then imports
Celery and the app. Run one such worker per GPU; each is named ``gpuN@host``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpu", type=int, default=None, help="GPU index to pin this worker to")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="processes (one per GPU is the right default)"
    )
    parser.add_argument("--loglevel", default=os.environ.get("LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--name", default=None, help="node name before @host (default gpuN, or cpu)"
    )
    return parser.parse_known_args(argv)


def worker_argv(args: argparse.Namespace, extra: list[str], queue: str) -> list[str]:
    """Celery command line for this worker."""
    prefix = args.name or (f"gpu{args.gpu}" if args.gpu is not None else "cpu")
    name = f"{prefix}@%h"
    return [
        "worker",
        f"--hostname={name}",
        f"--concurrency={args.concurrency}",
        f"--queues={queue}",
        f"--loglevel={args.loglevel}",
        "--pool=prefork",
        "--task-events",
        *extra,
    ]


def has_nvidia_device(dev: Path = Path("/dev")) -> bool:
    """True if the NVIDIA driver exposes a GPU here (checked without loading CUDA)."""
    return any(dev.glob("nvidia[0-9]*"))


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(argv)
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    elif not has_nvidia_device():
        # CPU-only machine: hide CUDA so TensorFlow does not log a cuInit error on start.
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    from config.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir("worker")  # before prometheus_client is imported anywhere

    from config import get_settings
    from worker.celery_app import celery

    celery.worker_main(worker_argv(args, extra, get_settings().celery_queue))


if __name__ == "__main__":
    main()
