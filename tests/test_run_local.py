"""What ``make run`` runs before and beside honcho: the Procfile, prestart, the Redis line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REDIS_URL, ROOT, free_port

PY = sys.executable


def _answers(url: str) -> bool:
    from scripts.redis_server import answers

    return answers(url, 0.5)


def test_the_procfile_names_every_process() -> None:
    check = subprocess.run(
        [str(Path(PY).parent / "honcho"), "-f", "Procfile", "check"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    names = {line.split(":", 1)[0] for line in (ROOT / "Procfile").read_text().splitlines()}
    assert {"redis", "worker", "api", "dicom", "flower", "ready"} <= names


def _redis_line(url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "REDIS_URL": url}
    return subprocess.Popen(
        [PY, "scripts/redis_server.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def test_the_redis_line_starts_one_when_none_answers_and_stops_on_sigterm() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with _redis_line(url) as proc:
        try:
            deadline = time.monotonic() + 15
            while not _answers(url):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    assert not _answers(url)


def test_the_redis_line_uses_a_redis_that_answers() -> None:
    with _redis_line(REDIS_URL) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0 and line.startswith("using the Redis that answers")


def test_a_private_redis_wraps_a_command_and_goes_away() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    run = subprocess.run(
        [PY, "scripts/redis_server.py", "--private", "--", PY, "-c",
         "import os; print(os.environ['REDIS_URL'])"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    url = run.stdout.strip().splitlines()[-1]
    assert url.startswith("redis://127.0.0.1:") and url != REDIS_URL and not _answers(url)


def test_prestart_migrates_and_prints_the_first_key_once(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.db'}",
        "STORAGE_DIR": str(tmp_path / "uploads"),
        "FLOWER_PASSWORD": "not-generated",
    }
    first = subprocess.run(
        [PY, "scripts/prestart.py"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    assert "lct_" in first.stdout and "password not-generated" in first.stdout
    again = subprocess.run(
        [PY, "scripts/prestart.py"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and "lct_" not in again.stdout
    assert (
        (ROOT / "var" / "run.env").read_text().startswith("FLOWER_BASIC_AUTH=admin:not-generated")
    )
