"""Member paths that name the patient are redacted before they leave ingest (sources)."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from config.settings import Settings
from ingest import InvalidUpload, UploadPlan, inspect_upload, plan_upload
from ingest.redact import REDACTED, identifying_values, redactor
from tests.fixtures_dicom import (
    ACCESSION,
    PATIENT_ID,
    PATIENT_NAME,
    ct_slice,
    series,
    to_bytes,
    write_zip,
)

SETTINGS = Settings()
FOLDER = f"{PATIENT_NAME.upper()}_{PATIENT_ID}"  # DOE^JANE_PID-0042-SECRET, as a PACS names it
SECRETS = (PATIENT_NAME, PATIENT_ID, ACCESSION, "doe", "jane", "19700101", "Who^Doctor")


def _sources(plan: UploadPlan) -> list[str]:
    return [s.source for s in plan.slices] + [k.source for k in plan.skipped]


def _patient_folder_zip(tmp_path: Path) -> Path:
    """A series under the patient's folder, a scout under the accession number, a note."""
    slices = series("1.2.3.4.2", [10.0, 0.0, 5.0, 15.0])
    scout = ct_slice(series_uid="1.2.3.4.2", instance=9, z=None, image_type=("LOCALIZER",))
    members = [(f"{FOLDER}/series1/IM{ds.InstanceNumber}.dcm", to_bytes(ds)) for ds in slices]
    members += [
        (f"{ACCESSION.lower()}/scout.dcm", to_bytes(scout)),
        ("Doe Jane/notes.txt", b"referred by Dr Who"),
    ]
    random.Random(3).shuffle(members)
    return write_zip(tmp_path / "export.zip", members)


def test_patient_folder_names_are_redacted(tmp_path: Path) -> None:
    plan = plan_upload(_patient_folder_zip(tmp_path), SETTINGS)
    sources = _sources(plan)
    assert not any(secret.lower() in s.lower() for s in sources for secret in SECRETS)
    # Order was decided before redaction: z 0, 5, 10, 15 are instances 2, 3, 1, 4.
    assert [s.instance_number for s in plan.slices] == [2, 3, 1, 4]
    assert [s.source for s in plan.slices] == [
        f"{REDACTED}_{REDACTED}/series1/IM{i}.dcm" for i in (2, 3, 1, 4)
    ]
    assert sorted(k.source for k in plan.skipped) == [
        f"{REDACTED} {REDACTED}/notes.txt",
        f"{REDACTED}/scout.dcm",
    ]
    assert plan.slices[0].load().shape == (16, 16)  # the real name still reads the bytes


def test_redacted_values_are_not_kept_on_the_plan(tmp_path: Path) -> None:
    plan = plan_upload(_patient_folder_zip(tmp_path), SETTINGS)
    text = repr(plan) + repr([vars(s) for s in plan.slices])
    assert not any(secret.lower() in text.lower() for secret in SECRETS)


def test_single_file_named_after_the_patient(tmp_path: Path) -> None:
    path = tmp_path / "upload.dcm"
    path.write_bytes(to_bytes(ct_slice(series_uid="1.2.3.4.2", instance=1, z=0.0)))
    plan = plan_upload(path, SETTINGS, filename=f"{PATIENT_ID}.dcm")
    assert [s.source for s in plan.slices] == [f"{REDACTED}.dcm"]


def test_refusal_messages_do_not_quote_member_names(tmp_path: Path) -> None:
    bomb = [(f"{FOLDER}/IM1.dcm", b"\0" * 2 * 1024**2)]  # 2 MB of zeros deflate ~1000:1
    path = write_zip(tmp_path / "bomb.zip", bomb, zipfile.ZIP_DEFLATED)
    with pytest.raises(InvalidUpload, match=r"archive member #1 is compressed") as info:
        inspect_upload(path, "bomb.zip", SETTINGS.limits)
    assert PATIENT_ID not in str(info.value)


def test_identifying_values_cover_names_ids_and_sequences() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^Jane^^Dr"
    ds.PatientID = "42"  # too short to search for: it would hit every "42" in a path
    ds.OtherPatientNames = ["Roe^Richard", "Smith"]
    item = Dataset()
    item.PatientID = "MRN-9981"
    ds.OtherPatientIDsSequence = DicomSequence([item])
    ds.InstitutionName = "St Elsewhere"
    ds.SeriesDescription = "Chest 5mm"  # not identifying: left alone
    assert identifying_values(ds) == {
        "Doe^Jane^^Dr", "Doe", "Jane", "Roe^Richard", "Roe", "Richard", "Smith",
        "MRN-9981", "St Elsewhere",
    }  # fmt: skip


def test_redactor_is_case_insensitive_and_longest_first() -> None:
    scrub = redactor({"Doe^Jane", "Doe", "Jane", "a.b"})
    assert scrub("DOE^JANE/jane_doe/axb/a.b/IM1.dcm") == (
        f"{REDACTED}/{REDACTED}_{REDACTED}/axb/{REDACTED}/IM1.dcm"
    )
    assert redactor(set())("Doe/IM1.dcm") == "Doe/IM1.dcm"
