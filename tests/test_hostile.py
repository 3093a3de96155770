"""Hostile clients against a real gunicorn (issue 21): what the battery found, kept fixed.

One gunicorn (``-c python:api.gunicorn_conf``, so the gevent worker class and
its monkey-patching) per database, with a private Redis and no worker: jobs
stay queued, which is all these requests need. Each test uses its own API
keys, so rate limits and the active-jobs cap of one test never touch another.
Stalled uploads and malformed chunked bodies live in the fault suite
(tests/test_faults.py: ``stalled-uploads``, ``json-errors``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import text

from bench.faults import FAST, Config, Stack, png
from tests.conftest import POSTGRES_URL, ROOT, database_backends
from tests.fixtures_dicom import ct_slice, to_bytes

pytestmark = [pytest.mark.integration]

ACTIVE_CAP = 3
SUBMIT_LIMIT = 12
HOSTILE_NAMES = [
    '=HYPERLINK("http://evil.example","x").dcm',
    "+SUM(1+1)*cmd.dcm",
    "@SUM(1).dcm",
    "-2+3.dcm",
    "scan\u202egnp.exe",
    "line\r\nbreak\x1b[31m.dcm",
]


@pytest.fixture(scope="module", params=database_backends())
def api(request: pytest.FixtureRequest, tiny_models_dir: Path) -> Iterator[Stack]:
    """gunicorn as deployed, on SQLite or PostgreSQL (psycopg 3 under gevent)."""
    env = {
        "MAX_ACTIVE_JOBS_PER_OWNER": str(ACTIVE_CAP),
        "RATE_LIMIT_SUBMIT": f"{SUBMIT_LIMIT}/minute",
        "JOB_WAIT_MAX_S": "15",
    }
    with Stack(Config(FAST, tiny_models_dir, POSTGRES_URL), request.param, "hostile", env) as st:
        st.start_api()
        st.wait_api()
        yield st


def _session(st: Stack, owner: str, admin: bool = False) -> requests.Session:
    """A client with a new key of its own (its own rate limit and active-jobs count)."""
    from sqlalchemy.orm import Session

    from api.auth import create_key

    with Session(st.engine) as s, s.begin():
        key = create_key(s, f"{owner}-{uuid.uuid4().hex[:6]}", admin=admin)[1]
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    return http


def _submit(
    st: Stack, http: requests.Session, data: bytes, name: str = "x.png", **headers: str
) -> requests.Response:
    return http.post(
        f"{st.base}/api/v1/jobs", files={"file": (name, data)}, headers=headers, timeout=30
    )


def _rows(st: Stack, sql: str, **params: Any) -> list[Any]:
    assert st.engine is not None
    with st.engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


# --- item 4: idempotency ---------------------------------------------------------------


def test_same_key_other_upload_is_422_and_only_a_hash_is_stored(api: Stack) -> None:
    http = _session(api, "idem")
    key = "Jane Doe 1970-01-01 upload"  # a client put a patient's name in it
    first = _submit(api, http, png(1), **{"Idempotency-Key": key})
    again = _submit(api, http, png(1), **{"Idempotency-Key": key})
    other = _submit(api, http, png(2), **{"Idempotency-Key": key})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 422, other.text
    assert "different upload" in other.json()["error"]["message"]
    stored = _rows(api, "SELECT idempotency_key FROM jobs WHERE id = :id", id=first.json()["id"])
    assert stored == [(hashlib.sha256(key.encode()).hexdigest(),)]
    assert not _rows(api, "SELECT id FROM jobs WHERE idempotency_key LIKE '%Jane%'")


# --- item 5: Retry-After only where it belongs -------------------------------------------


def test_a_202_carries_no_retry_after(api: Stack) -> None:
    r = _submit(api, _session(api, "ra"), png(3))
    assert r.status_code == 202
    assert "Retry-After" not in r.headers
    assert r.headers["X-RateLimit-Limit"] == str(SUBMIT_LIMIT)  # kept: clients pace with it


def test_the_active_jobs_429_keeps_its_own_retry_after(api: Stack) -> None:
    """No worker runs here: studies stay queued, each one unit of the owner's cap."""
    http = _session(api, "cap")
    for seed in range(ACTIVE_CAP):
        study = _zip({"s.png": png(10 + seed)})
        assert _submit(api, http, study, "s.zip").status_code == 202
    capped = _submit(api, http, _zip({"s.png": png(20)}), "s.zip")
    assert capped.status_code == 429 and "MAX_ACTIVE_JOBS_PER_OWNER" in capped.text
    # the view's estimate (nothing of this owner ended lately: 5 s), not the limiter's window
    assert capped.headers["Retry-After"] == "5"


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_the_limiters_429_has_a_correct_retry_after(api: Stack) -> None:
    http = _session(api, "limit")
    answers = [
        http.post(f"{api.base}/api/v1/jobs", timeout=30) for _ in range(SUBMIT_LIMIT + 1)
    ]  # no file: 400 each, but they count
    assert [a.status_code for a in answers[:SUBMIT_LIMIT]] == [400] * SUBMIT_LIMIT
    assert all("Retry-After" not in a.headers for a in answers[:SUBMIT_LIMIT])
    limited = answers[-1]
    assert limited.status_code == 429 and "RATE_LIMIT_SUBMIT" in limited.text
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


