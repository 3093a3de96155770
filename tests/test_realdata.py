"""Real data through the real service over HTTP: IQ-OTH/NCCD slices and a DICOM CT study.

Needs ../shared/data (or DATA_DIR); skipped when it is absent. CI always has it.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import DATA_DIR, Stack, served

pytestmark = [
    pytest.mark.integration,
    pytest.mark.realdata,
    pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no real data at {DATA_DIR}"),
]
STUDY = DATA_DIR / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "04-04-2007-NA-Chest-07990"


@pytest.fixture(scope="module")
def http(stack: Stack) -> requests.Session:
    """HTTP with the stack's API key."""
    return stack.http()


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> Iterator[str]:
    """The stack's API served over real HTTP on a loopback port."""
    with served(stack.app()) as url:
        yield url


def zip_folder(files: list[Path], root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, str(f.relative_to(root)))
    return buf.getvalue()


def run_job(
    http: requests.Session, base: str, archive: bytes, name: str, timeout_s: float = 300
) -> dict[str, Any]:
    r = http.post(f"{base}/api/v1/jobs", files={"file": (name, archive)}, timeout=60)
    assert r.status_code == 202, r.text
    url = base + r.headers["Location"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = http.get(url, timeout=10).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job not finished after {timeout_s}s")


def results(http: requests.Session, base: str, job_id: str) -> list[dict[str, Any]]:
    items, url = [], f"{base}/api/v1/jobs/{job_id}/results"
    while url:
        page = http.get(url if url.startswith("http") else base + url, timeout=10).json()
        items += page["items"]
        url = page["next"]
    return items


def test_twenty_iqoth_slices(http: requests.Session, base_url: str) -> None:
    root = DATA_DIR / "iqoth-nccd"
    files = sorted(root.glob("*/*.jpg"))[::45][:20]
    job = run_job(http, base_url, zip_folder(files, root), "iqoth20.zip")
    assert job["status"] == "succeeded", job
    items = results(http, base_url, job["id"])
    assert len(items) == 20 and all(i["label"] and not i["error"] for i in items)
    assert job["summary"]["slices_predicted"] == 20


def _identifiers() -> set[str]:
    """Patient identifiers present in the real study's headers."""
    import pydicom

    ds = pydicom.dcmread(next(STUDY.rglob("*.dcm")), stop_before_pixels=True)
    values = {
        str(ds.get(k, ""))
        for k in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
            "ReferringPhysicianName",
        )
    }
    return {v for v in values if len(v) >= 3}


def _database_text(job_id: str, url: str) -> str:
    from db.models import Job, SlicePrediction
    from db.session import session_scope

    with session_scope(url) as s:
        job = s.get_one(Job, job_id)
        rows = s.query(SlicePrediction).filter_by(job_id=job_id).all()
        cols = [c.name for c in Job.__table__.columns]
        dump = [{c: str(getattr(job, c)) for c in cols}]
        dump += [
            {c.name: str(getattr(r, c.name)) for c in SlicePrediction.__table__.columns}
            for r in rows
        ]
    return json.dumps(dump)


@pytest.mark.slow
def test_real_dicom_study(http: requests.Session, base_url: str, stack: Stack) -> None:
    files = sorted(STUDY.rglob("*.dcm"))
    secrets = _identifiers()
    assert secrets, "the study should carry identifiers to look for"
    # Zipped with the patient folder, as a user would, under an identifying name.
    name = f"{sorted(secrets)[0]}.zip"
    job = run_job(http, base_url, zip_folder(files, STUDY.parent.parent), name)
    assert job["status"] == "succeeded", job
    items = results(http, base_url, job["id"])
    assert len(items) == 128 and all(i["label"] for i in items)
    series = job["summary"]["series"]
    assert len(series) == 2 and all(s["slices_predicted"] == 64 for s in series)
    # two "5mm" series, told apart by their SeriesNumber
    assert sorted((s["series_number"], s["series_description"]) for s in series) == [
        (2, "5mm"),
        (3, "5mm"),
    ]
    for s in series:
        positions = [i["slice_position"] for i in items if i["series_uid"] == s["series_uid"]]
        assert len(positions) == 64
        assert positions == sorted(positions) or positions == sorted(positions, reverse=True)
    assert job["summary"]["label"] in ("benign", "malignant", "normal")
    # Issue 9: an adenocarcinoma study must not come back as a plain confident "normal".
    assert all(isinstance(i["ood_score"], float) for i in items)
    assert all(isinstance(i["out_of_distribution"], bool) for i in items)
    summary = job["summary"]
    assert all(0 <= s["ood_fraction"] <= 1 for s in series)
    assert summary["label"] == "malignant" or (
        summary["out_of_distribution"] and summary["ood_warning"]
    ), {k: summary[k] for k in ("label", "out_of_distribution", "ood_fraction")}
    # Issue 20: a flagged study is never headlined as a diagnosis
    assert summary["verdict"] == ("inconclusive" if summary["out_of_distribution"] else "malignant")
    api_text = json.dumps([job, items])
    stored = (
        _database_text(job["id"], stack.env["DATABASE_URL"])
        + stack.log.read_text(errors="replace")
        + api_text
    )
    assert not [v for v in secrets if v in stored]
