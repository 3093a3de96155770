"""The DICOM node end to end with real parts: pynetdicom peers, the real worker, real SQL.

``python -m dicomnet`` runs as a subprocess next to the stack's Celery worker;
a storescp destination (pynetdicom) receives the SR; a second destination is
down. Study timeout 1.5 s, so a study closes quickly.
"""

from __future__ import annotations

import copy
import io
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid
from sqlalchemy import select

from bench.e2e import stop
from tests.conftest import Stack, authed, free_port, new_key
from tests.dicom_peers import Destination, associate, destination, send, start_node, wait_until
from tests.fixtures_dicom import PATIENT_ID, PATIENT_NAME, ct_slice, series

STUDY_TIMEOUT_S = 1.5
OWNER = "radiology"
VERDICT_CODES = {"17621005", "30807003", "21594007", "373068000"}


@dataclass
class Node:
    env: dict[str, str]
    port: int
    proc: Any
    good: Destination
    tmp: Path

    def restart(self, name: str) -> None:
        self.proc = start_node(self.env, self.tmp / f"{name}.log")

    def log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("*.log")))


def node_env(stack: Stack, port: int, good_port: int, down_port: int) -> dict[str, str]:
    return {
        **stack.env,
        "DICOM_PORT": str(port),
        "DICOM_AE_TITLE": "LUNGCT",
        "DICOM_ALLOWED_AES": "STORESCU,OTHER@127.0.0.1",
        "DICOM_AE_OWNERS": f"STORESCU={OWNER}",
        "DICOM_STUDY_TIMEOUT_S": str(STUDY_TIMEOUT_S),
        "DICOM_POLL_INTERVAL_S": "0.2",
        "DICOM_DESTINATIONS": f"good=GOOD@127.0.0.1:{good_port},down=DOWN@127.0.0.1:{down_port}",
        "DICOM_MAX_ATTEMPTS": "3",
        "DICOM_RETRY_BASE_S": "0.2",
        "DICOM_RETRY_MAX_S": "0.4",
        "DICOM_MIN_FREE_MB": "0",
    }


@contextmanager
def running_node(stack: Stack, tmp: Path, **overrides: str) -> Iterator[Node]:
    """The node and its good destination; ``overrides`` change its settings.

    The down destination's port is bound but never listened on while the node
    runs, so nothing else can answer there (connections are refused).
    """
    port, good_port = free_port(), free_port()
    with socket.socket() as down, destination("GOOD", good_port) as good:
        down.bind(("127.0.0.1", 0))
        env = {**node_env(stack, port, good_port, down.getsockname()[1]), **overrides}
        n = Node(env, port, start_node(env, tmp / "node.log"), good, tmp)
        try:
            yield n
        finally:
            stop(n.proc)


