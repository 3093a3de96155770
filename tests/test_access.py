"""Who may see what: API keys, owners, the job list, cancel, idempotency, rate limits, audit."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from tests.conftest import (
    ROOT,
    TINY_MODEL,
    _postgres,
    authed,
    database_backends,
    new_key,
    png_bytes,
)


def _submit(client, seed: int = 0, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/api/v1/jobs",
        data={"file": (io.BytesIO(png_bytes(seed)), "slice.png"), "model": TINY_MODEL},
        content_type="multipart/form-data",
        headers=headers,
    )


@pytest.fixture
def bob(app, api_env):  # type: ignore[no-untyped-def]
    """A second owner."""
    return authed(app, new_key(api_env["DATABASE_URL"], "bob"))


def _routes(job_id: str) -> list[tuple[str, str]]:
    """Every /api/v1 route that names a job, with its method."""
    return [
        ("GET", f"/api/v1/jobs/{job_id}"),
        ("GET", f"/api/v1/jobs/{job_id}/results"),
        ("POST", f"/api/v1/jobs/{job_id}/cancel"),
        ("DELETE", f"/api/v1/jobs/{job_id}"),
    ]


def test_every_route_needs_a_valid_key(app, client) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client).json["id"]
    anonymous = app.test_client()
    wrong = authed(app, "lct_not-a-real-key")
    routes = [*_routes(job_id), ("GET", "/api/v1/jobs"), ("GET", "/api/v1/models")]
    routes += [("POST", "/api/v1/jobs"), ("GET", "/api/v1/admin/audit")]
    for who in (anonymous, wrong):
        for method, url in routes:
            r = who.open(url, method=method)
            assert r.status_code == 401, (method, url, r.status_code)
            assert r.json["error"]["code"] == 401 and "API key" in r.json["error"]["message"]
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code in (200, 503)


def test_another_owners_job_is_404_everywhere(client, bob) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client).json["id"]
    for method, url in _routes(job_id):
        r = bob.open(url, method=method)
        assert r.status_code == 404, (method, url, r.status_code)
        assert r.json["error"]["message"] == f"no job with id {job_id!r}"
    assert bob.get("/api/v1/jobs").json["items"] == []
    # ... and the owner still has it, untouched
    assert client.get(f"/api/v1/jobs/{job_id}").json["status"] == "queued"
    assert client.get(f"/api/v1/jobs/{job_id}/results").status_code == 200
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").json["status"] == "cancelled"
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204


def test_an_admin_key_sees_every_owners_jobs(app, client, api_env) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client).json["id"]
    admin = authed(app, new_key(api_env["DATABASE_URL"], "ops", admin=True))
    assert admin.get(f"/api/v1/jobs/{job_id}").json["owner"] == "alice"
    assert [j["id"] for j in admin.get("/api/v1/jobs").json["items"]] == [job_id]


def test_list_is_own_jobs_newest_first_with_filters_and_pages(client, bob) -> None:  # type: ignore[no-untyped-def]
    mine = [_submit(client, seed=i).json["id"] for i in range(5)]
    _submit(bob)
    items = client.get("/api/v1/jobs").json["items"]
    assert [j["id"] for j in items] == mine[::-1]
    page, seen = client.get("/api/v1/jobs?limit=2").json, []
    while True:
        seen += [j["id"] for j in page["items"]]
        if not page["next"]:
            break
        page = client.get(page["next"]).json
    assert seen == mine[::-1]
    client.post(f"/api/v1/jobs/{mine[0]}/cancel")
    cancelled = client.get("/api/v1/jobs?status=cancelled").json["items"]
    assert [j["id"] for j in cancelled] == [mine[0]]
    assert client.get("/api/v1/jobs?model=no-such-model").json["items"] == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/api/v1/jobs", query_string={"since": future}).json["items"] == []
    assert client.get("/api/v1/jobs?status=bogus").status_code == 400


def test_cancel_a_queued_job_frees_its_upload(client, api_env) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client).json["id"]
    assert (Path(api_env["STORAGE_DIR"]) / job_id).is_dir()
    r = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json["status"] == "cancelled"
    assert not (Path(api_env["STORAGE_DIR"]) / job_id).exists()
    again = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json["error"]["message"]


def test_idempotent_retry_returns_the_original_job(client, bob) -> None:  # type: ignore[no-untyped-def]
    from db.models import Job
    from db.session import session_scope

    first = _submit(client, **{"Idempotency-Key": "upload-42"})
    retry = _submit(client, **{"Idempotency-Key": "upload-42"})  # the same bytes again
    assert first.status_code == 202 and retry.status_code == 200
    assert retry.json["id"] == first.json["id"]
    assert retry.headers["Location"] == first.headers["Location"]
    other_content = _submit(client, seed=1, **{"Idempotency-Key": "upload-42"})
    assert other_content.status_code == 422, other_content.json  # not silently the first job
    assert "different upload" in other_content.json["error"]["message"]
    other = _submit(bob, **{"Idempotency-Key": "upload-42"})  # keys are per owner
    assert other.status_code == 202 and other.json["id"] != first.json["id"]
    with session_scope(client.application.config["SETTINGS"].database_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 2
        keys = set(s.scalars(select(Job.idempotency_key)))
    assert keys == {hashlib.sha256(b"upload-42").hexdigest()}  # a hash, never the key


def test_an_idempotency_key_committed_meanwhile_answers_with_that_job(any_db, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two submits with one key, the second checked before the first committed: its insert
    hits the unique key, and it answers 200 with the first job and stores nothing."""
    from api import create_app, jobs
    from config import Settings
    from db.models import Job
    from db.session import session_scope

    settings = Settings()
    client = authed(create_app(settings), new_key(any_db))
    first = _submit(client, **{"Idempotency-Key": "k-7"})
    monkeypatch.setattr(jobs, "_replay", lambda *args: None)  # as if looked up too early
    second = _submit(client, **{"Idempotency-Key": "k-7"})
    assert first.status_code == 202 and second.status_code == 200, second.json
    assert second.json == client.get(first.headers["Location"]).json
    other = _submit(client, seed=1, **{"Idempotency-Key": "k-7"})
    assert other.status_code == 422, other.json
    with session_scope(any_db) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
    assert [p.name for p in settings.storage_dir.iterdir()] == [first.json["id"]]


