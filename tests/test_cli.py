"""``lungct`` as a subprocess against the real stack served over HTTP (real worker, Redis, DB).

Each test has an owner of its own, so counting jobs through the API counts
exactly the jobs that test's runs created.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, TINY_MODEL, Stack, new_key, png_bytes, served, zip_bytes
from tests.fixtures_dicom import ct_slice, to_bytes

pytestmark = pytest.mark.integration
KEY_MESSAGE = "lungct: error: invalid or missing API key: set LUNGCT_API_KEY"


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> Iterator[str]:
    """The stack's API served over real HTTP on a loopback port."""
    with served(stack.app()) as url:
        yield url


@pytest.fixture
def key(stack: Stack) -> str:
    """A key of a fresh owner: the API's job list then holds only this test's jobs."""
    return new_key(stack.env["DATABASE_URL"], f"cli-{uuid.uuid4().hex[:8]}")


def _env(base_url: str, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNGCT_")}
    env |= {"LUNGCT_URL": base_url, "PYTHONPATH": str(ROOT)}
    if key is not None:
        env["LUNGCT_API_KEY"] = key
    return env


def lungct(
    base_url: str, key: str | None, *args: str, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m client.cli ARGS`` (what the ``lungct`` script runs) in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=cwd,
        env=_env(base_url, key),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_ids(base_url: str, key: str) -> list[str]:
    r = requests.get(
        f"{base_url}/api/v1/jobs?limit=1000", headers={"Authorization": f"Bearer {key}"}
    )
    r.raise_for_status()
    return [j["id"] for j in r.json()["items"]]


def three_studies(root: Path) -> dict[str, int]:
    """Two zips of random PNGs and a folder of DICOM files; input path -> slice count."""
    root.mkdir(parents=True)
    (root / "a.zip").write_bytes(zip_bytes({f"s{i}.png": png_bytes(i) for i in range(3)}))
    (root / "b.zip").write_bytes(zip_bytes({f"s{i}.png": png_bytes(10 + i) for i in range(2)}))
    ct = root / "ct"
    ct.mkdir()
    for i in range(4):
        ds = ct_slice(series_uid="1.2.826.0.1.3680043.8.498.77", instance=i + 1, z=2.5 * i)
        (ct / f"IM{i + 1:04d}").write_bytes(to_bytes(ds))  # no suffix: found by its magic
    return {str(root / "a.zip"): 3, str(root / "b.zip"): 2, str(ct): 4}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_folder_of_three_studies_to_one_csv_then_resume(
    base_url: str, key: str, tmp_path: Path
) -> None:
    slices = three_studies(tmp_path / "in")
    out = tmp_path / "out" / "results.csv"
    out.parent.mkdir()
    args = ["submit", "in", "--model", TINY_MODEL, "--wait", "--out", str(out), "--poll", "0.2"]
    run = lungct(base_url, key, *args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = read_csv(out)
    assert len(rows) == sum(slices.values())
    expected = {str(Path(i).relative_to(tmp_path)): n for i, n in slices.items()}
    assert Counter(r["input"] for r in rows) == expected
    assert len({r["job_id"] for r in rows}) == 3
    columns = set(rows[0])
    assert {"job_id", "input", "slice_index", "source", "series_uid", "label"} <= columns
    assert "out_of_distribution" in columns
    probs = [c for c in rows[0] if c.startswith("p_")]
    assert probs and all(abs(sum(float(r[c]) for c in probs) - 1) < 1e-3 for r in rows)
    dicom_rows = [r for r in rows if r["input"].endswith("ct")]
    assert len(dicom_rows) == 4 and {r["series_uid"] for r in dicom_rows} == {
        "1.2.826.0.1.3680043.8.498.77"
    }
    # issue 20: each row names the file it came from as it is on this machine
    assert {r["input_member"] for r in dicom_rows} == {f"IM{i:04d}" for i in range(1, 5)}
    png_rows = [r for r in rows if r["input"].endswith("a.zip")]
    assert [r["source"] for r in png_rows] == ["#1.png", "#2.png", "#3.png"]  # no paths kept
    assert [r["input_member"] for r in png_rows] == ["s0.png", "s1.png", "s2.png"]
    assert {r["study_verdict"] for r in rows} <= {"benign", "malignant", "normal", "inconclusive"}
    state = json.loads((out.parent / ".lungct-state.json").read_text())["inputs"]
    assert len(state) == 3 and {e["status"] for e in state.values()} == {"succeeded"}
    assert "3 inputs: 3 succeeded" in run.stderr
    first_jobs = set(job_ids(base_url, key))
    assert len(first_jobs) == 3

    # Rerun: nothing is uploaded again, and the CSV is complete again.
    out.unlink()
    again = lungct(base_url, key, *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("resumed") == 3 and "submitted" not in again.stderr
    assert len(read_csv(out)) == len(rows)
    assert set(job_ids(base_url, key)) == first_jobs

    # Without the state file, the content-derived Idempotency-Key finds the same jobs.
    (out.parent / ".lungct-state.json").unlink()
    replay = lungct(base_url, key, *args, cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert replay.stderr.count("existing") == 3
    assert set(job_ids(base_url, key)) == first_jobs


def test_identical_files_share_a_job_and_are_counted_by_its_end(
    base_url: str, key: str, tmp_path: Path
) -> None:
    """Two files with the same bytes get one job (one Idempotency-Key): both inputs are
    counted by that job's final status, the tally matches the CSV, and the exit code is 0."""
    folder = tmp_path / "slices"
    folder.mkdir()
    for name, seed in (("a.png", 1), ("b.png", 1), ("c.png", 2)):
        (folder / name).write_bytes(png_bytes(seed))
    out = tmp_path / "r.csv"
    args = ["submit", "slices", "--model", TINY_MODEL, "--out", str(out), "--poll", "0.2"]
    run = lungct(base_url, key, *args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "3 inputs: 3 succeeded" in run.stderr
    rows = read_csv(out)
    assert sorted(r["input"] for r in rows) == ["slices/a.png", "slices/b.png", "slices/c.png"]
    assert len({r["job_id"] for r in rows}) == 2 and all(r["label"] for r in rows)


# The kill may cut the next upload off mid-body: the in-process server then leaves
# werkzeug's spooled temporary file of that request to the garbage collector.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*SpooledTemporaryFile:pytest.PytestUnraisableExceptionWarning"
)
def test_a_killed_run_resumes_without_submitting_twice(
    base_url: str, key: str, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(4):
        (root / f"s{i}.png").write_bytes(png_bytes(100 + i, size=512))
    state = tmp_path / "state.json"
    args = ["submit", "in", "--model", TINY_MODEL, "--concurrency", "1", "--state", str(state)]
    with subprocess.Popen(
        [sys.executable, "-m", "client.cli", *args],
        cwd=tmp_path,
        env=_env(base_url, key),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("submitted"):
                proc.send_signal(signal.SIGKILL)  # a crash, not a polite stop
                break
        proc.wait(timeout=60)
    recorded = json.loads(state.read_text())["inputs"]
    assert 1 <= len(recorded) <= 4  # uploads are quick: the kill may come late
    before = set(job_ids(base_url, key))
    assert len(before) >= len(recorded)

    run = lungct(base_url, key, *args, "--wait", "--poll", "0.2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("resumed") == len(recorded)
    # An upload in flight at the kill may have made a job the state file missed:
    # its content-derived Idempotency-Key finds it ("existing") instead of a second.
    uploads = run.stderr.count("submitted") + run.stderr.count("existing")
    assert uploads == 4 - len(recorded)
    after = set(job_ids(base_url, key))
    assert len(after) == 4 and before <= after
    entries = json.loads(state.read_text())["inputs"]
    assert {e["status"] for e in entries.values()} == {"succeeded"}
    gc.collect()  # that file's warning belongs to this test, not to a later one


def test_submit_without_wait_then_rerun_polls_the_same_job(
    base_url: str, key: str, tmp_path: Path
) -> None:
    (tmp_path / "one.png").write_bytes(png_bytes(7))
    first = lungct(base_url, key, "submit", "one.png", "--model", TINY_MODEL, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    job_id, status, *_ = first.stdout.split("\t")
    assert status in ("queued", "running", "succeeded")
    out = tmp_path / "r.json"
    again = lungct(
        base_url, key, "submit", "one.png", "--model", TINY_MODEL, "--out", str(out), cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stderr
    doc = json.loads(out.read_text())
    assert [d["job"]["id"] for d in doc] == [job_id] == job_ids(base_url, key)
    assert doc[0]["job"]["status"] == "succeeded" and len(doc[0]["results"]) == 1


def test_jobs_status_results_cancel_delete(base_url: str, key: str, tmp_path: Path) -> None:
    (tmp_path / "small.png").write_bytes(png_bytes(1))
    done = lungct(
        base_url, key, "submit", "small.png", "--model", TINY_MODEL, "--wait", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split("\t")[0]

    listing = lungct(base_url, key, "jobs", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[:2] == ["ID", "STATUS"]
    assert job_id in listing.stdout
    filtered = lungct(base_url, key, "jobs", "--status", "succeeded", "--json", cwd=tmp_path)
    assert [j["id"] for j in json.loads(filtered.stdout)] == [job_id]

    status = lungct(base_url, key, "status", job_id, cwd=tmp_path)
    assert status.returncode == 0 and "status    succeeded" in status.stdout

    res = lungct(
        base_url, key, "results", job_id, "--format", "json", "--out", "r.json", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc[0]["job"]["id"] == job_id and len(doc[0]["results"]) == 1
    as_csv = lungct(base_url, key, "results", job_id, cwd=tmp_path)
    assert as_csv.stdout.splitlines()[0].startswith("job_id,input,input_member,study_verdict,")

    ended = lungct(base_url, key, "cancel", job_id, cwd=tmp_path)
    assert ended.returncode == 1
    assert ended.stderr.strip() == "lungct: error: job has already ended (succeeded) (HTTP 409)"

    rejected = lungct(base_url, key, "submit", "small.png", "--model", "nope", cwd=tmp_path)
    assert rejected.returncode == 1  # 400, one line per input, then the tally
    assert "rejected  small.png: unknown model 'nope'" in rejected.stderr
    assert "1 inputs: 1 rejected" in rejected.stderr

    # A long study keeps the single worker busy; the study behind it is still queued
    # (single images would not wait: the worker takes them beside its studies).
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    big = zip_bytes({f"s{i:04d}.png": png_bytes(i % 50, size=32) for i in range(2000)})
    files = {"file": ("big.zip", big)}
    busy_id = http.post(f"{base_url}/api/v1/jobs", files=files, data={"model": TINY_MODEL})
    files = {"file": ("other.zip", zip_bytes({"s.png": png_bytes(2)}))}
    behind_id = http.post(f"{base_url}/api/v1/jobs", files=files, data={"model": TINY_MODEL})
    busy_id, behind_id = busy_id.json()["id"], behind_id.json()["id"]
    cancel = lungct(base_url, key, "cancel", behind_id, cwd=tmp_path)
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.split("\t")[1].startswith("cancelled")
    stop = lungct(base_url, key, "cancel", busy_id, cwd=tmp_path)
    assert stop.returncode in (0, 1), stop.stderr  # 1: it had already finished

    deleted = lungct(base_url, key, "delete", behind_id, cwd=tmp_path)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"{behind_id}\tdeleted"
    gone = lungct(base_url, key, "status", behind_id, cwd=tmp_path)
    assert gone.returncode == 1 and f"no job with id '{behind_id}'" in gone.stderr
    _wait_ended(base_url, key, busy_id)


def _wait_ended(base_url: str, key: str, job_id: str, timeout_s: float = 120) -> None:
    """Leave the shared worker idle for the next test."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {key}"}
    while time.monotonic() < deadline:
        job = requests.get(f"{base_url}/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        time.sleep(0.2)


def test_bad_or_missing_key_and_unreachable_api(base_url: str, tmp_path: Path) -> None:
    for key in ("lct_wrong", None):
        run = lungct(base_url, key, "jobs", cwd=tmp_path)
        assert run.returncode == 1 and run.stderr.strip() == KEY_MESSAGE
    (tmp_path / "x.png").write_bytes(png_bytes(3))
    run = lungct(base_url, "lct_wrong", "submit", "x.png", cwd=tmp_path)
    assert run.returncode == 1 and run.stderr.strip().endswith(KEY_MESSAGE)
    down = lungct("http://127.0.0.1:9", "lct_x", "jobs", "--retries", "0", cwd=tmp_path)
    assert down.returncode == 1
    assert down.stderr.strip() == (
        "lungct: error: cannot reach the API at http://127.0.0.1:9: ConnectionError"
    )
    missing = lungct(base_url, "lct_x", "submit", "nope", cwd=tmp_path)
    assert missing.returncode == 1 and "no such file or folder: nope" in missing.stderr


def test_the_cli_prints_each_retry_while_the_api_is_down(tmp_path: Path) -> None:
    """Issue 20: no silent 24-50 s wait; each retry is a line on stderr."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    run = lungct(dead, "lct_x", "status", "some-job", "--retries", "2", cwd=tmp_path)
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if "retry" in line]
    assert len(lines) == 2 and "retry 1 of 2" in lines[0] and "retry 2 of 2" in lines[1]
    assert "cannot reach the API (ConnectionError)" in lines[0]


class Counted:
    """WSGI middleware: counts requests by (method, path); the paths in ``missing`` answer
    as a server without those routes would (405 for a POST, else 404), after reading the
    body as gunicorn does."""

    def __init__(self, app, missing: tuple[str, ...] = ()) -> None:  # type: ignore[no-untyped-def]
        self.app, self.missing = app, missing
        self.seen: Counter[tuple[str, str]] = Counter()

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        self.seen[(method, path)] += 1
        if path not in self.missing:
            return self.app(environ, start_response)
        from werkzeug.wsgi import get_input_stream

        get_input_stream(environ).read()  # Content-Length bytes, not until the client closes
        status = "405 METHOD NOT ALLOWED" if method == "POST" else "404 NOT FOUND"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps({"error": {"code": int(status[:3]), "message": status}}).encode()]


def _slices_folder(folder: Path, n: int) -> None:
    """``n`` PNG slices; the last one a copy of the first (the same bytes, one job)."""
    folder.mkdir()
    for i in range(n - 1):
        (folder / f"s{i:02d}.png").write_bytes(png_bytes(700 + i))
    (folder / f"s{n - 1:02d}.png").write_bytes(png_bytes(700))


def test_a_folder_of_slices_goes_in_batches_with_every_row_and_a_true_tally(
    stack: Stack, key: str, tmp_path: Path
) -> None:
    _slices_folder(tmp_path / "slices", 12)
    server = Counted(stack.app())
    out = tmp_path / "r.csv"
    args = ["submit", "slices", "--model", TINY_MODEL, "--out", str(out), "--poll", "0.2"]
    with served(server) as url:
        run = lungct(url, key, *args, "--concurrency", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "12 inputs: 12 succeeded" in run.stderr
    assert run.stderr.count("submitted") == 11 and run.stderr.count("existing") == 1
    posts = {path: n for (method, path), n in server.seen.items() if method == "POST"}
    assert posts == {"/api/v1/jobs/batch": 2}  # 12 files in 2 requests (--concurrency 2)
    assert server.seen[("GET", "/api/v1/results")] == 1
    rows = read_csv(out)
    assert sorted(r["input"] for r in rows) == [f"slices/s{i:02d}.png" for i in range(12)]
    assert len({r["job_id"] for r in rows}) == 11 and all(r["label"] for r in rows)
    state = json.loads((tmp_path / ".lungct-state.json").read_text())["inputs"]
    assert len(state) == 12 and {e["status"] for e in state.values()} == {"succeeded"}

    out.unlink()  # a rerun resumes every input from the state file, in one request per batch
    with served(server) as url:
        again = lungct(url, key, *args, "--concurrency", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("resumed") == 12 and len(read_csv(out)) == 12
    assert server.seen[("POST", "/api/v1/jobs/batch")] == 2  # nothing sent again


def test_against_a_server_without_the_batch_routes_each_file_goes_alone(
    stack: Stack, base_url: str, key: str, tmp_path: Path
) -> None:
    _slices_folder(tmp_path / "slices", 4)
    server = Counted(stack.app(), missing=("/api/v1/jobs/batch", "/api/v1/results"))
    out = tmp_path / "r.csv"
    args = ["submit", "slices", "--model", TINY_MODEL, "--out", str(out), "--poll", "0.2"]
    with served(server) as url:
        run = lungct(url, key, *args, "--concurrency", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "4 inputs: 4 succeeded" in run.stderr
    assert server.seen[("POST", "/api/v1/jobs/batch")] == 1  # tried once, then one by one
    assert server.seen[("POST", "/api/v1/jobs")] == 4
    assert server.seen[("GET", "/api/v1/results")] == 1
    assert len(read_csv(out)) == 4 and len(job_ids(base_url, key)) == 3
