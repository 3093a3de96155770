"""The job state machine and the sweeper, on a real database and a real Redis (no worker)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import TINY_MODEL


@pytest.fixture
def db(api_env):  # type: ignore[no-untyped-def]
    """A session factory on the test's migrated SQLite database."""
    from functools import partial

    from db.session import session_scope

    return partial(session_scope, api_env["DATABASE_URL"])


def _job(db, status: str = "queued", **values) -> str:  # type: ignore[no-untyped-def]
    import uuid

    from db.models import Job

    job_id = str(uuid.uuid4())
    with db() as s:
        s.add(
            Job(
                id=job_id, owner="alice", model_name=TINY_MODEL,
                model_version="1", upload_key=f"{job_id}/upload.png", upload_bytes=1,
                status=status, warnings=[], **{"kind": "image", **values},
            )
        )  # fmt: skip
    return job_id


def _get(db, job_id: str):  # type: ignore[no-untyped-def]
    from db.models import Job

    with db() as s:
        return s.get(Job, job_id)


def test_start_runs_a_job_once_and_counts_attempts(db) -> None:  # type: ignore[no-untyped-def]
    from db import lifecycle

    job_id = _job(db)
    with db() as s:
        first = lifecycle.start(s, job_id, stale_after_s=30)
    with db() as s:
        duplicate = lifecycle.start(s, job_id, stale_after_s=30)  # fresh heartbeat: skip
    assert first is not None and first.attempts == 1 and duplicate is None
    job = _get(db, job_id)
    assert job.status == "running" and job.heartbeat_at is not None


def test_a_stale_running_job_can_be_taken_over(db) -> None:  # type: ignore[no-untyped-def]
    from db import lifecycle
    from db.models import utcnow

    job_id = _job(db, "running", attempts=1, heartbeat_at=utcnow() - timedelta(seconds=60))
    with db() as s:
        taken = lifecycle.start(s, job_id, stale_after_s=30)
    assert taken is not None and taken.attempts == 2


def test_terminal_states_are_final(db) -> None:  # type: ignore[no-untyped-def]
    from db import lifecycle

    job_id = _job(db, "running")
    with db() as s:
        assert lifecycle.succeed(s, job_id, {"label": "normal"})
    with db() as s:
        assert not lifecycle.fail(s, job_id, "late failure")
        assert not lifecycle.cancel_queued(s, job_id) and not lifecycle.request_cancel(s, job_id)
        assert not lifecycle.requeue(s, job_id)
        assert lifecycle.start(s, job_id, stale_after_s=0) is None
    assert _get(db, job_id).status == "succeeded"


def test_an_end_moves_only_the_attempt_that_started_it(db) -> None:  # type: ignore[no-untyped-def]
    """The worker's end (one UPDATE compiled once, values as parameters): a job the
    sweeper gave to another attempt is not ended by the first one; the summary,
    counts and times are stored as given."""
    from db import lifecycle

    job_id = _job(db, "running", attempts=2)
    summary = {"label": "normal", "top_slices": [{"slice_index": 0}]}
    with db() as s:
        assert not lifecycle.succeed(s, job_id, summary, attempt=1, total=1, done=1)
        assert not lifecycle.fail(s, job_id, "late", allowed=("running",), attempt=1)
    assert _get(db, job_id).status == "running"
    with db() as s:
        assert lifecycle.succeed(s, job_id, summary, attempt=2, total=1, done=1, warnings=[])
        assert not lifecycle.succeed(s, job_id, summary, attempt=2)  # ended: final
    job = _get(db, job_id)
    assert (job.status, job.summary, job.total, job.done, job.error) == (
        "succeeded",
        summary,
        1,
        1,
        None,
    )
    assert job.finished_at is not None and job.updated_at >= job.finished_at


def test_hand_back_gives_the_attempt_back_requeue_does_not(db) -> None:  # type: ignore[no-untyped-def]
    from db import lifecycle

    a, b = _job(db, "running", attempts=2), _job(db, "running", attempts=2)
    with db() as s:
        assert lifecycle.hand_back(s, a) and lifecycle.requeue(s, b)
    assert (_get(db, a).status, _get(db, a).attempts) == ("queued", 1)
    assert (_get(db, b).status, _get(db, b).attempts) == ("queued", 2)


def test_cancel_queued_at_once_running_after_its_batch(db) -> None:  # type: ignore[no-untyped-def]
    from db import lifecycle

    queued, running = _job(db), _job(db, "running")
    with db() as s:
        assert lifecycle.cancel_queued(s, queued) and not lifecycle.cancel_queued(s, running)
        assert lifecycle.request_cancel(s, running)
        assert lifecycle.heartbeat(s, running) is False  # the worker learns it must stop
        assert lifecycle.cancelled(s, running)
    assert _get(db, queued).status == "cancelled" and _get(db, running).status == "cancelled"