# --- items 6 and 7: OPTIONS and security headers ----------------------------------------


def test_options_answers_204_with_allow(api: Stack) -> None:
    r = requests.options(f"{api.base}/api/v1/jobs", timeout=10)
    assert r.status_code == 204 and r.content == b""
    assert {"GET", "POST"} <= {m.strip() for m in r.headers["Allow"].split(",")}
    assert "text/html" not in r.headers.get("Content-Type", "")


@pytest.mark.parametrize("path", ["/", "/docs", "/static/js/app.js", "/healthz"])
def test_pages_carry_security_headers(api: Stack, path: str) -> None:
    r = requests.get(f"{api.base}{path}", timeout=10)
    assert r.status_code == 200
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    if path != "/docs":  # Swagger UI's page needs its inline start-up script
        assert "unsafe-inline" not in csp


# --- item 11: a single DICOM file the job would refuse is refused at upload ---------------


@pytest.mark.parametrize(
    ("what", "change", "message"),
    [
        ("MR", {"modality": "MR"}, "modality MR"),
        ("localizer", {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "localizer"),
    ],
)
def test_single_dicom_refused_at_upload(
    api: Stack, what: str, change: dict[str, Any], message: str
) -> None:
    ds = ct_slice(series_uid="1.2.3.4.1", instance=1, z=0.0, **change)
    r = _submit(api, _session(api, "dicom"), to_bytes(ds), f"{what}.dcm")
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_truncated_dicom_refused_at_upload(api: Stack) -> None:
    data = to_bytes(ct_slice(series_uid="1.2.3.4.1", instance=1, z=0.0))
    r = _submit(api, _session(api, "dicom"), data[:-200], "cut.dcm")
    assert r.status_code == 400 and "cut short" in r.json()["error"]["message"], r.text


# --- item 1: what runs under the gevent worker keeps working ------------------------------


def test_long_poll_ends_when_the_job_is_cancelled(api: Stack) -> None:
    """The wait rides on Redis pub/sub (config/notices.py) and the database, under gevent."""
    http = _session(api, "wait")
    job_id = _submit(api, http, png(30)).json()["id"]
    answer: dict[str, Any] = {}

    def wait() -> None:
        start = time.monotonic()
        r = http.get(f"{api.base}/api/v1/jobs/{job_id}?wait=15", timeout=30)
        answer.update(status=r.json()["status"], seconds=time.monotonic() - start)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.0)
    cancel = requests.post(
        f"{api.base}/api/v1/jobs/{job_id}/cancel",
        headers={"Authorization": http.headers["Authorization"]},
        timeout=10,
    )
    waiter.join(30)
    assert cancel.status_code == 200
    assert answer["status"] == "cancelled" and answer["seconds"] < 5, answer


