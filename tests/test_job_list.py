"""The job list (issue 20): input names as the privacy rules allow, filters by verdict,
out-of-distribution flag and name, and ``next`` links that keep the filters."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import TINY_MODEL, Stack, authed, new_key, png_bytes
from tests.fixtures_dicom import PATIENT_NAME, ct_slice, to_bytes


def _submit(client, data: bytes, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    r = client.post(
        "/api/v1/jobs",
        data={"file": (io.BytesIO(data), name), "model": TINY_MODEL},
        content_type="multipart/form-data",
    )
    assert r.status_code == 202, r.json
    return r.json


def _ids(client, query: str) -> set[str]:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/v1/jobs?{query}")
    assert r.status_code == 200, r.json
    return {j["id"] for j in r.json["items"]}


def test_input_names_follow_the_privacy_rule(client) -> None:  # type: ignore[no-untyped-def]
    dicom = to_bytes(ct_slice(series_uid="1.2.3.4.5", instance=1, z=1.0))
    named = _submit(client, dicom, f"exports/{PATIENT_NAME}/ct_{PATIENT_NAME}.dcm")
    assert named["input_name"] == "[redacted].dcm"  # the header's name, in a file name
    plain = _submit(client, dicom, "exports/Doe/slice_0001.dcm")
    assert plain["input_name"] == "slice_0001.dcm"  # folders never kept
    assert _submit(client, png_bytes(1), "scan_007.png")["input_name"] is None  # no header


def test_full_mode_keeps_image_names(api_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from api import create_app
    from config import Settings

    monkeypatch.setenv("STORE_SOURCE_PATHS", "full")
    client = authed(create_app(Settings()), new_key(api_env["DATABASE_URL"], "carol"))
    assert _submit(client, png_bytes(1), "scans/scan_007.png")["input_name"] == "scan_007.png"


@pytest.mark.integration
def test_filters_by_verdict_ood_and_name_and_next_keeps_them(stack: Stack) -> None:
    """On each database backend (the JSON filters differ): jobs inserted as the worker
    leaves them, listed through the API."""
    from db.models import Job
    from db.session import session_scope

    owner = f"lister-{uuid.uuid4().hex[:8]}"
    client = authed(stack.app(), new_key(stack.env["DATABASE_URL"], owner))
    malignant = {"verdict": "malignant", "label": "malignant"}
    summaries = {
        "a": {"verdict": "inconclusive", "label": "normal", "out_of_distribution": True},
        "b": {**malignant, "out_of_distribution": False},
        "c": {**malignant, "out_of_distribution": None},
        "d": {"label": "benign"},  # a summary from before the verdict field
        "e": None,  # still queued
    }
    jobs = {name: str(uuid.uuid4()) for name in summaries}
    with session_scope(stack.env["DATABASE_URL"]) as s:
        for i, (name, summary) in enumerate(summaries.items()):
            s.add(
                Job(
                    id=jobs[name],
                    kind="image",
                    owner=owner,
                    model_name=TINY_MODEL,
                    model_version="1",
                    upload_key="x",
                    upload_bytes=1,
                    input_name=f"{name}.png",
                    status="queued" if summary is None else "succeeded",
                    summary=summary,
                    warnings=[],
                    created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i),
                )
            )
    assert _ids(client, "verdict=inconclusive") == {jobs["a"]}
    assert _ids(client, "verdict=benign") == {jobs["d"]}
    assert _ids(client, "ood=true") == {jobs["a"]}
    assert _ids(client, "ood=false") == {jobs[n] for n in "bcde"}
    assert _ids(client, "q=c_png") == set()  # _ is literal, not "any character"
    assert _ids(client, "q=C.PNG") == {jobs["c"]}  # case-insensitive substring
    assert _ids(client, "q=%25") == set()  # % is literal
    assert _ids(client, "status=succeeded&verdict=malignant&q=b") == {jobs["b"]}
    first = client.get("/api/v1/jobs?verdict=malignant&limit=1").json
    assert [j["id"] for j in first["items"]] == [jobs["c"]]  # newest first
    assert "verdict=malignant" in first["next"]
    second = client.get(first["next"]).json
    assert [j["id"] for j in second["items"]] == [jobs["b"]] and second["next"] is None
    assert client.get("/api/v1/jobs?ood=maybe").status_code == 400
