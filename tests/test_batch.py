"""POST /api/v1/jobs/batch and GET /api/v1/results against real Redis and a real database.

The API tests run without a worker (jobs stay queued; what a worker would
find is read from Redis); the last test sends a batch through the real worker.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import TINY_MODEL, Stack, authed, new_key, png_bytes, zip_bytes


def _batch(client, files: list[tuple[bytes, str]], keys: list[str] | None = None, **form: str):  # type: ignore[no-untyped-def]
    data: dict[str, Any] = {"file": [(io.BytesIO(b), name) for b, name in files], **form}
    if keys is not None:
        data["idempotency_key"] = keys
    return client.post("/api/v1/jobs/batch", data=data, content_type="multipart/form-data")


def _count(model: Any, *where: Any) -> int:
    from config import Settings
    from db.session import session_scope

    with session_scope(Settings().database_url) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _waiting(model_name: str) -> list[str]:
    """The job IDs in the model's Redis list, as a worker would take them."""
    from config import Settings, image_queue

    return sorted(image_queue.waiting(Settings(), model_name))


def test_a_batch_makes_one_queued_job_per_file_in_one_push(client) -> None:  # type: ignore[no-untyped-def]
    from db.models import AuditEvent, Job

    files = [(png_bytes(i), f"s{i}.png") for i in range(5)]
    files.append((zip_bytes({"a.png": png_bytes(9), "b.png": png_bytes(10)}), "study.zip"))
    r = _batch(client, files, model=TINY_MODEL)
    assert r.status_code == 200, r.json
    items = r.json["items"]
    assert [i["index"] for i in items] == list(range(6))
    assert [i["status"] for i in items] == [202] * 6
    assert [i["job"]["kind"] for i in items] == ["image"] * 5 + ["study"]
    assert {i["job"]["status"] for i in items} == {"queued"}
    images = sorted(i["job"]["id"] for i in items[:5])
    assert _waiting(TINY_MODEL) == images  # every single image waits in the model's list
    assert _count(Job) == 6 and _count(AuditEvent, AuditEvent.action == "submit") == 6
    for item in items:  # each job reads as a single submit's would
        assert client.get(f"/api/v1/jobs/{item['job']['id']}").json == item["job"]


def test_a_corrupt_file_is_refused_alone(client, api_env) -> None:  # type: ignore[no-untyped-def]
    from db.models import Job

    files = [(png_bytes(1), "a.png"), (b"this is not an image", "b.png"), (png_bytes(2), "c.png")]
    items = _batch(client, files, model=TINY_MODEL).json["items"]
    assert [i["status"] for i in items] == [202, 400, 202]
    assert "job" not in items[1] and items[1]["error"]["message"]
    assert _count(Job) == 2
    stored = sorted(p.name for p in Path(api_env["STORAGE_DIR"]).iterdir())
    assert stored == sorted([items[0]["job"]["id"], items[2]["job"]["id"]])  # nothing of b.png


def test_per_file_keys_replay_and_refuse_reuse_for_other_bytes(client) -> None:  # type: ignore[no-untyped-def]
    from db.models import Job

    a, b, c = png_bytes(1), png_bytes(2), png_bytes(3)
    first = _batch(client, [(a, "a.png"), (b, "b.png")], ["key-a", "key-b"]).json["items"]
    assert [i["status"] for i in first] == [202, 202]
    again = _batch(client, [(a, "a.png"), (c, "b.png"), (c, "c.png")], ["key-a", "key-b", ""])
    items = again.json["items"]
    assert [i["status"] for i in items] == [200, 422, 202]
    assert items[0]["job"]["id"] == first[0]["job"]["id"]  # the same job, not a second one
    assert "already used for a different upload" in items[1]["error"]["message"]
    # one key twice in one batch: the same bytes share one job, other bytes are refused
    twice = _batch(client, [(c, "x.png"), (c, "y.png"), (a, "z.png")], ["k", "k", "k"])
    items = twice.json["items"]
    assert [i["status"] for i in items] == [202, 200, 422]
    assert items[0]["job"]["id"] == items[1]["job"]["id"]
    assert _count(Job) == 4
    # the single submit's header finds a job made by a batch, and the other way round
    single = client.post(
        "/api/v1/jobs",
        data={"file": (io.BytesIO(a), "a.png")},
        headers={"Idempotency-Key": "key-a"},
        content_type="multipart/form-data",
    )
    assert single.status_code == 200 and single.json["id"] == first[0]["job"]["id"]