@pytest.fixture(scope="module")
def node(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node per module and backend: every test sends its own study (fresh UIDs),
    and a test that kills or reconfigures a node starts its own (:func:`running_node`)."""
    with running_node(stack, tmp_path_factory.mktemp("node")) as n:
        yield n


@pytest.fixture(autouse=True)
def node_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test prints its node's log (captured into the report): a CI run's only trace."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "node" in request.fixturenames:
        print(f"--- the node's log (tail) ---\n{request.getfixturevalue('node').log()[-4000:]}")


def study(n_axial: int = 4) -> list[Dataset]:
    """A fresh two-series CT study: axial slices and a localizer (the rules skip it)."""
    study_uid = generate_uid()
    axial = series(generate_uid(), [float(z) for z in range(n_axial)])
    scout = series(generate_uid(), [0.0, 1.0], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    for ds in axial + scout:
        ds.StudyInstanceUID = study_uid
    return axial + scout


def job_of(stack: Stack, study_uid: str, version: int = 1) -> str | None:
    from db.dicom_models import DicomGroup
    from db.session import session_scope

    with session_scope(stack.env["DATABASE_URL"]) as s:
        return s.scalar(
            select(DicomGroup.job_id).where(
                DicomGroup.study_uid == study_uid, DicomGroup.version == version
            )
        )


def ended_job(stack: Stack, client: Any, study_uid: str) -> dict[str, Any]:
    job_id = wait_until(lambda: job_of(stack, study_uid), 20, "the group to close into a job")

    def ended() -> dict[str, Any] | None:
        body = client.get(f"/api/v1/jobs/{job_id}?wait=5").get_json()
        return body if body["status"] not in ("queued", "running") else None

    return wait_until(ended, 120, "the job to end")


def test_c_echo_answers(node: Node) -> None:
    assoc = associate(node.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_wrong_called_ae_is_refused(node: Node) -> None:
    assoc = associate(node.port, called="NOTLUNGCT")
    assert assoc.is_rejected


def test_unknown_calling_ae_is_refused(node: Node) -> None:
    assoc = associate(node.port, calling="STRANGER")
    assert assoc.is_rejected


def test_non_ct_sop_class_gets_a_refusal_status(node: Node) -> None:
    mr = ct_slice(series_uid=generate_uid(), instance=1, z=0.0, modality="MR")
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    mr.StudyInstanceUID = generate_uid()
    assert send(node.port, [mr]) == [0x0122]
    assert job_of(node_stack(node), mr.StudyInstanceUID) is None


def node_stack(node: Node) -> Stack:
    return Stack(node.env, None, Path())  # type: ignore[arg-type]


def test_study_over_two_associations_comes_back_as_sr(node: Node, stack: Stack) -> None:
    datasets = study()
    study_uid = datasets[0].StudyInstanceUID
    assert send(node.port, datasets[:3]) == [0] * 3
    assert send(node.port, datasets[3:]) == [0] * 3  # a second association, same study

    client = authed(stack.app(), new_key(stack.env["DATABASE_URL"], OWNER))
    job = ended_job(stack, client, study_uid)
    assert job["status"] == "succeeded", job
    assert job["owner"] == OWNER and job["kind"] == "study"
    assert job["progress"]["total"] == 4  # the localizer series was not classified

    received = wait_until(lambda: node.good.of_study(study_uid), 30, "the SR at the destination")
    assert len(received) == 1
    sr = hd.sr.srread(io.BytesIO(received[0]))
    check_sr(sr, study_uid, {str(d.SOPInstanceUID) for d in datasets})
    # the copy sent to the PACS carries the study's own patient module
    assert str(sr.PatientName) == PATIENT_NAME and sr.PatientID == PATIENT_ID

    def exports() -> dict[str, Any] | None:
        body = client.get(f"/api/v1/jobs/{job['id']}").get_json()
        states = {e["destination"]: e for e in body.get("exports", [])}
        return states if states.get("down", {}).get("status") == "failed" else None

    states = wait_until(exports, 30, "the down destination to fail")
    assert states["good"]["status"] == "delivered"
    assert states["down"]["attempts"] == 3 and states["down"]["last_error"]

    served = client.get(f"/api/v1/jobs/{job['id']}/sr")
    assert served.status_code == 200 and served.mimetype == "application/dicom"
    plain = hd.sr.srread(io.BytesIO(served.data))
    assert plain.SOPInstanceUID == sr.SOPInstanceUID
    assert not plain.get("PatientName") and not plain.get("PatientID")
    assert PATIENT_NAME.encode() not in served.data and PATIENT_ID.encode() not in served.data


def check_sr(sr: Any, study_uid: str, sent: set[str]) -> None:
    """TID 1500 content: codes, references, same study, algorithm, UNVERIFIED."""
    assert sr.StudyInstanceUID == study_uid
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.SOPInstanceUID not in sent and sr.Modality == "SR"
    groups = sr.content.get_image_measurement_groups()
    assert groups[0].tracking_identifier == "study"
    assert len(groups) == 2  # the study and its one classified series
    for group in groups:
        assert group.finding_type.value in VERDICT_CODES
        names = {m.name.meaning for m in group.get_measurements()}
        assert any(n.startswith("Probability of") for n in names)
        refs = {r.referenced_sop_instance_uid for r in group.source_images}
        assert refs and refs <= sent
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert evidence == sent
    equipment = sr.ContributingEquipmentSequence[0]
    assert equipment.ManufacturerModelName and equipment.SoftwareVersions


def test_instances_after_the_group_closed_start_a_new_version(node: Node, stack: Stack) -> None:
    datasets = study(n_axial=2)[:2]
    study_uid = datasets[0].StudyInstanceUID
    assert send(node.port, datasets[:1]) == [0]
    first = wait_until(lambda: job_of(stack, study_uid), 20, "version 1")
    again = copy.deepcopy(datasets[1])
    assert send(node.port, [again]) == [0]
    second = wait_until(lambda: job_of(stack, study_uid, version=2), 20, "version 2")
    assert second != first
    mine = wait_until(
        lambda: len(node.good.of_study(study_uid)) >= 2 and node.good.of_study(study_uid),
        120,
        "2 SRs",
    )
    srs = [dcmread(io.BytesIO(b)) for b in mine]
    assert len({d.SeriesInstanceUID for d in srs}) == 2  # new UIDs for every version
    assert len({d.SOPInstanceUID for d in srs}) == 2