def test_an_expired_idempotency_key_makes_a_new_job(client) -> None:  # type: ignore[no-untyped-def]
    from db.models import Job
    from db.session import session_scope

    first = _submit(client, **{"Idempotency-Key": "k"}).json["id"]
    with session_scope(client.application.config["SETTINGS"].database_url) as s:
        s.get_one(Job, first).created_at = datetime.now(UTC) - timedelta(hours=25)
    second = _submit(client, **{"Idempotency-Key": "k"})
    assert second.status_code == 202 and second.json["id"] != first


def test_submits_past_the_submit_limit_get_429_and_reads_keep_their_own_limit(api_env) -> None:  # type: ignore[no-untyped-def]
    from api import create_app
    from config import Settings

    app = create_app(Settings(rate_limit_submit="2/minute", rate_limit_read="100/minute"))
    client = authed(app, new_key(api_env["DATABASE_URL"]))
    codes = [_submit(client, seed=i).status_code for i in range(3)]
    assert codes == [202, 202, 429]
    r = _submit(client, seed=9)
    assert r.json["error"]["code"] == 429 and int(r.headers["Retry-After"]) > 0
    assert "2 per 1 minute" in r.json["error"]["message"]
    assert "RATE_LIMIT_SUBMIT" in r.json["error"]["message"]
    assert r.headers["X-RateLimit-Limit"] == "2"
    assert client.get("/api/v1/jobs").status_code == 200  # reading is counted apart


def test_a_burst_past_the_read_limit_gets_429_with_retry_after(api_env) -> None:  # type: ignore[no-untyped-def]
    from api import create_app
    from config import Settings

    app = create_app(Settings(rate_limit_read="5/minute"))
    client = authed(app, new_key(api_env["DATABASE_URL"]))
    answers = [client.get("/api/v1/jobs") for _ in range(7)]
    assert [a.status_code for a in answers] == [200] * 5 + [429, 429]
    assert [a.headers["X-RateLimit-Limit"] for a in answers] == ["5"] * 7
    remaining = [int(a.headers["X-RateLimit-Remaining"]) for a in answers]
    assert remaining == [4, 3, 2, 1, 0, 0, 0]
    resets = {int(a.headers["X-RateLimit-Reset"]) for a in answers}  # one window's end
    assert len(resets) <= 2 and all(time.time() < t <= time.time() + 61 for t in resets)
    r = client.get("/api/v1/jobs")
    assert r.json["error"]["code"] == 429 and 0 < int(r.headers["Retry-After"]) <= 60
    other = authed(app, new_key(api_env["DATABASE_URL"], "bob"))  # limits are per key
    assert other.get("/api/v1/jobs").status_code == 200
    assert app.test_client().get("/healthz").status_code == 200  # health is not limited


