"""Receiving and closing groups in-process, on a real (SQLite) database and storage folder.

No listener and no worker: :func:`store_instance` is what the C-STORE handler and
STOW-RS call, :func:`close_group` what the node's housekeeping calls (the job
is queued to the test's own Redis queue and never run here).
"""

from __future__ import annotations

import logging
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import MRImageStorage, generate_uid
from sqlalchemy import select

from config import Settings
from db.dicom_models import DicomGroup, DicomInstance, GroupStatus
from db.models import AuditEvent, Job
from db.session import session_scope, transaction_lock
from dicomnet import receive
from dicomnet.groups import HEADER_FILE, close_group
from dicomnet.receive import group_lock, store_instance
from tests.fixtures_dicom import PATIENT_NAME, ct_slice, series, to_bytes

pytestmark = pytest.mark.usefixtures("api_env")


def settings(**values: object) -> Settings:
    return Settings(dicom_min_free_mb=0, **values)  # type: ignore[arg-type]


def ct_study(n: int, study_uid: str) -> list[bytes]:
    slices = series(generate_uid(), [float(z) for z in range(n)])
    for ds in slices:
        ds.StudyInstanceUID = study_uid
    return [to_bytes(ds) for ds in slices]


def group_of(s: Settings, study_uid: str) -> DicomGroup:
    with session_scope(s.database_url) as db:
        return db.scalars(
            select(DicomGroup).where(DicomGroup.study_uid == study_uid).order_by(DicomGroup.version)
        ).all()[-1]


def test_a_group_counts_instances_and_a_resent_one_replaces_its_copy() -> None:
    s, study_uid = settings(), generate_uid()
    files = ct_study(3, study_uid)
    assert [store_instance(s, "LUNGCT", "PACS", f).status for f in files] == [0, 0, 0]
    assert store_instance(s, "LUNGCT", "PACS", files[0]).ok  # sent twice
    group = group_of(s, study_uid)
    assert group.instance_count == 3 and group.owner == "dicom" and group.version == 1
    stored = list((s.storage_dir / group.id / "dicom").glob("*.dcm"))
    assert len(stored) == 3
    assert PATIENT_NAME.encode() in stored[0].read_bytes()  # the raw bytes, as received


