"""End to end through real parts: API -> Redis -> Celery worker subprocess -> database.

Runs once per database backend (SQLite, and PostgreSQL when TEST_POSTGRES_URL
is set). Nothing is eager or faked: the worker is ``python -m worker``.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import Stack, default_model, png_bytes, zip_bytes

pytestmark = pytest.mark.integration


def submit(client, data: bytes, name: str, **form: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    r = client.post(
        "/api/v1/jobs",
        data={"file": (io.BytesIO(data), name), **form},
        content_type="multipart/form-data",
    )
    assert r.status_code == 202, r.json
    return r.json


def wait_done(client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s}s")


def all_results(client, job_id: str, limit: int = 7) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    items, url = [], f"/api/v1/jobs/{job_id}/results?limit={limit}"
    while url:
        page = client.get(url).json
        items += page["items"]
        url = page["next"]
    return items


@pytest.fixture
def api(stack: Stack):  # type: ignore[no-untyped-def]
    return stack.client()


def test_single_image_succeeds(api) -> None:  # type: ignore[no-untyped-def]
    job = wait_done(api, submit(api, png_bytes(1), "slice.png")["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"done": 1, "total": 1}
    assert job["summary"]["label"] in job["summary"]["probabilities"]
    [item] = all_results(api, job["id"])
    assert item["source"] == "upload.png" and item["error"] is None  # client name not kept
    assert abs(sum(item["probabilities"].values()) - 1) < 1e-4
    if default_model() == "lungct-cnn6":  # the shipped card has an OOD detector
        assert isinstance(item["ood_score"], float)
        assert isinstance(item["out_of_distribution"], bool)
        assert job["summary"]["ood_fraction"] in (0.0, 1.0)


def test_study_zip_pages_every_slice_in_order(api) -> None:  # type: ignore[no-untyped-def]
    members = {f"study/slice_{i}.png": png_bytes(i) for i in range(1, 21)}
    job = wait_done(api, submit(api, zip_bytes(members), "study.zip")["id"])
    assert job["status"] == "succeeded", job
    items = all_results(api, job["id"])
    assert [i["slice_index"] for i in items] == list(range(20))
    # A PNG-only archive keeps no paths (STORE_SOURCE_PATHS unset): "#<position>.png".
    assert [i["source"] for i in items] == [f"#{i}.png" for i in range(1, 21)]
    assert all(i["label"] for i in items)
    assert job["summary"]["slices_predicted"] == 20


def test_bad_member_is_recorded_and_job_still_succeeds(api) -> None:  # type: ignore[no-untyped-def]
    good = png_bytes(3)
    members = {"a.png": good, "b.png": good[: len(good) // 2], "c.png": png_bytes(4)}
    job = wait_done(api, submit(api, zip_bytes(members), "study.zip")["id"])
    assert job["status"] == "succeeded", job
    items = {i["source"]: i for i in all_results(api, job["id"])}  # a, b, c: #1, #2, #3
    assert items["#2.png"]["error"] and items["#2.png"]["label"] is None
    assert items["#1.png"]["label"] and items["#3.png"]["label"]
    assert job["warnings_count"] >= 1


def test_nothing_decodable_fails_with_message(api) -> None:  # type: ignore[no-untyped-def]
    bad = png_bytes(5)[:60]
    job = wait_done(api, submit(api, zip_bytes({"a.png": bad, "b.png": bad}), "s.zip")["id"])
    assert job["status"] == "failed"
    assert job["error"]


def test_redelivery_does_not_duplicate_rows(stack: Stack, api) -> None:  # type: ignore[no-untyped-def]
    """Deliver the same job ID twice while it is half done: rows stay unique."""
    from api.queue import enqueue_job
    from config import Settings
    from db.models import Job, JobStatus, SlicePrediction
    from db.session import session_scope

    archive = zip_bytes({f"s{i}.png": png_bytes(i) for i in range(12)})
    job_id = submit(api, archive, "s.zip")["id"]
    wait_done(api, job_id)
    assert not list((Path(stack.env["STORAGE_DIR"]) / job_id).glob("upload*"))  # dropped when done
    # pretend the worker died after the first batch
    with session_scope(stack.env["DATABASE_URL"]) as s:
        s.query(SlicePrediction).filter(
            SlicePrediction.job_id == job_id, SlicePrediction.slice_index >= 8
        ).delete()
        job = s.get_one(Job, job_id)
        job.status, job.done, job.summary = JobStatus.RUNNING, 8, None
        job.heartbeat_at = None  # its worker died: no heartbeat
        upload = Path(stack.env["STORAGE_DIR"]) / job.upload_key
    upload.parent.mkdir(parents=True, exist_ok=True)  # its images are still there
    upload.write_bytes(archive)
    settings = Settings()
    enqueue_job(settings, job_id)
    enqueue_job(settings, job_id)  # a duplicate delivery: the first takes it, this one skips
    job = wait_done(api, job_id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and job["summary"] is None:
        time.sleep(0.1)
        job = api.get(f"/api/v1/jobs/{job_id}").json
    with session_scope(stack.env["DATABASE_URL"]) as s:
        n = s.scalar(select(func.count()).where(SlicePrediction.job_id == job_id))
    assert n == 12 and job["progress"]["done"] == 12 and job["status"] == "succeeded"


def test_finished_job_can_be_deleted(api) -> None:  # type: ignore[no-untyped-def]
    job = wait_done(api, submit(api, png_bytes(7), "x.png")["id"])
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/api/v1/jobs/{job['id']}").status_code == 404


def test_readyz_sees_the_worker(stack: Stack, api) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import authed, new_key

    r = api.get("/readyz")
    assert r.status_code == 200, r.json
    assert r.json["checks"]["workers"] == "ok"  # no detail for a plain key
    operator = authed(stack.app(), new_key(stack.env["DATABASE_URL"], "ops", admin=True))
    detail = operator.get("/readyz").json["checks"]["workers"]
    assert "cpu-" in detail and "pool processes warm" in detail  # its model is loaded


def test_a_job_can_choose_another_installed_model(api) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import TINY_MODEL

    listed = {m["name"] for m in api.get("/api/v1/models").json["items"]}
    assert {TINY_MODEL, default_model()} <= listed
    job = wait_done(api, submit(api, png_bytes(9), "x.png", model=TINY_MODEL)["id"])
    assert job["status"] == "succeeded" and job["model"]["name"] == TINY_MODEL


def test_a_running_job_can_be_cancelled_and_keeps_what_it_stored(api) -> None:  # type: ignore[no-untyped-def]
    from db.models import SlicePrediction
    from db.session import session_scope

    members = {f"s{i:04}.png": png_bytes(i, size=8) for i in range(1200)}  # < 500 kB
    job_id = submit(api, zip_bytes(members), "big.zip")["id"]
    deadline = time.monotonic() + 60
    while api.get(f"/api/v1/jobs/{job_id}").json["progress"]["done"] == 0:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    r = api.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json["status"] in ("running", "cancelled")
    job = wait_done(api, job_id)
    assert job["status"] == "cancelled" and job["finished_at"]
    with session_scope(api.application.config["SETTINGS"].database_url) as s:
        stored = s.scalar(select(func.count()).where(SlicePrediction.job_id == job_id))
    assert 0 < stored < 1200 and job["progress"]["done"] == stored


def test_metrics_of_the_api_and_the_worker(stack: Stack, api) -> None:  # type: ignore[no-untyped-def]
    import requests

    from tests.conftest import authed, new_key

    wait_done(
        api, submit(api, zip_bytes({f"m{i}.png": png_bytes(i) for i in range(5)}), "m.zip")["id"]
    )
    assert api.get("/metrics").status_code == 403  # operators only
    operator = authed(stack.app(), new_key(stack.env["DATABASE_URL"], "ops", admin=True))
    text = operator.get("/metrics").get_data(as_text=True)
    assert 'lungct_jobs{status="succeeded"}' in text and "lungct_queue_depth" in text
    assert "lungct_api_request_seconds_bucket" in text
    port = stack.env["WORKER_METRICS_PORT"]
    worker = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    predicted = [
        line for line in worker.splitlines()
        if line.startswith('lungct_worker_slices_total{outcome="predicted"}')
    ]  # fmt: skip
    assert predicted and float(predicted[0].split()[-1]) >= 5
    assert "lungct_worker_inference_seconds_bucket" in worker
    assert "lungct_worker_model_load_seconds" in worker


def test_slice_images_and_heatmaps_are_served_to_their_owner_only(  # type: ignore[no-untyped-def]
    stack: Stack, api, tmp_path: Path
) -> None:
    import io as _io

    import numpy as np
    from PIL import Image

    from config import Settings
    from ingest import plan_upload
    from models.preprocessing import preprocess
    from models.registry import Registry
    from tests.conftest import authed, new_key

    members = {f"h{i}.png": png_bytes(400 + i, size=64) for i in range(6)}
    archive = zip_bytes(members)
    job = wait_done(api, submit(api, archive, "h.zip")["id"])
    assert job["status"] == "succeeded", job
    base = f"/api/v1/jobs/{job['id']}/slices"
    # each image is exactly the model's input (8-bit), read from the job's one slice pack
    card = Registry(Settings().models_dirs).get(job["model"]["name"])
    (tmp_path / "h.zip").write_bytes(archive)
    with plan_upload(tmp_path / "h.zip", Settings(), filename="h.zip") as plan:
        inputs = {s.index: preprocess(s.load(), card.input)[..., 0] for s in plan.slices}
    for index in range(6):
        r = api.get(f"{base}/{index}/image")
        assert r.status_code == 200 and r.mimetype == "image/png"
        served = np.asarray(Image.open(_io.BytesIO(r.data)))
        assert served.shape == (card.input.height, card.input.width)
        expected = np.clip(np.rint(inputs[index] * 255), 0, 255).astype(np.uint8)
        assert np.array_equal(served, expected), index
    folder = Path(stack.env["STORAGE_DIR"]) / job["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["heatmaps", "packs"]
    assert len(list((folder / "packs").iterdir())) == 1  # six slices, one batch: one object
    summary = job["summary"]
    tops = set(summary["heatmaps"])
    # heat maps for exactly the slices the result page shows as most suspicious, and said so
    assert tops == {t["slice_index"] for t in summary["top_slices"]} and tops
    assert all(t["heatmap"] for g in [summary, *summary["series"]] for t in g["top_slices"][:3])
    for index in range(6):
        r = api.get(f"{base}/{index}/heatmap")
        assert r.status_code == (200 if index in tops else 404), index
        if index in tops:
            assert Image.open(_io.BytesIO(r.data)).mode == "RGBA"
    bob = authed(stack.app(), new_key(stack.env["DATABASE_URL"], "bob"))
    assert bob.get(f"{base}/0/image").status_code == 404
    assert api.get(f"{base}/99/image").status_code == 404
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert not (Path(stack.env["STORAGE_DIR"]) / job["id"]).exists()  # images go with the job


def test_a_single_image_gets_its_image_but_no_heatmap_by_default(api) -> None:  # type: ignore[no-untyped-def]
    job = wait_done(api, submit(api, png_bytes(42), "one.png")["id"])
    base = f"/api/v1/jobs/{job['id']}/slices/0"
    assert api.get(f"{base}/image").status_code == 200
    assert api.get(f"{base}/heatmap").status_code == 404  # HEATMAPS_FOR_IMAGES=0


def test_the_worker_announces_every_end_and_a_long_poll_sees_it(stack: Stack, api) -> None:  # type: ignore[no-untyped-def]
    """Succeeded, failed (single image and study paths) and cancelled ends are all announced."""
    from redis import Redis

    from config import Settings
    from config.notices import channel

    settings = Settings()
    listener = Redis.from_url(settings.redis_url).pubsub(ignore_subscribe_messages=True)
    listener.psubscribe(channel(settings, "*"))
    try:
        ok = submit(api, png_bytes(77), "one.png")["id"]
        assert api.get(f"/api/v1/jobs/{ok}?wait=60").json["status"] == "succeeded"
        bad = png_bytes(5)[:60]
        failed = submit(api, zip_bytes({"a.png": bad}), "s.zip")["id"]
        assert api.get(f"/api/v1/jobs/{failed}?wait=60").json["status"] == "failed"
        big = {f"s{i:04}.png": png_bytes(i, size=8) for i in range(1200)}
        cancelled = submit(api, zip_bytes(big), "big.zip")["id"]
        api.post(f"/api/v1/jobs/{cancelled}/cancel")
        assert api.get(f"/api/v1/jobs/{cancelled}?wait=60").json["status"] == "cancelled"
        heard: set[str] = set()
        deadline = time.monotonic() + 10
        while {ok, failed, cancelled} - heard and time.monotonic() < deadline:
            if (msg := listener.get_message(timeout=1)) is not None:
                heard.add(msg["channel"].decode().rsplit(":", 1)[-1])
        assert {ok, failed, cancelled} <= heard
    finally:
        listener.close()
