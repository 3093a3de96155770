"""The identifier rule (ingest/redact.py): every listed spelling is found, ordinary names not."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from config.settings import Settings
from ingest import InvalidUpload, UploadPlan, inspect_upload, plan_upload
from ingest.redact import REDACTED, TEXT_UNITS, Identifiers, Matcher, redact
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


def _matcher(**values: object) -> Matcher:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    learned = Identifiers()
    learned.learn(ds)
    return learned.matcher()


DOE = _matcher(
    PatientName="DOE^JANE", PatientID="PX0042", PatientBirthDate="19480317", AccessionNumber="A-77"
)
NAMES = ["DOE^JANE", "Jane Doe", "DOE_JANE", "doe.jane", "Doe, Jane", "JaneDoe", "doejane01"]
NAMES += ["jdoe", "J. Doe", "doe_j", "DOE", "jane", "Jane-Marie_DOE"]
DATES = ["19480317", "1948-03-17", "17.03.1948", "03-17-1948", "03/17/1948", "3/17/1948"]
DATES += ["17.3.1948", "1948_03_17", "17031948", "03171948", "17.03.48", "17-MAR-1948"]
DATES += ["March 17, 1948", "1948-Mar-17"]
IDS = ["PX0042", "px-0042", "PX42", "0042", "42", "042", "Px_0042"]
ORDINARY = [
    "series_2", "slice_0001.dcm", "CHEST", "1.2.826.0.1.3680043.8.498.1", "IM0004",
    "1.3.6.1.4.1.14519.5.2.1.6655.2359.1774", "scanner", "Janet", "Doedel", "annotations",
    "series_420", "4200", "1948", "03-17-2019", "19480318", "study_2007", "2.000000-5mm-40805",
    "Lung_Dx-A0001", "04-04-2007-NA-Chest-07990", "result", "DICOMDIR",
]  # fmt: skip


@pytest.mark.parametrize("spelling", NAMES + DATES + IDS)
def test_every_spelling_is_redacted_as_a_folder_and_in_a_file_name(spelling: str) -> None:
    folders = f"{REDACTED}/" * (spelling.count("/") + 1)  # "03/17/1948" is three folders
    assert redact(f"export/{spelling}/IM1.dcm", DOE) == f"export/{folders}IM1.dcm"
    if "/" not in spelling:
        assert redact(f"series_2/{spelling}_1.dcm", DOE) == f"series_2/{REDACTED}.dcm"


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_names_are_kept(name: str) -> None:
    assert redact(f"{name}/{name}", DOE) == f"{name}/{name}"


def test_a_date_spelled_with_slashes_spans_folders() -> None:
    assert redact("03/17/1948/IM1.dcm", DOE) == f"{REDACTED}/{REDACTED}/{REDACTED}/IM1.dcm"


def test_case_accents_and_umlauts() -> None:
    m = _matcher(PatientName="Müller^José")
    for spelling in ("MUELLER_JOSE", "jose muller", "Müller-José", "MÜLLER", "Jose", "JMueller"):
        assert redact(f"{spelling}/a.dcm", m) == f"{REDACTED}/a.dcm", spelling
    assert redact("Jos/Mull/a.dcm", m) == "Jos/Mull/a.dcm"


def test_ideographic_and_phonetic_groups() -> None:
    m = _matcher(PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう")
    for spelling in ("山田太郎", "太郎_山田", "TAROU YAMADA", "やまだ たろう"):
        assert redact(f"{spelling}/a.dcm", m) == f"{REDACTED}/a.dcm", spelling


def test_short_name_words_count_only_inside_a_full_name() -> None:
    m = _matcher(PatientName="Li^Wu")
    path = "li/x/wu/x/LI_WU/x/wu-li/a.dcm"
    assert redact(path, m) == f"li/x/wu/x/{REDACTED}/x/{REDACTED}/a.dcm"


def test_ids_with_several_digit_runs_and_small_numbers() -> None:
    m = _matcher(PatientID="AB12-34", OtherPatientIDs=["7"])
    assert redact("ab1234/AB-12-34/12/34/7/a.dcm", m) == (
        f"{REDACTED}/{REDACTED}/12/34/7/a.dcm"
    )  # one run of digits only: "12" alone is not the ID, "7" is too small to search


def test_study_date_only_when_configured() -> None:
    ds = Dataset()
    ds.StudyDate = "20070404"
    plain, with_date = Identifiers(), Identifiers(study_date=True)
    plain.learn(ds)
    with_date.learn(ds)
    assert redact("04-04-2007-NA-Chest/a.dcm", plain.matcher()) == "04-04-2007-NA-Chest/a.dcm"
    assert redact("04-04-2007-NA-Chest/a.dcm", with_date.matcher()) == f"{REDACTED}/a.dcm"


def test_all_identifying_tags_and_sequences_are_learned() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^Jane^^Dr"
    ds.OtherPatientNames = ["Roe^Richard", "Smith"]
    item = Dataset()
    item.PatientID = "MRN-9981"
    ds.OtherPatientIDsSequence = DicomSequence([item])
    ds.InstitutionName = "St Elsewhere"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.SeriesDescription = "Chest 5mm"  # not an identifying tag: not learned
    learned = Identifiers()
    learned.learn(ds)
    m = learned.matcher()
    for spelling in ("richard roe", "SMITH", "mrn9981", "9981", "st_elsewhere", "Gregory House"):
        assert redact(f"{spelling}/a.dcm", m) == f"{REDACTED}/a.dcm", spelling
    assert redact("Chest 5mm/Dr/a.dcm", m) == "Chest 5mm/Dr/a.dcm"  # prefix "Dr" names no one
    assert learned.headers_read == 1


def test_free_text_is_redacted_word_by_word() -> None:
    text = "cannot read 'Doe, Jane/IM1.dcm' of PX0042 (born 17.03.1948), series_2 ok"
    assert redact(text, DOE, TEXT_UNITS) == (
        f"cannot read '{REDACTED}, {REDACTED}/IM1.dcm' of {REDACTED} (born {REDACTED}), series_2 ok"
    )


def test_only_known_extensions_survive() -> None:
    assert redact("DOE_JANE.dcm/jane.DoeJane/DOE.JANE.PNG", DOE) == (
        f"{REDACTED}.dcm/{REDACTED}/{REDACTED}.png"
    )


def test_identifiers_never_show_or_travel() -> None:
    learned = Identifiers()
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    learned.learn(ds)
    assert "doe" not in repr(learned).lower() and "doe" not in repr(learned.matcher()).lower()
    for obj in (learned, learned.matcher()):
        with pytest.raises(TypeError, match="never pickled"):
            pickle.dumps(obj)
    assert not Matcher() and redact("Doe/IM1.dcm", Matcher()) == "Doe/IM1.dcm"


# --- through plan_upload ---------------------------------------------------------------


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
        f"{REDACTED}/series1/IM{i}.dcm" for i in (2, 3, 1, 4)
    ]
    assert sorted(k.source for k in plan.skipped) == [
        f"{REDACTED}/notes.txt",
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


def test_an_unknown_extension_is_not_quoted(tmp_path: Path) -> None:
    path = tmp_path / "notes.bin"
    path.write_text("not an image " * 20)
    with pytest.raises(InvalidUpload, match=r"^the file is not a DICOM"):
        inspect_upload(path, "scan.DoeJane", SETTINGS.limits)
    with pytest.raises(InvalidUpload, match=r"^the \.txt file is not a DICOM"):
        inspect_upload(path, "DoeJane.txt", SETTINGS.limits)