@pytest.fixture(params=database_backends())
def any_db(request, api_env, monkeypatch) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The API test's database URL: its SQLite file, or a fresh PostgreSQL schema."""
    from db.migrate import upgrade
    from db.session import dispose

    if request.param == "sqlite":
        yield api_env["DATABASE_URL"]
        return
    db = _postgres()
    try:
        upgrade(db.url, timeout_s=10)
        monkeypatch.setenv("DATABASE_URL", db.url)  # what the test's Settings() read
        yield db.url
    finally:
        dispose(db.url)  # a schema is dropped only once no one is connected
        db.cleanup()  # type: ignore[operator]


def test_a_submit_answers_the_job_exactly_as_it_was_stored(any_db: str) -> None:
    """The answer of a single submit and of a batch is the job as a later read gives it,
    on both databases: jobs and audit rows are inserted without the ORM's flush
    (db/session.py insert_new), and the answer is made from the same values."""
    from api import create_app
    from config import Settings
    from db.models import AuditEvent
    from db.session import session_scope

    client = authed(create_app(Settings()), new_key(any_db))
    r = _submit(client)
    assert r.status_code == 202, r.json
    assert r.json["progress"] == {"done": 0, "total": 0} and r.json["attempts"] == 0
    assert client.get(r.headers["Location"]).json == r.json
    files = [(io.BytesIO(png_bytes(i)), f"s{i}.png") for i in (1, 2)]
    batch = client.post(
        "/api/v1/jobs/batch",
        data={"file": files, "model": TINY_MODEL},
        content_type="multipart/form-data",
    )
    jobs = [item["job"] for item in batch.json["items"]]
    assert [client.get(f"/api/v1/jobs/{job['id']}").json for job in jobs] == jobs
    with session_scope(any_db) as s:
        events = s.execute(select(AuditEvent.owner, AuditEvent.action, AuditEvent.job_id))
        submitted = {(owner, action, job_id) for owner, action, job_id in events}
    assert submitted == {("alice", "submit", j["id"]) for j in [r.json, *jobs]}


def _parallel_posts(app, key: str, path: str, forms: list) -> list:  # type: ignore[no-untyped-def]
    """POST each of ``forms`` (a list of multipart files) to ``path`` of a real threaded HTTP
    server running ``app``, all at once from as many threads; the responses, in finishing order.
    """
    import requests
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answers: list[requests.Response] = []

    def post(files: list) -> None:  # type: ignore[type-arg]
        answers.append(
            requests.post(
                f"http://127.0.0.1:{server.port}{path}",
                files=files,
                data={"model": TINY_MODEL},
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )
        )

    try:
        threads = [threading.Thread(target=post, args=(f,)) for f in forms]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.shutdown()
    return answers


def test_the_per_owner_cap_holds_under_a_burst(any_db: str) -> None:
    """Eight parallel submits against a cap of three: exactly three jobs exist
    (the count and the insert run under a per-owner database lock)."""
    from api import create_app
    from config import Settings
    from db.models import Job
    from db.session import session_scope

    app = create_app(Settings(max_active_jobs_per_owner=3, microbatch_max_jobs=1))
    forms = [[("file", ("s.png", png_bytes()))] for _ in range(8)]
    answers = _parallel_posts(app, new_key(any_db), "/api/v1/jobs", forms)
    assert sorted(r.status_code for r in answers) == [202] * 3 + [429] * 5
    with session_scope(any_db) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 3


def test_the_per_owner_cap_holds_under_parallel_batches(any_db: str) -> None:
    """Four parallel batches of three images against a cap of five: exactly five jobs exist,
    each batch admits a prefix of its files (one lock per batch, not per file)."""
    from api import create_app
    from config import Settings
    from db.models import Job
    from db.session import session_scope

    app = create_app(Settings(max_active_jobs_per_owner=5, microbatch_max_jobs=1))
    forms = [[("file", (f"s{i}.png", png_bytes(k * 10 + i))) for i in range(3)] for k in range(4)]
    replies = _parallel_posts(app, new_key(any_db), "/api/v1/jobs/batch", forms)
    answers = [[item["status"] for item in r.json()["items"]] for r in replies]
    assert sum(a.count(202) for a in answers) == 5 and sum(a.count(429) for a in answers) == 7
    assert all(a == sorted(a) for a in answers)  # admitted files first: a prefix of each
    with session_scope(any_db) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 5


