"""The v1 API without a worker: validation, errors, listing, docs, and no TensorFlow."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time

from sqlalchemy import func, select

from tests.conftest import ROOT, TINY_MODEL, default_model, png_bytes, zip_bytes


def _job_count(client) -> int:  # type: ignore[no-untyped-def]
    """Jobs in the database of ``client``'s API."""
    from db.models import Job
    from db.session import session_scope

    with session_scope(client.application.config["SETTINGS"].database_url) as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def _submit(client, data: bytes, name: str, **form):  # type: ignore[no-untyped-def]
    return client.post(
        "/api/v1/jobs",
        data={"file": (io.BytesIO(data), name), **form},
        content_type="multipart/form-data",
    )


def test_submit_image_is_accepted_and_queued(client) -> None:  # type: ignore[no-untyped-def]
    r = _submit(client, png_bytes(), "slice.png", model=TINY_MODEL)
    assert r.status_code == 202, r.json
    body = r.json
    assert body["status"] == "queued" and body["kind"] == "image"
    assert body["model"]["name"] == TINY_MODEL
    assert r.headers["Location"].endswith(f"/api/v1/jobs/{body['id']}")
    polled = client.get(r.headers["Location"]).json
    assert polled["id"] == body["id"] and polled["progress"] == {"done": 0, "total": 0}


def test_submit_zip_is_a_study(client) -> None:  # type: ignore[no-untyped-def]
    archive = zip_bytes({f"s{i}.png": png_bytes(i) for i in range(3)})
    r = _submit(client, archive, "study.zip", model=TINY_MODEL)
    assert r.status_code == 202, r.json
    assert r.json["kind"] == "study"


def test_missing_file_is_400_without_job(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/jobs", data={}, content_type="multipart/form-data")
    assert r.status_code == 400
    assert "file" in r.json["error"]["message"] and "Missing" in r.json["error"]["message"]
    assert _job_count(client) == 0


def test_bad_uploads_are_4xx_with_message_and_no_job(client) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "empty.png": b"",
        "notes.png": b"this is not an image",
        "fake.dcm": b"hello, I am text",
        "broken.zip": b"PK\x03\x04 truncated",
    }
    for name, data in cases.items():
        r = _submit(client, data, name, model=TINY_MODEL)
        assert 400 <= r.status_code < 500, (name, r.status_code)
        assert r.json["error"]["message"], name
    assert _job_count(client) == 0


def test_unknown_model_is_400_listing_choices(client) -> None:  # type: ignore[no-untyped-def]
    r = _submit(client, png_bytes(), "slice.png", model="no-such-model")
    assert r.status_code == 400
    assert TINY_MODEL in r.json["error"]["message"]
    assert _job_count(client) == 0


def test_too_large_upload_is_413(client) -> None:  # type: ignore[no-untyped-def]
    client.application.config["MAX_CONTENT_LENGTH"] = 1000
    r = _submit(client, png_bytes(size=256), "big.png", model=TINY_MODEL)
    assert r.status_code == 413
    assert r.json["error"]["code"] == 413
    assert _job_count(client) == 0


def test_unknown_job_is_404_json(client) -> None:  # type: ignore[no-untyped-def]
    for url in ("/api/v1/jobs/nope", "/api/v1/jobs/nope/results"):
        r = client.get(url)
        assert r.status_code == 404
        assert "nope" in r.json["error"]["message"]


