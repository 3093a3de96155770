"""Cross-request micro-batching through the real worker: same answers, each job its own end."""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Stack, png_bytes, zip_bytes
from tests.test_pipeline import submit, wait_done

pytestmark = pytest.mark.integration


@pytest.fixture
def api(stack: Stack):  # type: ignore[no-untyped-def]
    return stack.client()


def _busy(api) -> str:  # type: ignore[no-untyped-def]
    """A study that keeps the worker busy while single images pile up behind it."""
    members = {f"b{i:04}.png": png_bytes(i, size=8) for i in range(600)}
    job_id = submit(api, zip_bytes(members), "busy.zip")["id"]
    deadline = time.monotonic() + 60
    while api.get(f"/api/v1/jobs/{job_id}").json["status"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return job_id


def _batch_sizes(log: Path) -> list[int]:
    return [int(n) for n in re.findall(r"micro-batch of (\d+) single-image jobs", log.read_text())]


def test_a_burst_of_single_images_shares_forward_passes_with_unbatched_answers(
    stack: Stack, api
) -> None:  # type: ignore[no-untyped-def]
    images = [png_bytes(100 + i) for i in range(12)]
    alone = [
        wait_done(api, submit(api, img, f"a{i}.png")["id"]) for i, img in enumerate(images[:3])
    ]
    before = len(_batch_sizes(stack.log))
    busy = _busy(api)
    ids = [submit(api, img, f"s{i}.png")["id"] for i, img in enumerate(images)]
    jobs = [wait_done(api, job_id) for job_id in ids]
    assert wait_done(api, busy)["status"] == "succeeded"
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    assert max(_batch_sizes(stack.log)[before:]) > 1  # they did share a forward pass
    for one, batched in zip(alone, jobs[:3], strict=True):
        p1, p2 = one["summary"]["probabilities"], batched["summary"]["probabilities"]
        assert one["summary"]["label"] == batched["summary"]["label"]
        assert all(abs(p1[c] - p2[c]) < 1e-4 for c in p1)
    for job in jobs:  # each job has exactly its own one result
        items = api.get(f"/api/v1/jobs/{job['id']}/results").json["items"]
        assert len(items) == 1 and items[0]["slice_index"] == 0 and items[0]["label"]


def test_a_bad_image_fails_only_its_own_job(stack: Stack, api) -> None:  # type: ignore[no-untyped-def]
    """Six queued images reach the worker in one push, one of them unreadable by then
    (the upload check decodes every image, so the bytes are spoilt in storage)."""
    from config import Settings, image_queue
    from db.models import Job
    from db.session import session_scope
    from storage import open_storage

    settings = Settings()
    storage = open_storage(settings)
    first = wait_done(api, submit(api, png_bytes(199), "first.png")["id"])  # owner and model
    model = first["model"]["name"]
    ids = []
    for i in range(6):
        job_id = str(uuid.uuid4())
        data = b"this is no longer an image" if i == 2 else png_bytes(200 + i)
        stored = storage.save(job_id, "s.png", io.BytesIO(data))
        with session_scope(settings.database_url) as s:
            s.add(Job(id=job_id, kind="image", owner=first["owner"], model_name=model,
                      model_version="1", upload_key=stored.key, upload_bytes=stored.size,
                      warnings=[]))  # fmt: skip
        ids.append(job_id)
    image_queue.push(settings, ids, model)
    jobs = {j: wait_done(api, j) for j in ids}
    assert jobs[ids[2]]["status"] == "failed" and jobs[ids[2]]["error"]
    assert all(jobs[j]["status"] == "succeeded" for j in ids if j != ids[2])


def test_concurrent_clients_all_finish(stack: Stack, api) -> None:  # type: ignore[no-untyped-def]
    ended: list[str] = []
    # apps are built here, one at a time: this CPython 3.11 failed ast.parse
    # (werkzeug compiles each route with it) in threads building apps at once,
    # "SystemError: AST constructor recursion depth mismatch"
    clients = [stack.client() for _ in range(4)]

    def client(offset: int) -> None:
        c = clients[offset]
        for i in range(5):
            ended.append(
                wait_done(c, submit(c, png_bytes(300 + offset * 10 + i), "x.png")["id"])["status"]
            )

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ended == ["succeeded"] * 20


def test_one_store_of_many_rows_fits_every_database(stack: Stack) -> None:
    """A micro-batch of multi-frame images can hold thousands of rows: one call inserts them
    all, once each, on every database (PostgreSQL takes at most 65,535 values per statement,
    so the rows must be paged: 3,000 rows of 12 values would not fit in one)."""
    from sqlalchemy import func, select

    from db.models import Job, SlicePrediction
    from db.session import session_scope
    from worker.runner import insert_rows as _insert_ignore

    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(2)]
    per_job = 3000  # 2 jobs: 72,000 values, more than one PostgreSQL statement takes
    row = {  # every column the worker writes (worker.runner._row): 12 values a row
        "source": "#", "series_uid": "1.2", "instance_number": 1, "slice_position": 0.0,
        "frame": None, "label": "a", "probabilities": {"a": 1.0}, "ood_score": 0.1,
        "out_of_distribution": False, "error": None,
    }  # fmt: skip
    url = stack.env["DATABASE_URL"]
    rows = [{"job_id": j, "slice_index": i, **row} for j in ids for i in range(per_job)]
    with session_scope(url) as s:
        for j in ids:
            s.add(Job(id=j, kind="image", owner="t", model_name="m", model_version="1",
                      upload_key=f"{j}/upload.dcm", upload_bytes=1, warnings=[]))  # fmt: skip
    with session_scope(url) as s:
        _insert_ignore(s, rows)
    with session_scope(url) as s:
        _insert_ignore(s, rows[:10])  # a redelivery stores nothing twice
    with session_scope(url) as s:
        count = s.scalar(select(func.count()).where(SlicePrediction.job_id.in_(ids)))
        for j in ids:
            s.delete(s.get_one(Job, j))
    assert count == 2 * per_job


