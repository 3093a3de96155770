"""The DICOM node's HTTP side: STOW-RS (checked with dicomweb-client), export, SR, admin.

Real HTTP (werkzeug on a loopback port) for STOW-RS, the node as a subprocess,
the stack's real worker; the destinations are pynetdicom storescps.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import highdicom as hd
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import MRImageStorage, generate_uid

from tests.conftest import Stack, authed, new_key, served
from tests.dicom_peers import wait_until
from tests.fixtures_dicom import ct_slice, to_bytes
from tests.test_dicomnet import OWNER, Node, check_sr, ended_job, node, study

__all__ = ["node"]  # the fixture, shared with tests/test_dicomnet.py


def node_app(node: Node) -> Any:
    """The API with the node's settings (in a deployment they share one environment)."""
    from api import create_app
    from config import Settings

    dicom = {k.lower(): v for k, v in node.env.items() if "DICOM_" in k}
    return create_app(Settings(**dicom))  # type: ignore[arg-type]


def test_stow_rs_feeds_the_same_grouping(node: Node, stack: Stack) -> None:
    datasets = study(n_axial=3)
    study_uid = datasets[0].StudyInstanceUID
    key = new_key(stack.env["DATABASE_URL"], "web-uploader")
    with served(node_app(node)) as base:
        web = DICOMwebClient(f"{base}/dicomweb", headers={"Authorization": f"Bearer {key}"})
        answer = web.store_instances(datasets)
    stored = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert stored == {str(d.SOPInstanceUID) for d in datasets}

    client = authed(node_app(node), key)
    job = ended_job(stack, client, study_uid)  # the key's owner owns the STOW-RS study
    assert job["status"] == "succeeded" and job["owner"] == "web-uploader", job
    sr_bytes = wait_until(lambda: node.good.of_study(study_uid), 30, "the SR")[0]
    check_sr(hd.sr.srread(io.BytesIO(sr_bytes)), study_uid, stored)

    # on request, once more: a new outbox entry, delivered again
    answer = client.post(f"/api/v1/jobs/{job['id']}/export", json={"destination": "good"})
    assert answer.status_code == 202 and answer.json["status"] == "pending"
    def good_exports() -> list[str]:
        exports = client.get(f"/api/v1/jobs/{job['id']}").json["exports"]
        return [e["status"] for e in exports if e["destination"] == "good"]

    wait_until(lambda: good_exports() == ["delivered"] * 2, 30, "the exported copy")
    assert len(node.good.of_study(study_uid)) == 2
    # "down" still owes its copy: the header copy (patient module) stays until then
    job_folder = Path(node.env["STORAGE_DIR"]) / job["id"]
    assert (job_folder / "dicom" / "header.dcm").exists()
    assert (job_folder / "dicom" / "sr.dcm").exists()


def test_stow_rs_refuses_non_ct_and_bad_bodies(node: Node, stack: Stack) -> None:
    key = new_key(stack.env["DATABASE_URL"], "web-uploader")
    mr = ct_slice(series_uid=generate_uid(), instance=1, z=0.0, modality="MR")
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ct = ct_slice(series_uid=generate_uid(), instance=1, z=0.0)
    ct.StudyInstanceUID = mr.StudyInstanceUID = generate_uid()
    headers = {"Authorization": f"Bearer {key}"}
    with served(stack.app()) as base:
        mixed = _stow(base, headers, [to_bytes(ct), to_bytes(mr)])
        assert mixed.status_code == 202
        failed = mixed.json()["00081198"]["Value"]
        assert failed[0]["00081197"]["Value"] == [0x0122]
        assert _stow(base, headers, [to_bytes(mr)]).status_code == 409
        assert _stow(base, headers, [b"not dicom at all"]).status_code == 409
        wrong_type = requests.post(f"{base}/dicomweb/studies", data=b"x", headers=headers)
        assert wrong_type.status_code == 415 and wrong_type.json()["error"]["message"]
        anonymous = _stow(base, {}, [to_bytes(ct)])
        assert anonymous.status_code == 401


def _stow(base: str, headers: dict[str, str], parts: list[bytes]) -> requests.Response:
    boundary = "lungct-test-boundary"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return requests.post(
        f"{base}/dicomweb/studies",
        data=body,
        headers={**headers, "Content-Type": content_type},
        timeout=30,
    )


def test_admin_lists_destinations_with_a_live_echo(node: Node, stack: Stack) -> None:
    app = node_app(node)
    admin = authed(app, new_key(stack.env["DATABASE_URL"], "ops", admin=True))
    body: dict[str, Any] = admin.get("/api/v1/admin/dicom").json
    assert body["node"]["echo"] is True and body["node"]["ae_title"] == "LUNGCT"
    echoes = {d["name"]: d["echo"] for d in body["destinations"]}
    assert echoes == {"good": True, "down": False}
    plain = authed(app, new_key(stack.env["DATABASE_URL"], OWNER))
    assert plain.get("/api/v1/admin/dicom").status_code == 403


def test_sr_and_export_need_a_dicom_job(stack: Stack, tmp_path: Path) -> None:
    from tests.test_pipeline import submit

    client = stack.client()
    job = submit(client, to_bytes(ct_slice(series_uid=generate_uid(), instance=1, z=0.0)), "a.dcm")
    assert client.get(f"/api/v1/jobs/{job['id']}/sr").status_code == 404
    answer = client.post(f"/api/v1/jobs/{job['id']}/export", json={"destination": "nowhere"})
    assert answer.status_code == 400 and "unknown destination" in answer.json["error"]["message"]
    assert client.get(f"/api/v1/jobs/{job['id']}").json["exports"] == []
