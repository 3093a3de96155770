"""Cross-request micro-batching through the real worker: same answers, each job its own end."""

from __future__ import annotations

import re
import threading
import time
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
    busy = _busy(api)
    ids = [submit(api, png_bytes(200 + i), f"s{i}.png")["id"] for i in range(6)]
    storage = Path(stack.env["STORAGE_DIR"])
    (storage / ids[2] / "upload.png").write_bytes(b"this is no longer an image")
    jobs = {j: wait_done(api, j) for j in ids}
    wait_done(api, busy)
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
    """A micro-batch of multi-frame images can hold thousands of rows: they are inserted in
    chunks (PostgreSQL takes at most 65,535 values per statement), once each."""
    from sqlalchemy import func, select

    from db.models import Job, SlicePrediction
    from db.session import session_scope
    from worker.pipeline import INSERT_ROWS, _insert_ignore

    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(2)]
    per_job = INSERT_ROWS + INSERT_ROWS // 2  # 2 jobs: 3 statements' worth of rows
    row = {  # every column the worker writes (worker.pipeline._row): 12 values a row
        "source": "#", "series_uid": "1.2", "instance_number": 1, "slice_position": 0.0,
        "frame": None, "label": "a", "probabilities": {"a": 1.0}, "ood_score": 0.1,
        "out_of_distribution": False, "error": None,
    }  # fmt: skip
    rows = [{"job_id": j, "slice_index": i, **row} for j in ids for i in range(per_job)]
    with session_scope() as s:
        for j in ids:
            s.add(Job(id=j, kind="image", owner="t", model_name="m", model_version="1",
                      upload_key=f"{j}/upload.dcm", upload_bytes=1, warnings=[]))  # fmt: skip
    if stack.env["DATABASE_URL"].startswith("postgresql"):  # what chunks prevent
        with pytest.raises(Exception, match="65535"), session_scope() as s:
            _insert_ignore(s, rows, chunk=len(rows))
    with session_scope() as s:
        _insert_ignore(s, rows)
    with session_scope() as s:
        _insert_ignore(s, rows[:10])  # a redelivery stores nothing twice
    with session_scope() as s:
        count = s.scalar(select(func.count()).where(SlicePrediction.job_id.in_(ids)))
        for j in ids:
            s.delete(s.get_one(Job, j))
    assert count == 2 * per_job


def _received(log: Path, job_ids: list[str]) -> int:
    """How many of these jobs' broker messages the worker received."""
    text = log.read_text()
    return sum(text.count(f"lungct.run_job[{j}] received") for j in job_ids)


def test_a_burst_rings_the_doorbell_instead_of_sending_a_message_per_image(
    stack: Stack, api
) -> None:  # type: ignore[no-untyped-def]
    busy = _busy(api)
    ids = [submit(api, png_bytes(400 + i), f"d{i}.png")["id"] for i in range(10)]
    jobs = [wait_done(api, j) for j in ids]
    wait_done(api, busy)
    assert all(j["status"] == "succeeded" for j in jobs)
    assert _received(stack.log, ids) <= 3  # one ring, maybe another after a claim


@pytest.mark.parametrize("delivered", ["ended", "unknown"])
def test_a_delivery_whose_job_is_gone_passes_the_doorbell_on(
    stack: Stack, api, delivered: str
) -> None:  # type: ignore[no-untyped-def]
    """The message that rang may find its own job taken (or deleted): it passes the
    doorbell on, so the single images that skipped their message are claimed."""
    import uuid

    from api.queue import enqueue_job
    from config import Settings
    from config.doorbell import doorbell_key
    from config.notices import redis_client

    settings = Settings()
    ended = wait_done(api, submit(api, png_bytes(500), "e.png")["id"])["id"]
    busy = _busy(api)
    model = api.get(f"/api/v1/jobs/{busy}").json["model"]["name"]
    redis_client(settings).set(doorbell_key(settings, model), "pending")  # a message is pending
    ids = [submit(api, png_bytes(510 + i), f"w{i}.png")["id"] for i in range(3)]
    assert _received(stack.log, ids) == 0  # they did not publish
    enqueue_job(settings, ended if delivered == "ended" else str(uuid.uuid4()))
    # well before the sweeper would republish them (STALE_AFTER_S, 30 s)
    jobs = [wait_done(api, j, timeout_s=20) for j in ids]
    wait_done(api, busy)
    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    assert _received(stack.log, ids) == 1  # it rang for the oldest, which claimed the rest


def _queue_length(env: dict[str, str]) -> int:
    from redis import Redis

    return int(Redis.from_url(env["REDIS_URL"]).llen(env["CELERY_QUEUE"]))


def test_single_images_publish_only_when_no_message_is_pending(api_env, client) -> None:  # type: ignore[no-untyped-def]
    from config import Settings
    from config.doorbell import answer

    first = submit(client, png_bytes(1), "a.png")
    assert _queue_length(api_env) == 1
    submit(client, png_bytes(2), "b.png")  # the first one's message will claim it
    assert _queue_length(api_env) == 1
    submit(client, zip_bytes({"s.png": png_bytes(3)}), "study.zip")  # a study always publishes
    assert _queue_length(api_env) == 2
    answer(Settings(), first["model"]["name"])  # a worker claimed: the next image rings
    submit(client, png_bytes(4), "c.png")
    assert _queue_length(api_env) == 3


def test_with_the_doorbell_off_every_single_image_publishes(api_env) -> None:  # type: ignore[no-untyped-def]
    from api import create_app
    from config import Settings
    from tests.conftest import authed, new_key

    app = create_app(Settings(microbatch_doorbell=False))
    client = authed(app, new_key(api_env["DATABASE_URL"]))
    for i in range(3):
        submit(client, png_bytes(i), f"{i}.png")
    assert _queue_length(api_env) == 3


def test_a_claim_that_fills_the_batch_rings_for_the_rest(api_env, client) -> None:  # type: ignore[no-untyped-def]
    from config import Settings
    from config.doorbell import doorbell_key
    from config.notices import redis_client
    from worker.microbatch import claim

    ids = [submit(client, png_bytes(10 + i), f"{i}.png")["id"] for i in range(4)]
    settings = Settings()
    model = client.get(f"/api/v1/jobs/{ids[0]}").json["model"]["name"]
    published: list[str] = []
    claimed = claim(model, settings, published.append, room=2)
    assert sorted(c.job_id for c in claimed) == sorted(ids[:2])  # the oldest two
    assert published == [ids[2]]  # rang for the oldest one still waiting
    assert redis_client(settings).get(doorbell_key(settings, model)) == ids[2].encode()
