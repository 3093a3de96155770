"""End to end with STORAGE_URL=s3://...: API -> S3 (moto's server) -> Celery worker subprocess.

The API process (in-process test client) and the worker subprocess each get an
empty temporary folder (TMPDIR): after the jobs, it is still empty, the local
storage folder (STORAGE_DIR) was never created, the bucket holds no upload once
a job has ended (only its slice packs and heat maps), and nothing at all once
the job is deleted.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from bench.e2e import spawn, stop
from tests.conftest import (
    DATA_DIR,
    S3,
    Stack,
    _drop_queue,
    _sqlite,
    base_env,
    new_bucket,
    new_key,
    png_bytes,
    wait_for_worker,
    zip_bytes,
)
from tests.test_pipeline import all_results, wait_done

pytestmark = pytest.mark.integration
STUDY = DATA_DIR / "lung-pet-ct-dx" / "Lung_Dx-A0001"


class S3Stack(Stack):
    bucket: S3
    scratch: Path


@pytest.fixture(scope="module")
def s3_stack(
    s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path
) -> Iterator[S3Stack]:
    """Real Redis + real worker subprocess + SQLite, with uploads in a fresh S3 bucket."""
    from db.migrate import upgrade
    from db.session import dispose

    tmp = tmp_path_factory.mktemp("s3-stack")
    db = _sqlite(tmp)
    bucket = new_bucket(s3_endpoint, prefix="lungct/uploads")
    scratch = tmp / "scratch"
    scratch.mkdir()
    metrics = tmp / "metrics"  # the worker's Prometheus files: not uploads, kept apart
    metrics.mkdir()
    env = {
        **base_env(tmp, tiny_models_dir, db.url),
        **bucket.env,
        "TMPDIR": str(scratch),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
    }
    log = tmp / "worker.log"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setattr(tempfile, "tempdir", str(scratch))  # the API's spooled uploads
        upgrade(db.url, timeout_s=10)
        proc = _start_worker(env, log)
        try:
            wait_for_worker(proc, log)
            stack = S3Stack(env, proc, log, key=new_key(db.url, "tester"))
            stack.bucket, stack.scratch = bucket, scratch
            yield stack
        finally:
            stop(proc)
            _drop_queue(env)
            dispose(db.url)


def submit(client, data: bytes, name: str, status: int = 202) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """POST a multipart body encoded here: the test client's own encoder leaves a temporary
    file open for bodies over 500 KB (werkzeug.test), and these are larger on purpose."""
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(data), name)})
    r = client.post(
        "/api/v1/jobs", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert r.status_code == status, r.json
    return r.json


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Like conftest.start_worker, named ``s3-<id>@host``: the session's stack worker may be up
    too (Celery warns about two nodes with one name, and warnings are errors here)."""
    argv = [sys.executable, "-m", "worker", "--concurrency", "1", "--loglevel", "INFO"]
    argv.append(f"--hostname=s3-{uuid.uuid4().hex[:6]}@%h")  # the last --hostname wins
    return spawn(argv, {**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "2"}, log)


def _uploads(stack: S3Stack, timeout_s: float = 10) -> list[str]:
    """Upload objects left once the worker has released them (it does so after closing)."""

    def uploads() -> list[str]:
        listed = stack.bucket.keys()
        return [k for k in listed if k.rsplit("/", 1)[-1].startswith("upload")]

    deadline = time.monotonic() + timeout_s
    while (keys := uploads()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return keys


def _deleted_leaves_nothing(stack: S3Stack, api, job_id: str) -> None:  # type: ignore[no-untyped-def]
    """The job's slice packs and heat maps live in the bucket until the job is deleted."""
    listed = stack.bucket.keys()
    assert any(f"/{job_id}/packs/" in k for k in listed)
    assert not any(f"/{job_id}/images/" in k or f"/{job_id}/views/" in k for k in listed)
    assert api.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    assert stack.bucket.keys() == []


def _nothing_local(stack: S3Stack) -> None:
    assert not Path(stack.env["STORAGE_DIR"]).exists()
    assert [p for p in stack.scratch.rglob("*") if not p.is_dir()] == []  # pymp-*: Celery's


def test_study_through_s3_leaves_nothing_behind(s3_stack: S3Stack) -> None:
    from db.models import Job
    from db.session import session_scope

    api = s3_stack.client()
    members = {f"study/slice_{i}.png": png_bytes(i, size=256) for i in range(1, 13)}
    archive = zip_bytes(members)
    assert len(archive) > 500 * 1024  # werkzeug spools it to a temporary file
    job = wait_done(api, submit(api, archive, "Doe^John.zip")["id"])
    assert job["status"] == "succeeded", job
    with session_scope(s3_stack.env["DATABASE_URL"]) as s:
        row = s.get_one(Job, job["id"])
        assert (row.upload_key, row.upload_bytes) == (f"{job['id']}/upload.zip", len(archive))
    assert [i["slice_index"] for i in all_results(api, job["id"])] == list(range(12))
    # one PUT per stored batch (batches of 8: one or two), read back with ranged GETs
    listed = s3_stack.bucket.keys()
    packs = [k for k in listed if f"/{job['id']}/packs/" in k]
    assert 1 <= len(packs) <= 2, packs
    base = f"/api/v1/jobs/{job['id']}/slices"
    image = api.get(f"{base}/11/image")
    assert image.status_code == 200 and image.mimetype == "image/png"
    view = api.get(f"{base}/0/view")
    assert view.status_code == 200 and view.mimetype == "image/png"
    original = Image.open(io.BytesIO(members["study/slice_1.png"]))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(view.data))), np.asarray(original))
    assert _uploads(s3_stack) == []
    _nothing_local(s3_stack)
    _deleted_leaves_nothing(s3_stack, api, job["id"])


def test_rejected_upload_never_reaches_the_bucket(s3_stack: S3Stack) -> None:
    api = s3_stack.client()
    answer = submit(api, b"just text, " * 100_000, "notes.dcm", status=400)
    assert "not a DICOM/PNG/JPEG/zip file" in answer["error"]["message"], answer
    assert s3_stack.bucket.keys() == []
    _nothing_local(s3_stack)


@pytest.mark.realdata
@pytest.mark.skipif(not STUDY.is_dir(), reason="needs DATA_DIR with lung-pet-ct-dx")
def test_real_dicom_study_through_s3(s3_stack: S3Stack, tmp_path: Path) -> None:
    """The 128-slice study (a 39 MB zip: a multipart upload) read by the worker from S3."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(STUDY.rglob("*")):
            if path.is_file():
                zf.write(path, os.path.relpath(path, STUDY.parent))
    api = s3_stack.client()
    job = wait_done(api, submit(api, buf.getvalue(), "study.zip")["id"], timeout_s=300)
    assert job["status"] == "succeeded", job
    assert job["progress"]["done"] == 128
    assert _uploads(s3_stack) == []
    _nothing_local(s3_stack)
    _deleted_leaves_nothing(s3_stack, api, job["id"])