def test_the_cap_admits_a_prefix_and_refuses_the_rest(api_env) -> None:  # type: ignore[no-untyped-def]
    """Two units of work, two single images a unit: four of six images fit; the other
    two are refused with the cap's message, and the answer says when to come back."""
    from api import create_app
    from config import Settings
    from db.models import Job

    app = create_app(Settings(max_active_jobs_per_owner=2, microbatch_max_jobs=2))
    client = authed(app, new_key(api_env["DATABASE_URL"]))
    r = _batch(client, [(png_bytes(i), f"s{i}.png") for i in range(6)], model=TINY_MODEL)
    assert r.status_code == 200
    items = r.json["items"]
    assert [i["status"] for i in items] == [202] * 4 + [429] * 2
    assert "MAX_ACTIVE_JOBS_PER_OWNER" in items[4]["error"]["message"]
    assert "4 single images" in items[4]["error"]["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    assert _count(Job) == 4 and len(_waiting(TINY_MODEL)) == 4
    full = _batch(client, [(png_bytes(9), "s.png")], model=TINY_MODEL)
    assert [i["status"] for i in full.json["items"]] == [429] and "Retry-After" in full.headers
    assert "Retry-After" not in _batch(client, [(b"", "empty.png")]).headers


def test_too_many_files_or_unpaired_keys_are_a_400_for_the_whole_request(api_env) -> None:  # type: ignore[no-untyped-def]
    from api import create_app
    from config import Settings
    from db.models import Job

    app = create_app(Settings(batch_max_files=3))
    client = authed(app, new_key(api_env["DATABASE_URL"]))
    files = [(png_bytes(i), f"s{i}.png") for i in range(4)]
    r = _batch(client, files)
    assert r.status_code == 400 and "BATCH_MAX_FILES" in r.json["error"]["message"]
    assert r.json["error"]["detail"] == {"batch": {"max_files": 3}}
    many = _batch(client, [(b"x", f"{i}.png") for i in range(20)], [str(i) for i in range(20)])
    assert many.status_code == 400 and "BATCH_MAX_FILES" in many.json["error"]["message"]
    unpaired = _batch(client, files[:2], ["only-one"])
    assert unpaired.status_code == 400 and "one per file" in unpaired.json["error"]["message"]
    missing = client.post("/api/v1/jobs/batch", data={}, content_type="multipart/form-data")
    assert missing.status_code == 400 and "file" in missing.json["error"]["message"]
    unknown = _batch(client, files[:1], model="no-such-model")
    assert unknown.status_code == 400 and TINY_MODEL in unknown.json["error"]["message"]
    assert _count(Job) == 0


def test_queue_down_fails_each_job_with_a_503_item(client) -> None:  # type: ignore[no-untyped-def]
    from config import Settings
    from db.models import Job
    from db.session import session_scope

    client.application.config["SETTINGS"] = Settings(redis_url="redis://127.0.0.1:1/0")
    client.application.extensions["lungct_limiter"].enabled = False
    files = [(png_bytes(1), "a.png"), (b"", "b.png"), (zip_bytes({"s.png": png_bytes(2)}), "c.zip")]
    items = _batch(client, files, ["ka", "kb", "kc"]).json["items"]
    assert [i["status"] for i in items] == [503, 400, 503]
    assert "queue" in items[0]["error"]["message"]
    with session_scope(Settings().database_url) as s:
        jobs = s.scalars(select(Job)).all()
        assert len(jobs) == 2 and {j.status for j in jobs} == {"failed"}
        assert {j.idempotency_key for j in jobs} == {None}  # a retry makes new jobs


def _slices(job_id: str, n: int) -> None:
    """Store ``n`` slice results for a job, as a worker would."""
    from config import Settings
    from db.models import SlicePrediction
    from db.session import session_scope

    with session_scope(Settings().database_url) as s:
        for i in range(n):
            s.add(SlicePrediction(job_id=job_id, slice_index=i, source=f"#{i + 1}.png",
                                  label="normal", probabilities={"normal": 1.0}))  # fmt: skip


def test_results_of_many_jobs_in_one_request(app, client, api_env) -> None:  # type: ignore[no-untyped-def]
    mine = [i["job"]["id"] for i in _batch(client, [(png_bytes(i), "s.png") for i in range(2)])
            .json["items"]]  # fmt: skip
    bob = authed(app, new_key(api_env["DATABASE_URL"], "bob"))
    theirs = _batch(bob, [(png_bytes(7), "s.png")]).json["items"][0]["job"]["id"]
    for job_id, n in ((mine[0], 3), (mine[1], 1), (theirs, 2)):
        _slices(job_id, n)
    query = "&".join(f"job={j}" for j in [*mine, theirs, str(uuid.uuid4())])
    page = client.get(f"/api/v1/results?{query}&limit=3").json
    assert len(page["items"]) == 3 and page["next"].count("job=") == 4
    rest = client.get(page["next"]).json
    assert rest["next"] is None
    got = [(s["job_id"], s["slice_index"]) for s in page["items"] + rest["items"]]
    expected = [(mine[0], i) for i in range(3)] + [(mine[1], 0)]
    assert sorted(got) == sorted(expected) and theirs not in {j for j, _ in got}
    by_slice = {(s["job_id"], s["slice_index"]): s for s in page["items"] + rest["items"]}
    one = client.get(f"/api/v1/jobs/{mine[0]}/results").json["items"][0]
    assert by_slice[(mine[0], 0)] == {"job_id": mine[0], **one}  # the same slice object
    assert client.get("/api/v1/results").status_code == 400  # no job named
    many = "&".join(f"job=j{i}" for i in range(101))
    assert client.get(f"/api/v1/results?{many}").status_code == 400


def test_the_spec_documents_both_routes(client) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json
    body = spec["paths"]["/api/v1/jobs/batch"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["$ref"].endswith("/BatchIn")
    assert "/api/v1/results" in spec["paths"]
    item = spec["components"]["schemas"]["BatchItem"]["properties"]
    assert {"index", "status", "job", "error"} <= set(item)


@pytest.mark.integration
def test_a_batch_goes_through_the_worker(stack: Stack) -> None:
    from tests.test_pipeline import wait_done

    api = stack.client()
    files = [(png_bytes(400 + i), f"s{i}.png") for i in range(6)]
    files.append((zip_bytes({f"m{i}.png": png_bytes(500 + i) for i in range(3)}), "study.zip"))
    items = _batch(api, files).json["items"]
    assert [i["status"] for i in items] == [202] * 7
    ids = [i["job"]["id"] for i in items]
    jobs = [wait_done(api, job_id) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 7
    query = "&".join(f"job={j}" for j in ids)
    slices = api.get(f"/api/v1/results?{query}&limit=1000").json["items"]
    assert sorted(s["job_id"] for s in slices) == sorted(ids[:6] + [ids[6]] * 3)
    assert all(s["label"] for s in slices)