def test_a_store_that_waited_for_the_lock_says_how_long(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer gives up on a slow answer (often at 10 s): the log says where the time went."""
    monkeypatch.setattr(receive, "SLOW_STORE_S", 0.2)
    s, study_uid = settings(), generate_uid()
    held = threading.Event()

    def hold_the_lock() -> None:  # as close_group does while it writes a study's zip
        with session_scope(s.database_url) as db:
            transaction_lock(db, group_lock("LUNGCT", study_uid))
            held.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(5)
    with caplog.at_level(logging.WARNING, logger="dicomnet.receive"):
        assert store_instance(s, "LUNGCT", "PACS", ct_study(1, study_uid)[0]).ok
    holder.join()
    messages = [r.getMessage() for r in caplog.records]
    (slow,) = [m for m in messages if "storing an instance took" in m]
    waited = float(slow.split("(")[1].split("s ")[0])
    assert 0.3 <= waited < 5, slow


def test_limits_and_refusals_have_their_status() -> None:
    s, study_uid = settings(dicom_max_study_instances=2), generate_uid()
    files = ct_study(3, study_uid)
    assert [store_instance(s, "LUNGCT", "PACS", f).status for f in files] == [0, 0, 0xA700]
    mr = ct_slice(series_uid=generate_uid(), instance=1, z=0.0, modality="MR")
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    # declared as CT, but the file says MR: still refused
    refused = store_instance(s, "LUNGCT", "PACS", to_bytes(mr), sop_class=ct_slice_class())
    assert refused.status == 0x0122 and "MR Image Storage" in refused.reason
    assert store_instance(s, "LUNGCT", "PACS", b"\x00" * 300).status == 0xC000
    too_big = settings(max_member_mb=1)
    big = ct_study(1, generate_uid())[0] + bytes(1024**2)
    assert store_instance(too_big, "LUNGCT", "PACS", big).status == 0xA700


def ct_slice_class() -> str:
    return "1.2.840.10008.5.1.4.1.1.2"


def test_a_part_without_preamble_is_stored_as_a_part10_file() -> None:
    s, study_uid = settings(), generate_uid()
    bare = ct_study(1, study_uid)[0][132:]  # file meta first, as dicomweb-client sends it
    assert store_instance(s, "LUNGCT", "STOW-RS", bare, owner="web").ok
    group = group_of(s, study_uid)
    assert group.owner == "web"
    [stored] = (s.storage_dir / group.id / "dicom").glob("*.dcm")
    assert stored.read_bytes()[128:132] == b"DICM"


def test_closing_applies_the_series_rules_and_starts_a_new_version_after(tmp_path: Path) -> None:
    s, study_uid = settings(dicom_ae_owners=("PACS=radiology",)), generate_uid()
    axial = ct_study(3, study_uid)
    scout = series(generate_uid(), [0.0], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    scout[0].StudyInstanceUID = study_uid
    for f in [*axial, to_bytes(scout[0])]:
        assert store_instance(s, "LUNGCT", "PACS", f).ok
    group = group_of(s, study_uid)
    assert close_group(s, group.id, group_lock("LUNGCT", study_uid)) is None  # not quiet yet

    quiet = settings(dicom_ae_owners=("PACS=radiology",), dicom_study_timeout_s=0.001)
    job_id = close_group(quiet, group.id, group_lock("LUNGCT", study_uid))
    assert job_id is not None
    with session_scope(s.database_url) as db:
        job = db.get(Job, job_id)
        assert job is not None and job.owner == "radiology" and job.kind == "study"
        assert db.scalar(select(AuditEvent.action).where(AuditEvent.job_id == job_id))
        closed = db.get(DicomGroup, group.id)
        assert closed is not None and closed.status == GroupStatus.CLOSED
        rows = db.scalar(select(DicomInstance.id).where(DicomInstance.group_id == group.id))
        assert rows is not None  # kept: the SR references their UIDs
    with zipfile.ZipFile(s.storage_dir / job.upload_key) as zf:
        assert len(zf.namelist()) == 3  # the localizer is not classified
    assert (s.storage_dir / job_id / HEADER_FILE).is_file()
    assert not (s.storage_dir / group.id).exists()  # the received files are in the zip now

    assert store_instance(s, "LUNGCT", "PACS", axial[0]).ok  # after the close: version 2
    later = group_of(s, study_uid)
    assert later.version == 2 and later.id != group.id and later.status == GroupStatus.OPEN


def test_result_and_outbox_deliver_then_forget_the_patient_module() -> None:
    """An ended job (marked succeeded here) gets its SR; delivery deletes the header copy."""
    from db.models import JobStatus
    from dicomnet import outbox, peers, results
    from tests.conftest import free_port
    from tests.dicom_peers import destination

    port = free_port()
    s = settings(dicom_destinations=(f"pacs=PACS@127.0.0.1:{port}",), dicom_study_timeout_s=0.001)
    study_uid = generate_uid()
    for f in ct_study(2, study_uid):
        assert store_instance(s, "LUNGCT", "PACS", f).ok
    job_id = close_group(s, group_of(s, study_uid).id, group_lock("LUNGCT", study_uid))
    assert job_id is not None
    summary = {"label": "benign", "probabilities": {"benign": 0.6, "normal": 0.4}, "series": []}
    with session_scope(s.database_url) as db:
        job = db.get(Job, job_id)
        assert job is not None
        job.status, job.summary = JobStatus.SUCCEEDED, summary

    assert results.build_due(s) == [job_id]
    assert results.build_due(s) == []  # once
    with destination("PACS", port) as pacs:
        assert outbox.send_due(s, peers.destinations(s)["pacs"]) == 1
        [sent] = pacs.datasets()
    assert sent.StudyInstanceUID == study_uid and str(sent.PatientName) == PATIENT_NAME
    assert [e["status"] for e in outbox.exports_of(s, job_id)] == ["delivered"]
    assert not (s.storage_dir / job_id / HEADER_FILE).exists()
    assert (s.storage_dir / job_id / results.SR_FILE).exists()


def test_heat_maps_go_with_the_sr_as_secondary_capture_images() -> None:
    """DICOM_HEATMAP_IMAGES: each top slice with a stored map becomes an SC image."""
    from db.models import JobStatus, SlicePrediction
    from dicomnet import outbox, peers, results
    from storage import open_storage, packs
    from tests.conftest import free_port, png_bytes
    from tests.dicom_peers import destination

    port = free_port()
    s = settings(
        dicom_destinations=(f"pacs=PACS@127.0.0.1:{port}",),
        dicom_study_timeout_s=0.001,
        dicom_heatmap_images=True,
    )
    study_uid = generate_uid()
    for f in ct_study(2, study_uid):
        assert store_instance(s, "LUNGCT", "PACS", f).ok
    job_id = close_group(s, group_of(s, study_uid).id, group_lock("LUNGCT", study_uid))
    assert job_id is not None
    storage = open_storage(s)
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    [pack] = packs.write(storage, job_id, [packs.PackSlice(0, pixels, None)]).values()
    storage.put(job_id, "heatmaps/0.png", png_bytes(2, size=16))  # any size: resized over
    top = [{"slice_index": 0, "series_uid": "x", "instance_number": 1, "probability": 0.9}]
    summary = {"label": "malignant", "probabilities": {"malignant": 0.9}, "top_slices": top}
    with session_scope(s.database_url) as db:
        job = db.get(Job, job_id)
        assert job is not None
        job.status, job.summary = JobStatus.SUCCEEDED, summary
        db.add(SlicePrediction(job_id=job_id, slice_index=0, source="#1.dcm", pack=pack))
    assert results.build_due(s) == [job_id]
    with destination("PACS", port) as pacs:
        assert outbox.send_due(s, peers.destinations(s)["pacs"]) == 1
        sent = {str(d.SOPClassUID): d for d in pacs.datasets()}
    sc = sent["1.2.840.10008.5.1.4.1.1.7"]  # Secondary Capture Image Storage
    assert sc.StudyInstanceUID == study_uid and sc.pixel_array.shape == (32, 32, 3)
    assert str(sc.PatientName) == PATIENT_NAME  # filed with the study, like the SR
    assert "1.2.840.10008.5.1.4.1.1.88.34" in sent  # and the SR itself