def test_the_cap_counts_single_images_by_what_they_cost(api_env) -> None:  # type: ignore[no-untyped-def]
    """MICROBATCH_MAX_JOBS single images share a forward pass: they count as one unit of
    work, a study as one; the refusal says when to come back, in seconds, not a minute."""
    from api import create_app
    from config import Settings

    app = create_app(Settings(max_active_jobs_per_owner=2, microbatch_max_jobs=4))
    client = authed(app, new_key(api_env["DATABASE_URL"]))
    codes = [_submit(client).status_code for _ in range(9)]
    assert codes == [202] * 8 + [429]
    refused = _submit(client)
    assert refused.status_code == 429
    assert "MAX_ACTIVE_JOBS_PER_OWNER" in refused.json["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 30


def test_keys_are_stored_hashed(client, api_env) -> None:  # type: ignore[no-untyped-def]
    key = client.environ_base["HTTP_AUTHORIZATION"].split()[1]
    _submit(client)
    db_file = Path(api_env["DATABASE_URL"].removeprefix("sqlite:///"))
    raw = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))
    assert key.encode() not in raw
    assert key[12:].encode() not in raw  # not even the secret part


def test_a_key_remembers_when_it_was_last_used_at_most_once_a_minute(client, api_env) -> None:  # type: ignore[no-untyped-def]
    from db.models import ApiKey
    from db.session import session_scope

    def last_used() -> datetime | None:
        with session_scope(api_env["DATABASE_URL"]) as s:
            return s.scalar(select(ApiKey.last_used_at).where(ApiKey.owner == "alice"))

    assert last_used() is None  # a new key
    assert client.get("/api/v1/jobs").status_code == 200
    first = last_used()
    assert first is not None
    assert client.get("/api/v1/jobs").status_code == 200
    assert last_used() == first  # within LAST_USED_RESOLUTION: no write
    with session_scope(api_env["DATABASE_URL"]) as s:  # as if the last use were long ago
        s.execute(update(ApiKey).values(last_used_at=datetime.now(UTC) - timedelta(hours=1)))
    assert client.get("/api/v1/jobs").status_code == 200
    later = last_used()
    assert later is not None and later.replace(tzinfo=UTC) >= first.replace(tzinfo=UTC)


def test_keys_cli_create_list_revoke(app, api_env) -> None:  # type: ignore[no-untyped-def]
    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.keys", *args], cwd=ROOT, capture_output=True, text=True
        )

    created = keys("create", "carol")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("lct_") and len(key) >= 4 + 43
    carol = authed(app, key)
    assert carol.get("/api/v1/jobs").status_code == 200
    listing = keys("list")
    assert "carol" in listing.stdout and key not in listing.stdout
    assert keys("revoke", key[:12]).returncode == 0
    assert carol.get("/api/v1/jobs").status_code == 401


def test_audit_log_records_submit_cancel_delete(app, client, api_env) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client).json["id"]
    client.post(f"/api/v1/jobs/{job_id}/cancel")
    client.delete(f"/api/v1/jobs/{job_id}")
    assert client.get("/api/v1/admin/audit").status_code == 403
    admin = authed(app, new_key(api_env["DATABASE_URL"], "ops", admin=True))
    events = admin.get("/api/v1/admin/audit").json["items"]
    assert [(e["owner"], e["action"], e["job_id"]) for e in events] == [
        ("alice", "delete", job_id),
        ("alice", "cancel", job_id),
        ("alice", "submit", job_id),
    ]


def test_production_refuses_placeholder_secrets() -> None:
    from pydantic import ValidationError

    from config import Settings

    pg = "postgresql+psycopg://lungct:{}@db/lungct"
    with pytest.raises(ValidationError, match="production refuses"):
        Settings(app_env="production", database_url=pg.format("changeme"))
    with pytest.raises(ValidationError, match="FLOWER_BASIC_AUTH"):
        Settings(app_env="production", flower_basic_auth="admin:admin")
    ok = Settings(app_env="production", database_url=pg.format("s3cr3t-Long"))
    assert ok.app_env == "production"
