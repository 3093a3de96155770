"""``client.api`` without a server: retries, Retry-After, idempotency keys, paging, errors.

The transport is a scripted requests adapter; tests/test_cli.py runs the same
client against the real stack.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from client.api import (
    ApiError,
    AuthError,
    ConnectionFailed,
    Job,
    LungCTClient,
    NotFound,
    Retry,
    SliceResult,
    idempotency_key,
    sha256_of,
)
from client.export import JobResults, write_csv

JOB = {"id": "j1", "status": "queued", "model": {"name": "m", "version": "1"}}

Reply = tuple[int, dict[str, Any] | None, dict[str, str]] | type[Exception]


class Scripted(BaseAdapter):
    """Answers requests from a list; records each request (with its body read out)."""

    def __init__(self, replies: list[Reply]) -> None:
        super().__init__()
        self.replies = list(replies)
        self.sent: list[requests.PreparedRequest] = []
        self.bodies: list[bytes] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        body = request.body
        if hasattr(body, "read"):
            body = b"".join(iter(lambda: body.read(7), b""))  # type: ignore[union-attr]
        self.bodies.append(body if isinstance(body, bytes) else str(body or "").encode())
        reply = self.replies.pop(0)
        if isinstance(reply, type):
            raise reply("scripted")
        status, payload, headers = reply
        resp = requests.Response()
        resp.status_code, resp.url, resp.request = status, request.url, request
        resp.headers.update(headers)
        resp.raw = io.BytesIO(b"" if payload is None else json.dumps(payload).encode())
        return resp

    def close(self) -> None:
        pass


def make(replies: list[Reply], **kwargs: Any) -> tuple[LungCTClient, Scripted, list[float]]:
    adapter, sleeps = Scripted(replies), []
    session = requests.Session()
    session.mount("http://", adapter)
    api = LungCTClient(
        "http://api.test/", "lct_key", session=session, sleep=sleeps.append, **kwargs
    )
    return api, adapter, sleeps


def test_retries_connection_errors_and_5xx_with_growing_backoff() -> None:
    api, adapter, sleeps = make(
        [requests.ConnectionError, (502, None, {}), (503, None, {}), (200, JOB, {})]
    )
    job = api.job("j1")
    assert job.id == "j1" and job.model_name == "m" and not job.finished
    assert len(adapter.sent) == 4 and len(sleeps) == 3
    assert 0.25 <= sleeps[0] <= 0.5 and 1.0 <= sleeps[2] <= 2.0  # 0.5 * 2**n, jittered
    assert adapter.sent[0].headers["Authorization"] == "Bearer lct_key"


def test_429_waits_as_told_by_retry_after() -> None:
    api, _, sleeps = make([(429, {}, {"Retry-After": "7"}), (200, JOB, {})])
    api.job("j1")
    assert sleeps == [7.0]


def test_gives_up_after_the_retries() -> None:
    api, adapter, _ = make([requests.Timeout] * 3, retries=2)
    with pytest.raises(ConnectionFailed, match=r"cannot reach the API at http://api\.test"):
        api.job("j1")
    assert len(adapter.sent) == 3
    api, _, _ = make([(503, {"error": {"code": 503, "message": "queue down"}}, {})], retries=0)
    with pytest.raises(ApiError, match=r"queue down \(HTTP 503\)"):
        api.job("j1")


def test_client_errors_are_not_retried_and_carry_the_api_message() -> None:
    api, adapter, _ = make([(401, {"error": {"code": 401, "message": "bad key"}}, {})])
    with pytest.raises(AuthError):
        api.job("j1")
    api, adapter, _ = make([(404, {"error": {"code": 404, "message": "no job"}}, {})])
    with pytest.raises(NotFound) as info:
        api.job("nope")
    assert info.value.message == "no job" and len(adapter.sent) == 1


def test_submit_streams_multipart_with_a_content_derived_key(tmp_path: Path) -> None:
    upload = tmp_path / "study.zip"
    upload.write_bytes(b"PK" + bytes(range(256)) * 50)
    sent: list[int] = []
    api, adapter, _ = make([requests.ConnectionError, (202, JOB, {})])
    job = api.submit(upload, model="m", on_sent=sent.append)
    assert job.id == "j1" and not job.replayed
    first, second = adapter.sent
    key = idempotency_key(sha256_of(upload), "m")
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == key
    body = adapter.bodies[1]
    assert int(second.headers["Content-Length"]) == len(body)
    assert upload.read_bytes() in body and b'filename="study.zip"' in body
    assert b'name="model"\r\n\r\nm\r\n' in body
    assert sum(sent) == len(adapter.bodies[0]) + len(body)  # each attempt reports its bytes
    assert idempotency_key(sha256_of(upload), None) != key  # another model, another job


def test_pages_follow_next_links() -> None:
    page1 = {"items": [{"slice_index": 0, "probabilities": {"a": 0.9, "b": 0.1}}], "total": 2}
    page1["next"] = "/api/v1/jobs/j1/results?offset=1&limit=1"
    page2 = {"items": [{"slice_index": 1, "label": "b", "out_of_distribution": True}]}
    api, adapter, _ = make([(200, page1, {}), (200, {**page2, "next": None}, {})])
    rows = list(api.results("j1", page_size=1))
    assert [r.slice_index for r in rows] == [0, 1]
    assert rows[1].out_of_distribution is True and rows[0].out_of_distribution is None
    assert adapter.sent[0].url == "http://api.test/api/v1/jobs/j1/results?limit=1"
    assert adapter.sent[1].url == "http://api.test/api/v1/jobs/j1/results?offset=1&limit=1"


def test_wait_polls_until_the_job_has_ended() -> None:
    running = {**JOB, "status": "running", "progress": {"done": 1, "total": 4}}
    done = {**JOB, "status": "succeeded", "summary": {"label": "normal"}}
    seen: list[int] = []
    api, adapter, sleeps = make([(200, running, {}), (200, done, {})])
    job = api.wait("j1", poll=0.25, on_update=lambda j: seen.append(j.done))
    assert job.finished and job.label == "normal" and seen == [1, 0]
    # long polls; the running answer came back early, so the client paced itself
    assert [r.url for r in adapter.sent] == ["http://api.test/api/v1/jobs/j1?wait=10"] * 2
    assert len(sleeps) == 1 and 0.2 < sleeps[0] <= 0.25


def test_many_jobs_are_polled_in_one_long_poll() -> None:
    jobs = {"items": [JOB, {**JOB, "id": "j2", "status": "succeeded"}], "next": None}
    api, adapter, _ = make([(200, jobs, {})])
    answered = api.jobs_by_id(["j1", "j2"], wait=10)
    assert [(j.id, j.finished) for j in answered] == [("j1", False), ("j2", True)]
    assert adapter.sent[0].url == "http://api.test/api/v1/jobs?id=j1&id=j2&limit=2&wait=10"
    with pytest.raises(ValueError):
        api.jobs_by_id([f"j{i}" for i in range(101)])
    assert api.jobs_by_id([]) == [] and len(adapter.sent) == 1  # nothing to ask


def test_csv_has_a_probability_column_per_class_and_empty_cells_for_absent_values() -> None:
    job = Job.from_dict({**JOB, "status": "succeeded"})
    slices = [
        SliceResult.from_dict({"slice_index": 0, "label": "a", "probabilities": {"a": 0.7}}),
        SliceResult.from_dict(
            {"slice_index": 1, "probabilities": {"a": 0.2, "b": 0.8}, "out_of_distribution": False}
        ),
    ]
    out = io.StringIO()
    assert write_csv([JobResults(job, "in.zip", slices)], out) == 2
    header, *rows = out.getvalue().splitlines()
    assert header.split(",")[-5:] == ["p_a", "p_b", "out_of_distribution", "ood_score", "error"]
    assert rows[0].startswith("j1,in.zip,,,0,") and rows[0].endswith(",a,0.7,,,,")
    assert rows[1].endswith(",0.2,0.8,false,,")


def test_an_out_of_distribution_study_reads_inconclusive_with_the_model_output() -> None:
    flagged = {"label": "normal", "verdict": "inconclusive", "out_of_distribution": True}
    job = Job.from_dict(
        {**JOB, "status": "succeeded", "summary": {**flagged, "ood_fraction": 0.27}}
    )
    assert job.verdict == "inconclusive" and job.label == "normal"
    assert (
        job.verdict_line == "inconclusive (27% of slices out of distribution; model output normal)"
    )
    # a server without the verdict field: the flag alone still demotes the label
    older = {"label": "normal", "out_of_distribution": True}
    assert Job.from_dict({**JOB, "summary": older}).verdict == "inconclusive"
    assert Job.from_dict({**JOB, "summary": {"label": "benign"}}).verdict_line == "benign"
    out = io.StringIO()
    write_csv([JobResults(job, "a.zip", [SliceResult(0, label="normal")])], out)
    header, row = out.getvalue().splitlines()
    assert (
        dict(zip(header.split(","), row.split(","), strict=True))["study_verdict"] == "inconclusive"
    )


def test_input_member_maps_each_source_form_back_to_the_local_name() -> None:
    from client.export import input_member

    members = ["Doe_Jane/IM1.dcm", "Doe_Jane/IM2.dcm", "notes/a.png"]
    assert input_member("#2.dcm", members) == "Doe_Jane/IM2.dcm"  # STORE_SOURCE_PATHS=none
    assert input_member("#9.dcm", members) == ""  # out of range: unknown, not a guess
    assert input_member("notes/a.png", members) == "notes/a.png"  # full
    assert input_member("[redacted]/IM1.dcm", members) == "Doe_Jane/IM1.dcm"  # redacted
    assert input_member("[redacted]/IM3.dcm", members) == ""
    assert input_member("x.png", []) == ""  # a single file: nothing inside it


def test_each_retry_is_told_before_the_wait() -> None:
    told: list[Retry] = []
    api, _, sleeps = make(
        [requests.ConnectionError, (503, None, {"Retry-After": "2"}), (200, JOB, {})],
        on_retry=told.append,
    )
    assert api.job("j1").id == "j1"
    assert [(r.attempt, r.reason, r.delay_s) for r in told][1] == (2, "HTTP 503", 2.0)
    assert told[0].reason == "cannot reach the API (ConnectionError)"
    assert [r.delay_s for r in told] == sleeps
    assert str(told[1]).endswith("retry 2 of 5 in 2.0 s")


def test_submit_many_sends_one_request_and_answers_per_file(tmp_path: Path) -> None:
    from client.api import Upload

    (tmp_path / "a.png").write_bytes(b"A" * 300)
    uploads = [Upload(tmp_path / "a.png"), Upload(b"B" * 200, "b.png", "key-b")]
    answer = {
        "items": [
            {"index": 0, "status": 202, "job": JOB},
            {"index": 1, "status": 200, "job": {**JOB, "id": "j0"}},
        ]
    }
    sent: list[int] = []
    api, adapter, _ = make([requests.ConnectionError, (200, answer, {})])
    jobs = api.submit_many(uploads, "m", on_sent=sent.append)
    assert [(j.id, j.replayed) for j in jobs] == [("j1", False), ("j0", True)]  # type: ignore[union-attr]
    assert adapter.sent[1].url == "http://api.test/api/v1/jobs/batch"
    body = adapter.bodies[1]
    assert int(adapter.sent[1].headers["Content-Length"]) == len(body)
    key_a = idempotency_key(sha256_of(tmp_path / "a.png"), "m")
    assert body.index(f"\r\n\r\n{key_a}\r\n".encode()) < body.index(b"\r\n\r\nkey-b\r\n")
    assert body.index(b'filename="a.png"') < body.index(b"A" * 300) < body.index(b'"b.png"')
    assert b"B" * 200 + b"\r\n--" in body and body.endswith(b"--\r\n")
    assert sum(sent) == len(adapter.bodies[0]) + len(body)


def test_submit_many_sends_files_refused_for_a_while_again_after_retry_after() -> None:
    from client.api import Upload

    first = {
        "items": [
            {"index": 0, "status": 202, "job": JOB},
            {"index": 1, "status": 429, "error": {"message": "cap"}},
            {"index": 2, "status": 400, "error": {"message": "not an image"}},
        ]
    }
    again = {"items": [{"index": 0, "status": 202, "job": {**JOB, "id": "j2"}}]}
    told: list[Retry] = []
    api, adapter, sleeps = make(
        [(200, first, {"Retry-After": "3"}), (200, again, {})], on_retry=told.append
    )
    answers = api.submit_many([Upload(bytes([i]), f"{i}.png") for i in range(3)])
    assert isinstance(answers[0], Job) and isinstance(answers[1], Job) and answers[1].id == "j2"
    assert isinstance(answers[2], ApiError) and answers[2].status == 400
    assert answers[2].message == "not an image"
    assert sleeps == [3.0] and told[0].reason == "HTTP 429 for 1 of the files"
    assert adapter.bodies[1].count(b'name="file"') == 1  # only the refused file again


def test_submit_many_splits_a_batch_the_server_finds_too_large() -> None:
    from client.api import Upload

    limit = {"error": {"code": 400, "message": "too many", "detail": {"batch": {"max_files": 2}}}}

    def ok(*ids: str) -> Reply:
        return (200, {"items": [{"status": 202, "job": {**JOB, "id": i}} for i in ids]}, {})

    api, adapter, _ = make([(400, limit, {}), ok("a", "b"), (413, None, {}), ok("c"), ok("d")])
    answers = api.submit_many([Upload(bytes([i]), f"{i}.png") for i in range(4)])
    assert [a.id for a in answers] == ["a", "b", "c", "d"]  # type: ignore[union-attr]
    assert [b.count(b'name="file"') for b in adapter.bodies] == [4, 2, 2, 1, 1]


def test_the_batch_routes_of_an_older_server_raise_not_supported() -> None:
    from client.api import NotSupported, Upload

    api, _, _ = make([(405, {"error": {"code": 405, "message": "no"}}, {}), (404, None, {})])
    with pytest.raises(NotSupported):
        api.submit_many([Upload(b"x", "x.png")])
    with pytest.raises(NotSupported):
        api.results_many(["j1"])


def test_results_many_groups_slices_by_job_over_pages() -> None:
    page1 = {
        "items": [{"job_id": "j1", "slice_index": 0}, {"job_id": "j1", "slice_index": 1}],
        "next": "/api/v1/results?offset=2&limit=2&job=j1&job=j2",
    }
    page2 = {"items": [{"job_id": "j2", "slice_index": 0, "label": "a"}], "next": None}
    api, adapter, _ = make([(200, page1, {}), (200, page2, {})])
    got = api.results_many(["j1", "j2", "j1"], page_size=2)
    assert {j: [s.slice_index for s in v] for j, v in got.items()} == {"j1": [0, 1], "j2": [0]}
    assert adapter.sent[0].url == "http://api.test/api/v1/results?job=j1&job=j2&limit=2"