def test_models_listing(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/v1/models").json
    tiny = next(m for m in body["items"] if m["name"] == TINY_MODEL)
    assert tiny["classes"] == ["benign", "malignant", "normal"]
    assert tiny["input"] == {"height": 32, "width": 32, "channels": 1}


def test_openapi_and_health(client) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json
    assert "/api/v1/jobs" in spec["paths"] and "/api/v1/jobs/{job_id}/results" in spec["paths"]
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/").status_code == 200


def test_readyz_reports_missing_worker(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.json["checks"]
    assert checks == {"database": "ok", "broker": "ok", "workers": "failed"}


def test_delete_refuses_unfinished_job(client) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client, png_bytes(), "slice.png", model=TINY_MODEL).json["id"]
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 409


def test_api_process_never_imports_tensorflow() -> None:
    code = (
        "import sys; from api.wsgi import app; c = app.test_client();"
        "BANNED = ('tensorflow', 'keras', 'jax', 'torch');"
        "c.get('/api/v1/models'); c.get('/openapi.json'); c.get('/readyz');"
        "bad = [m for m in sys.modules if m.split('.')[0] in BANNED];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gunicorn_config_sets_up_metrics_before_prometheus_client_is_loaded() -> None:
    """gunicorn's master imports api.gunicorn_conf (so the api package) before it forks:
    a prometheus_client loaded by then keeps every process's metrics in memory, and
    /metrics shows no request latency at all (multiprocess mode needs the folder first)."""
    code = (
        "import sys, api.gunicorn_conf;"
        "from prometheus_client import values;"
        "sys.exit(0 if values.ValueClass.__name__ != 'MutexValue' else 1)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True)
    assert r.returncode == 0, r.stderr


def test_rejected_uploads_leave_nothing_on_disk(client, api_env) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    for name, data in {"a.png": b"", "b.zip": b"PK\x03\x04 broken", "c.dcm": b"text"}.items():
        assert _submit(client, data, name, model=TINY_MODEL).status_code == 400
    assert list(Path(api_env["STORAGE_DIR"]).iterdir()) == []


def _submit_encoded(client, data: bytes, name: str, cut: bool = False):  # type: ignore[no-untyped-def]
    """:func:`_submit` with the form encoded here (the test client spools a large form
    to a temporary file of its own, which nothing closes); ``cut``: only half of the
    body arrives."""
    from urllib3 import encode_multipart_formdata

    body, content_type = encode_multipart_formdata({"file": (name, data), "model": TINY_MODEL})
    sent = body[: len(body) // 2] if cut else body
    return client.post(
        "/api/v1/jobs",
        data=sent,
        content_type=content_type,
        environ_overrides={"CONTENT_LENGTH": str(len(body))},
    )


def test_a_large_upload_is_moved_into_storage_not_copied(client, api_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Over 500 KB, a single submit's file arrives in the storage's spool and is renamed
    into the job's folder (api/uploads.py) without being copied; a rejected one
    leaves nothing behind, and neither does the spool."""
    import shutil
    from pathlib import Path

    from storage.local import SPOOL_FOLDER

    copies: list[object] = []
    copy = shutil.copyfileobj
    monkeypatch.setattr(shutil, "copyfileobj", lambda *a, **k: copies.append(a) or copy(*a, **k))
    archive = zip_bytes({f"s{i}.png": png_bytes(i, size=512) for i in range(3)})
    assert len(archive) > 500 * 1024
    r = _submit_encoded(client, archive, "study.zip")
    assert r.status_code == 202 and copies == []
    bad = _submit_encoded(client, b"PK\x03\x04" + os.urandom(600 * 1024), "b.zip")
    assert bad.status_code == 400
    cut = _submit_encoded(client, archive, "cut.zip", cut=True)  # a client that hangs up
    assert cut.status_code == 400
    root = Path(api_env["STORAGE_DIR"])
    assert (root / r.json["id"] / "upload.zip").read_bytes() == archive
    assert list((root / SPOOL_FOLDER).iterdir()) == []
    assert sorted(p.name for p in root.iterdir()) == sorted([SPOOL_FOLDER, r.json["id"]])


def test_client_file_name_is_never_stored(client) -> None:  # type: ignore[no-untyped-def]
    from db.models import Job
    from db.session import session_scope

    job_id = _submit(client, png_bytes(), "Doe_John_19500101.png", model=TINY_MODEL).json["id"]
    with session_scope(client.application.config["SETTINGS"].database_url) as s:
        assert s.get_one(Job, job_id).upload_key == f"{job_id}/upload.png"


def test_queue_down_is_503_and_the_job_is_marked_failed(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from config import Settings
    from db.models import Job
    from db.session import session_scope

    broken = Settings(redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    client.application.config["SETTINGS"] = broken
    client.application.extensions["lungct_limiter"].enabled = False
    r = client.post(
        "/api/v1/jobs",
        data={"file": (io.BytesIO(png_bytes()), "slice.png"), "model": TINY_MODEL},
        headers={"Idempotency-Key": "retry-me"},
    )
    assert r.status_code == 503 and "queue" in r.json["error"]["message"]
    with session_scope(broken.database_url) as s:
        [job] = s.query(Job).all()
        assert job.status == "failed" and job.error == "could not be queued"
        assert job.idempotency_key is None  # a retry with the same key makes a new job


def test_too_many_form_fields_is_a_clear_400(client) -> None:  # type: ignore[no-untyped-def]
    fields = {f"f{i}": "x" for i in range(150)}
    r = client.post(
        "/api/v1/jobs",
        data={"file": (io.BytesIO(png_bytes()), "s.png"), **fields},
        content_type="multipart/form-data",
    )
    assert r.status_code == 400 and "too many form fields" in r.json["error"]["message"]


def test_huge_offsets_are_400_not_500(client) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client, png_bytes(), "s.png", model=TINY_MODEL).json["id"]
    for offset in (2**63, -1):
        r = client.get(f"/api/v1/jobs/{job_id}/results?offset={offset}")
        assert r.status_code == 400 and "offset" in r.json["error"]["message"]


def test_an_unexpected_error_is_a_json_500(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from models import registry

    def broken(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("registry exploded")

    monkeypatch.setattr(registry.Registry, "cards", broken)
    client.application.config["PROPAGATE_EXCEPTIONS"] = False  # as in production
    r = client.get("/api/v1/models")
    assert r.status_code == 500 and r.json["error"]["code"] == 500
    assert "exploded" not in r.get_data(as_text=True)  # no internals to the client


def test_docs_work_offline_and_the_spec_matches_real_answers(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/docs").get_data(as_text=True)
    assert "https://" not in page.split("<body")[0]  # no CDN in the head
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert f"/docs/assets/{asset}" in page
        with client.get(f"/docs/assets/{asset}") as r:
            assert r.status_code == 200
    spec = client.get("/openapi.json").json
    error = spec["components"]["schemas"]["HTTPError"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    body = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["$ref"].endswith("/JobIn")
    assert spec["components"]["schemas"]["JobIn"]["required"] == ["file"]
    job = spec["components"]["schemas"]["JobOut"]
    assert next(iter(job["properties"])) == "id"
    assert "/Summary" in str(job["properties"]["summary"])
    r = client.get("/api/v1/jobs/nope")  # and the real answer has that shape
    assert set(r.json) == {"error"} and set(r.json["error"]) >= {"code", "message"}
    listed = client.get("/api/v1/jobs").get_data(as_text=True)
    assert listed.index('"items"') < listed.index('"next"')  # natural order, not sorted


def test_web_ui_shell_serves_every_app_url_from_local_assets(app) -> None:  # type: ignore[no-untyped-def]
    anonymous = app.test_client()  # the shell holds no data: the browser sends the key
    pages = [anonymous.get(url) for url in ("/", "/jobs/2f0c9a1e-any-id")]
    assert [r.status_code for r in pages] == [200, 200]
    assert pages[0].data == pages[1].data
    html = pages[0].get_data(as_text=True)
    assert "/static/js/app.js" in html and "/static/app.css" in html
    static = ROOT / "api" / "static"
    for path in sorted(static.rglob("*.*")):
        with anonymous.get(f"/static/{path.relative_to(static).as_posix()}") as r:
            assert r.status_code == 200, path
            assert b"http://" not in r.data and b"https://" not in r.data, path  # no CDN


def test_each_model_links_its_card_which_opens_without_a_key(app, client) -> None:  # type: ignore[no-untyped-def]
    models = {m["name"]: m for m in client.get("/api/v1/models").json["items"]}
    url = models[default_model()]["card_url"]
    assert url == f"/models/{default_model()}/card"
    anonymous = app.test_client()
    r = anonymous.get(url)  # issue 20: a page, not raw Markdown
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert "<h1>" in page or "<h2>" in page
    assert anonymous.get(f"{url}?format=text").mimetype == "text/plain"
    for src in re.findall(r'<img[^>]* src="([^"]+)"', page):  # its plots, served from its folder
        plot = anonymous.get(src)
        assert plot.status_code == 200 and plot.mimetype == "image/png", src
    assert anonymous.get(f"{url}/card.json").status_code == 404  # plots only
    assert anonymous.get(f"{url}/..%2Fcard.md").status_code == 404
    assert anonymous.get("/models/no-such-model/card").status_code == 404


def test_card_html_is_sanitised_and_shows_every_plot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from api.cards import card_html

    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "b.png").write_bytes(b"png")
    text = "# Card\n\n![a](a.png)\n\n<script>alert(1)</script> <img src=x onerror=alert(2)>"
    text += "\n\n[x](javascript:alert(3))"
    html = card_html(text, tmp_path, "/models/m/card/")
    assert 'src="/models/m/card/a.png"' in html and 'src="/models/m/card/b.png"' in html
    assert "<script" not in html and "onerror" not in html and "javascript:" not in html


def _end_later(job_id: str, delay_s: float, announce: bool) -> threading.Thread:
    """End a queued job from another thread, as a worker would (with or without a notice)."""
    from config import Settings
    from config.notices import announce_ended
    from db import lifecycle
    from db.session import session_scope

    settings = Settings()  # the test's environment: the API's database and Redis

    def end() -> None:
        time.sleep(delay_s)
        with session_scope(settings.database_url) as s:
            assert lifecycle.fail(s, job_id, "ended by the test")
        if announce:
            announce_ended(settings, [job_id])

    thread = threading.Thread(target=end)
    thread.start()
    return thread


def test_a_long_poll_answers_when_the_job_ends(client) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client, png_bytes(), "slice.png").json["id"]
    for announce in (True, False):  # without a notice, the once-a-second re-read finds it
        if not announce:
            job_id = _submit(client, png_bytes(1), "slice.png").json["id"]
        ender = _end_later(job_id, 0.3, announce)
        started = time.monotonic()
        job = client.get(f"/api/v1/jobs/{job_id}?wait=20").json
        ender.join()
        assert job["status"] == "failed" and job["error"] == "ended by the test"
        assert time.monotonic() - started < 10  # answered by the end, not by the 20 s
    ended = time.monotonic()
    assert client.get(f"/api/v1/jobs/{job_id}?wait=20").json["status"] == "failed"
    assert time.monotonic() - ended < 5  # an ended job is answered at once


def test_a_long_poll_gives_the_job_as_it_is_after_the_wait(client) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client, png_bytes(), "slice.png").json["id"]
    started = time.monotonic()
    assert client.get(f"/api/v1/jobs/{job_id}?wait=0.5").json["status"] == "queued"
    assert time.monotonic() - started >= 0.5
    assert client.get(f"/api/v1/jobs/{job_id}?wait=61").status_code == 400
    assert client.get(f"/api/v1/jobs/{job_id}?wait=-1").status_code == 400
    assert client.get(f"/api/v1/jobs/{job_id}?wait=soon").status_code == 400


def test_listing_jobs_by_id_and_waiting_for_one_of_them_to_end(client) -> None:  # type: ignore[no-untyped-def]
    ids = [_submit(client, png_bytes(i), "slice.png").json["id"] for i in range(3)]
    other = _submit(client, png_bytes(9), "slice.png").json["id"]
    query = "&".join(f"id={j}" for j in ids)
    listed = client.get(f"/api/v1/jobs?{query}&limit=2").json
    assert len(listed["items"]) == 2 and listed["next"].count("id=") == 3  # pages keep every id
    rest = client.get(listed["next"]).json["items"]
    assert sorted(j["id"] for j in listed["items"] + rest) == sorted(ids)
    assert other not in {j["id"] for j in listed["items"] + rest}

    ender = _end_later(ids[1], 0.3, announce=True)
    started = time.monotonic()
    held = client.get(f"/api/v1/jobs?{query}&wait=20").json["items"]
    ender.join()
    assert time.monotonic() - started < 10  # answered when one ended, not after 20 s
    assert {j["id"]: j["status"] for j in held} == {
        ids[0]: "queued",
        ids[1]: "failed",
        ids[2]: "queued",
    }
    started = time.monotonic()  # one of them has ended already: answered at once
    assert len(client.get(f"/api/v1/jobs?{query}&wait=20").json["items"]) == 3
    assert time.monotonic() - started < 5
    started = time.monotonic()  # none of these ends: the jobs as they are after the wait
    waited = client.get(f"/api/v1/jobs?id={ids[0]}&id={ids[2]}&wait=0.5").json["items"]
    assert [j["status"] for j in waited] == ["queued", "queued"]
    assert time.monotonic() - started >= 0.5


def test_a_wait_for_listed_jobs_is_judged_on_the_named_jobs_alone(client) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()  # no such job of this owner: nothing to wait for
    assert client.get("/api/v1/jobs?id=nope&wait=20").json["items"] == []
    assert time.monotonic() - started < 5
    job_id = _submit(client, png_bytes(), "slice.png").json["id"]
    ender = _end_later(job_id, 0.3, announce=True)
    started = time.monotonic()  # the filter hides the job once it ends; the end still counts
    held = client.get(f"/api/v1/jobs?id={job_id}&status=queued&wait=20").json
    ender.join()
    assert held["items"] == [] and time.monotonic() - started < 10


def test_a_next_link_carries_only_the_filters(client) -> None:  # type: ignore[no-untyped-def]
    ids = [_submit(client, png_bytes(i), "slice.png").json["id"] for i in range(2)]
    query = "&".join(f"id={j}" for j in ids)
    r = client.get(f"/api/v1/jobs?{query}&limit=1&_anchor=x&_method=GET&wait=0")
    assert r.status_code == 200
    assert "_anchor" not in r.json["next"] and "wait" not in r.json["next"]


def test_listing_by_id_rejects_a_wait_without_ids_and_too_many_ids(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/jobs?wait=5")
    assert r.status_code == 400 and "wait needs id" in r.json["error"]["message"]
    many = "&".join(f"id=j{i}" for i in range(101))
    assert client.get(f"/api/v1/jobs?{many}").status_code == 400
    assert client.get("/api/v1/jobs?id=x&wait=61").status_code == 400


def test_long_polls_beyond_the_per_process_limit_answer_at_once(api_env) -> None:  # type: ignore[no-untyped-def]
    from api import create_app
    from config import Settings
    from tests.conftest import authed, new_key

    app = create_app(Settings(job_waiters_per_process=0))
    app.config["TESTING"] = True
    client = authed(app, new_key(api_env["DATABASE_URL"], "bob"))
    job_id = _submit(client, png_bytes(), "slice.png").json["id"]
    started = time.monotonic()
    assert client.get(f"/api/v1/jobs/{job_id}?wait=20").json["status"] == "queued"
    assert time.monotonic() - started < 10
