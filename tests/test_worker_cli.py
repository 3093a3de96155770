"""GPU pinning: ``python -m worker --gpu N`` names the worker and sets CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT
from worker.__main__ import parse_args, worker_argv


def test_gpu_worker_is_named_after_its_gpu() -> None:
    args, extra = parse_args(["--gpu", "1", "--autoscale", "2,1"])
    argv = worker_argv(args, extra, "inference")
    assert "--hostname=gpu1@%h" in argv and "--queues=inference" in argv
    assert "--task-events" in argv and argv[-1] == "2,1"


def test_cpu_worker_name() -> None:
    args, extra = parse_args([])
    assert "--hostname=cpu@%h" in worker_argv(args, extra, "q")


def test_gpu_flag_sets_cuda_visible_devices_before_tensorflow() -> None:
    code = (
        "import os, sys, worker.__main__ as m, celery.app.base as b;"
        "b.Celery.worker_main = lambda self, argv: print(os.environ['CUDA_VISIBLE_DEVICES'],"
        " 'tensorflow' in sys.modules, argv[1]);"
        "m.main(['--gpu', '3'])"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "False", "--hostname=gpu3@%h"]


def test_a_cpu_only_machine_hides_cuda_and_its_start_up_noise(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from worker.__main__ import has_nvidia_device

    assert not has_nvidia_device(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert has_nvidia_device(tmp_path)
    code = (
        "import os, worker.__main__ as m, celery.app.base as b;"
        "m.has_nvidia_device = lambda: False;"
        "b.Celery.worker_main = lambda self, argv: print(repr(os.environ['CUDA_VISIBLE_DEVICES']),"
        " os.environ['TF_CPP_MIN_LOG_LEVEL']);"
        "m.main([])"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL")
    }
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["''", "3"]