def _received(log: Path, job_ids: list[str]) -> int:
    """How many of these jobs' broker messages the worker received."""
    text = log.read_text()
    return sum(text.count(f"lungct.run_job[{j}] received") for j in job_ids)


def test_a_burst_runs_without_a_celery_message_per_image(stack: Stack, api) -> None:  # type: ignore[no-untyped-def]
    busy = _busy(api)
    ids = [submit(api, png_bytes(400 + i), f"d{i}.png")["id"] for i in range(10)]
    jobs = [wait_done(api, j) for j in ids]
    wait_done(api, busy)
    assert all(j["status"] == "succeeded" for j in jobs)
    assert _received(stack.log, ids) == 0  # taken from the list, not delivered as tasks
    assert _received(stack.log, [busy]) == 1


def _lengths(env: dict[str, str], model: str) -> tuple[int, int]:
    """(entries in the model's single-image list, messages in the Celery queue)."""
    from redis import Redis

    from config import Settings, image_queue

    redis = Redis.from_url(env["REDIS_URL"])
    images = redis.llen(image_queue.list_key(Settings(), model))
    return int(images), int(redis.llen(env["CELERY_QUEUE"]))


def test_single_images_wait_in_their_models_list_studies_get_a_message(api_env, client) -> None:  # type: ignore[no-untyped-def]
    first = submit(client, png_bytes(1), "a.png")
    submit(client, png_bytes(2), "b.png")
    submit(client, zip_bytes({"s.png": png_bytes(3)}), "study.zip")
    assert _lengths(api_env, first["model"]["name"]) == (2, 1)


def test_the_claim_takes_each_listed_image_once_and_drops_ended_ones(api_env, client) -> None:  # type: ignore[no-untyped-def]
    from config import Settings, image_queue
    from db import lifecycle
    from db.session import session_scope

    ids = [submit(client, png_bytes(10 + i), f"{i}.png")["id"] for i in range(4)]
    client.post(f"/api/v1/jobs/{ids[1]}/cancel")
    settings = Settings(microbatch_wait_ms=0)
    model = client.get(f"/api/v1/jobs/{ids[0]}").json["model"]["name"]
    taken = image_queue.take(settings, [model], limit=3, block_s=1)
    assert taken == (model, ids[:3])  # the oldest three, in order
    with session_scope(api_env["DATABASE_URL"]) as s:
        started = lifecycle.start_images(s, [*taken[1], *taken[1]])
    assert sorted(c.job_id for c in started) == sorted([ids[0], ids[2]])  # not the cancelled
    assert image_queue.take(settings, [model], limit=3, block_s=1) == (model, [ids[3]])
    assert image_queue.take(settings, [model], limit=3, block_s=0.1) is None


def test_an_enqueue_failure_fails_only_a_job_still_queued(api_env) -> None:  # type: ignore[no-untyped-def]
    """A push that timed out in the API may still have reached Redis, and a worker may
    have started the job meanwhile: the API's 503 path must not fail that job."""
    from config import Settings
    from db import ending, lifecycle
    from db.models import Job, JobStatus
    from db.session import session_scope
    from storage import open_storage

    settings = Settings()
    storage = open_storage(settings)
    ids = []
    for name in ("queued.png", "running.png"):
        job_id = str(uuid.uuid4())
        stored = storage.save(job_id, name, io.BytesIO(png_bytes(1)))
        with session_scope(settings.database_url) as s:
            s.add(Job(id=job_id, kind="image", owner="a", model_name="m", model_version="1",
                      upload_key=stored.key, upload_bytes=stored.size, warnings=[]))  # fmt: skip
        ids.append(job_id)
    with session_scope(settings.database_url) as s:
        assert lifecycle.start(s, ids[1], stale_after_s=30) is not None  # a worker took it
    end = ending.failed("could not be queued", allowed=(JobStatus.QUEUED,))
    assert ending.close(settings, storage, {job_id: end for job_id in ids}) == [ids[0]]
    with session_scope(settings.database_url) as s:
        assert [s.get_one(Job, j).status for j in ids] == ["failed", "running"]
    uploads = Path(api_env["STORAGE_DIR"])
    assert not list((uploads / ids[0]).glob("upload*"))  # released
    assert list((uploads / ids[1]).glob("upload*"))  # the running job keeps its upload


def test_a_submit_whose_queue_is_down_answers_503_and_fails_the_job(api_env) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from api import create_app
    from config import Settings
    from db.models import Job
    from db.session import session_scope
    from tests.conftest import authed, free_port, new_key

    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(Settings(redis_url=dead, broker_timeout_s=0.5))
    client = authed(app, new_key(api_env["DATABASE_URL"]))
    answer = client.post("/api/v1/jobs", data={"file": (io.BytesIO(png_bytes(1)), "a.png")})
    assert answer.status_code == 503 and "queue is unavailable" in answer.json["error"]["message"]
    with session_scope(api_env["DATABASE_URL"]) as s:
        (job,) = s.scalars(select(Job)).all()
        assert (job.status, job.error) == ("failed", "could not be queued")