def _sweep(api_env):  # type: ignore[no-untyped-def]
    """One sweep with the real storage and Redis; what it published, by kind."""
    from config import Settings
    from storage import open_storage
    from worker.runner import Context
    from worker.sweeper import sweep

    settings = Settings(stale_after_s=5, orphan_upload_age_s=60)
    published: list[tuple[str, str]] = []

    def republish(job_id: str, kind: str, model: str) -> None:
        published.append((job_id, kind))

    ctx = Context(settings, open_storage(settings), lambda name: None, republish)  # type: ignore[arg-type,return-value]
    report = sweep(ctx, Redis.from_url(api_env["REDIS_URL"]))
    return report, published


def test_sweeper_requeues_stale_jobs_and_republishes_waiting_studies(db, api_env) -> None:  # type: ignore[no-untyped-def]
    from db.models import utcnow

    old = utcnow() - timedelta(seconds=60)
    stale = _job(db, "running", heartbeat_at=old)
    alive = _job(db, "running", heartbeat_at=utcnow())
    lost = _job(db, "queued", kind="study", updated_at=old)  # its message may be gone
    fresh = _job(db, "queued", kind="study")
    report, published = _sweep(api_env)
    assert [w.job_id for w in report.requeued] == [stale] and report.republished == [lost]
    assert published == [(stale, "image"), (lost, "study")]
    assert _get(db, stale).status == "queued" and _get(db, alive).status == "running"
    report, published = _sweep(api_env)  # touched: not published again for STALE_AFTER_S
    assert published == [] and fresh not in report.republished


def test_sweeper_pushes_single_images_missing_from_their_list(db, api_env) -> None:  # type: ignore[no-untyped-def]
    """Every queued single image has an entry in its model's list: the sweeper pushes
    those that lost theirs (Redis lost its data, the API died before its push)."""
    from config import Settings, image_queue
    from db.models import utcnow

    settings = Settings()
    images = [_job(db, updated_at=utcnow() - timedelta(seconds=90 - i)) for i in range(3)]
    image_queue.push(settings, [images[1]], TINY_MODEL)  # this one still has its entry
    report, _ = _sweep(api_env)
    assert report.republished == [images[0], images[2]]
    listed = Redis.from_url(api_env["REDIS_URL"]).lrange(
        image_queue.list_key(settings, TINY_MODEL), 0, -1
    )
    assert [x.decode() for x in listed] == [images[1], images[0], images[2]]
    report, _ = _sweep(api_env)  # all listed now: nothing pushed twice
    assert report.republished == []


def test_sweeper_removes_orphaned_uploads_and_expired_jobs(db, api_env) -> None:  # type: ignore[no-untyped-def]
    from db.models import utcnow
    from storage import LocalStorage

    storage = Path(api_env["STORAGE_DIR"])
    orphan = storage / "0a9e7d1c-crashed-mid-submit"
    orphan.mkdir(parents=True)
    (orphan / "upload.zip.1234abcd.part").write_bytes(b"half an upload")
    live = _job(db, "queued")
    (storage / live).mkdir()
    # large uploads an API process was receiving when it was killed, and one arriving now
    left, arriving = LocalStorage(storage).spool(), LocalStorage(storage).spool()
    old = time.time() - 3600
    for path in (orphan, storage / live, left.path):
        os.utime(path, (old, old))
    expired = _job(db, "succeeded", finished_at=utcnow() - timedelta(days=31))
    kept = _job(db, "succeeded", finished_at=utcnow() - timedelta(days=1))
    report, _ = _sweep(api_env)
    assert report.orphans_removed == [orphan.name] and not orphan.exists()
    assert (storage / live).is_dir()
    assert not left.path.exists() and arriving.path.exists()
    left.close()
    arriving.close()
    assert report.expired == [expired] and _get(db, expired) is None
    assert _get(db, kept) is not None


def test_only_one_sweeper_runs_at_a_time(api_env) -> None:  # type: ignore[no-untyped-def]
    from worker.sweeper import LOCK_PREFIX

    redis = Redis.from_url(api_env["REDIS_URL"])
    lock = redis.lock(LOCK_PREFIX + api_env["CELERY_QUEUE"], timeout=30)
    assert lock.acquire(blocking=False)
    try:
        report, _ = _sweep(api_env)
        assert report is None
    finally:
        lock.release()