def test_metrics_sum_the_gevent_processes(api: Stack) -> None:
    admin = _session(api, "ops", admin=True)
    for _ in range(4):  # some requests for the histogram, spread over both processes
        requests.get(f"{api.base}/healthz", timeout=10)
    r = admin.get(f"{api.base}/metrics", timeout=10)
    assert r.status_code == 200
    assert "lungct_api_request_seconds_count" in r.text and "lungct_jobs" in r.text


# --- items 8 and 3: hostile member names, stored earlier, shown and exported safely --------


def test_hostile_member_names_are_shown_and_exported_safely(api: Stack, tmp_path: Path) -> None:
    """Rows as an older release stored them: the API answer and ``lungct results`` are safe."""
    http = _session(api, "names")
    job_id = _submit(api, http, png(40)).json()["id"]
    with api.engine.begin() as conn:  # type: ignore[union-attr]
        for i, name in enumerate(HOSTILE_NAMES):
            conn.execute(
                text(
                    "INSERT INTO slice_predictions (job_id, slice_index, source, label, error) "
                    "VALUES (:j, :i, :s, 'normal', :e)"
                ),
                {"j": job_id, "i": i, "s": name, "e": f"could not read {name}"},
            )
    items = http.get(f"{api.base}/api/v1/jobs/{job_id}/results?limit=50", timeout=10).json()
    shown = [i["source"] for i in items["items"]] + [i["error"] for i in items["items"]]
    for text_ in shown:
        assert not any(c in text_ for c in "\r\n\x1b\u202e"), text_
    assert "scan\ufffdgnp.exe" in shown

    out = tmp_path / "results.csv"
    cli = subprocess.run(
        [sys.executable, "-m", "client.cli", "results", job_id, "--out", str(out)],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LUNGCT_URL": api.base,
            "LUNGCT_API_KEY": http.headers["Authorization"].removeprefix("Bearer "),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    sources = [r["source"] for r in rows]
    assert len(sources) == len(HOSTILE_NAMES)
    assert all(not s.startswith(("=", "+", "-", "@")) for s in sources), sources
    assert '\'=HYPERLINK("http://evil.example","x").dcm' in sources
    assert all(not any(c in s for c in "\r\n\x1b\u202e") for s in sources), sources


# --- item 9: Flower never starts open to anyone ------------------------------------------


def _flower_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.pop("ALLOW_UNAUTHENTICATED_FLOWER", None)
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "refusing to start Flower without credentials"),
        (["--address=0.0.0.0"], {"ALLOW_UNAUTHENTICATED_FLOWER": "1"}, "loopback"),
    ],
)
def test_flower_without_credentials_refuses_to_start(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "worker.flower", "--port=0", *argv],
        cwd=ROOT,
        env=_flower_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_flower_opt_in_listens_on_loopback_only() -> None:
    from config import Settings
    from worker.flower import checked_argv

    opted_in = Settings(allow_unauthenticated_flower=True)
    assert checked_argv(["--port=5555"], opted_in, {}) == ["--port=5555", "--address=127.0.0.1"]
    assert checked_argv(["--address", "::1"], opted_in, {}) == ["--address", "::1"]
    with_auth = Settings(flower_basic_auth="admin:s3cret-pass")
    assert checked_argv(["--address=0.0.0.0"], with_auth, {}) == ["--address=0.0.0.0"]
    assert checked_argv(["--basic_auth=a:b"], Settings(), {}) == ["--basic_auth=a:b"]


def test_csv_neutralises_formula_text_but_not_numbers() -> None:
    """The web UI's rule (api/static/js/export.js): text cells only; numbers stay numbers."""
    from client.api import Job, SliceResult
    from client.export import JobResults, write_csv

    job = Job.from_dict({"id": "j1", "status": "succeeded"})
    slices = [
        SliceResult(0, source="@SUM(1).dcm", slice_position=-12.5, label="normal"),
        SliceResult(1, source="ok.dcm", error="=cmd|' /C calc'!A0", slice_position=3.0),
    ]
    out = io.StringIO()
    write_csv([JobResults(job, "+input.zip", slices)], out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["source"] for r in rows] == ["'@SUM(1).dcm", "ok.dcm"]
    assert rows[0]["slice_position"] == "-12.5" and rows[0]["input"] == "'+input.zip"
    assert rows[1]["error"].startswith("'=")
