"""STORE_SOURCE_PATHS modes and the one scrubber a plan carries (ingest/privacy.py)."""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import replace
from pathlib import Path

import pytest

from config.settings import Settings
from ingest import InvalidUpload, SliceError, plan_upload
from ingest.privacy import SourcePaths, choose_mode
from ingest.redact import REDACTED
from tests.fixtures_dicom import ct_slice, image_bytes, series, to_bytes, write_zip

FOLDER = "Doe, Jane"  # the fixtures' PatientName is Doe^Jane
NONE = re.compile(r"#\d+(\.[a-z]+)?")
log = logging.getLogger("tests.privacy")


def _dicom_zip(tmp_path: Path) -> Path:
    members = [(f"{FOLDER}/s2/IM{ds.InstanceNumber}.dcm", to_bytes(ds)) for ds in _series()]
    members += [(f"{FOLDER}/notes.txt", b"x"), (f"{FOLDER}/preview.png", image_bytes())]
    return write_zip(tmp_path / "up.zip", members)


def _series() -> list:
    return series("1.2.3.4.2", [0.0, 5.0, 10.0])


def _images_zip(tmp_path: Path) -> Path:
    names = [f"{FOLDER}/slice_{i}.png" for i in (1, 2, 3)]
    return write_zip(tmp_path / "img.zip", [(n, image_bytes()) for n in names])


def test_none_keeps_no_member_path(tmp_path: Path) -> None:
    plan = plan_upload(_dicom_zip(tmp_path), Settings(store_source_paths="none"))
    assert [s.source for s in plan.slices] == ["#1.dcm", "#2.dcm", "#3.dcm"]
    assert [(s.series_uid, s.instance_number) for s in plan.slices] == [
        ("1.2.3.4.2", 1),
        ("1.2.3.4.2", 2),
        ("1.2.3.4.2", 3),
    ]  # a DICOM slice is identified by series UID and instance number
    assert sorted(k.source for k in plan.skipped) == ["#4.txt", "#5.png"]
    assert all(NONE.fullmatch(s) for s in [s.source for s in plan.slices])
    assert plan.slices[0].load().shape == (16, 16)


def test_full_keeps_paths_as_given(tmp_path: Path) -> None:
    plan = plan_upload(_dicom_zip(tmp_path), Settings(store_source_paths="full"))
    assert plan.slices[0].source == f"{FOLDER}/s2/IM1.dcm"
    assert plan.scrub(f"{FOLDER} failed") == f"{FOLDER} failed"


def test_redacted_is_the_default_for_dicom(tmp_path: Path) -> None:
    plan = plan_upload(_dicom_zip(tmp_path), Settings())
    assert plan.slices[0].source == f"{REDACTED}/s2/IM1.dcm"
    assert sorted(k.source for k in plan.skipped) == [
        f"{REDACTED}/notes.txt",
        f"{REDACTED}/preview.png",
    ]


def test_image_only_archives_default_to_none(tmp_path: Path) -> None:
    plan = plan_upload(_images_zip(tmp_path), Settings())
    assert [s.source for s in plan.slices] == ["#1.png", "#2.png", "#3.png"]
    configured = plan_upload(_images_zip(tmp_path), Settings(store_source_paths="redacted"))
    assert configured.slices[0].source == f"{FOLDER}/slice_1.png"  # no header: nothing known


def test_choose_mode() -> None:
    assert choose_mode(None, archive=True, headers_read=0) is SourcePaths.NONE
    assert choose_mode(None, archive=True, headers_read=3) is SourcePaths.REDACTED
    assert choose_mode(None, archive=False, headers_read=0) is SourcePaths.REDACTED
    assert choose_mode("full", archive=True, headers_read=0) is SourcePaths.FULL


def test_single_upload_keeps_its_stored_name(tmp_path: Path) -> None:
    path = tmp_path / "upload.png"
    path.write_bytes(image_bytes())
    assert plan_upload(path, Settings()).slices[0].source == "upload.png"
    assert plan_upload(path, Settings(store_source_paths="none")).slices[0].source == "#1.png"


def test_plan_scrub_replaces_member_names_quoted_in_messages(tmp_path: Path) -> None:
    plan = plan_upload(_images_zip(tmp_path), Settings())
    message = f"There is no item named '{FOLDER}/slice_2.png' in the archive"
    assert plan.scrub(message) == "There is no item named '#2.png' in the archive"


def _odd_modality(tmp_path: Path, *, with_ct: bool) -> Path:
    odd = ct_slice(series_uid="1.2.3.4.7", instance=1, z=0.0, modality="DOE_JANE")
    members = [("a/odd.dcm", to_bytes(odd))]
    if with_ct:
        ds = ct_slice(series_uid="1.2.3.4.2", instance=1, z=0.0)
        ds.SeriesDescription = "Chest of Jane Doe"
        members.append(("a/ct.dcm", to_bytes(ds)))
    return write_zip(tmp_path / "odd.zip", members)


def test_reasons_notes_and_descriptions_are_scrubbed(tmp_path: Path) -> None:
    plan = plan_upload(_odd_modality(tmp_path, with_ct=True), Settings())
    text = repr(plan.skipped) + repr(plan.series)
    assert "doe" not in text.lower() and "jane" not in text.lower()
    assert "modality [redacted] is not one of the allowed" in plan.skipped[0].reason
    assert {i.description for i in plan.series} == {
        f"synthetic {REDACTED}",  # the fixtures describe a series by its modality
        f"Chest of {REDACTED} {REDACTED}",
    }


def test_invalid_upload_message_is_scrubbed(tmp_path: Path) -> None:
    with pytest.raises(InvalidUpload, match="no decodable slices") as info:
        plan_upload(_odd_modality(tmp_path, with_ct=False), Settings())
    assert "DOE" not in str(info.value) and REDACTED in str(info.value)


def test_slice_errors_are_scrubbed(tmp_path: Path) -> None:
    plan = plan_upload(_dicom_zip(tmp_path), Settings())

    def boom(_frame: int | None) -> None:
        raise ValueError(f"cannot read {FOLDER}/s2/IM1.dcm of Jane Doe")

    broken = replace(plan.slices[0], reader=boom)
    with pytest.raises(SliceError) as info:
        broken.load()
    stored = f"{REDACTED}/s2/IM1.dcm"  # the member's stored name, then the words
    assert str(info.value) == f"cannot decode slice: cannot read {stored} of {REDACTED} {REDACTED}"


def test_log_records_are_scrubbed_while_a_plan_is_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.privacy")
    roe = ct_slice(series_uid="1.2.3.4.2", instance=1, z=0.0)
    roe.PatientName = "Roe^Richard"  # known to this plan only
    path = write_zip(tmp_path / "roe.zip", [("Richard Roe/1.dcm", to_bytes(roe))])
    with plan_upload(path, Settings()):
        log.warning("reading %s and %s", "Richard Roe/1.dcm", "RICHARD_ROE")
    assert caplog.messages == [f"reading {REDACTED}/1.dcm and {REDACTED}"]
    caplog.clear()
    log.warning("plain %s", "Roe")  # that plan is closed: its scrubber is no longer used
    assert caplog.messages == ["plain Roe"]


def test_an_exception_that_left_a_plan_is_scrubbed_when_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.privacy")
    try:
        with plan_upload(_dicom_zip(tmp_path), Settings()):
            raise RuntimeError(f"failed on {FOLDER}/s2/IM1.dcm")
    except RuntimeError:
        log.exception("job failed")  # as worker/tasks.py does, after the plan is closed
    assert f"RuntimeError: failed on {REDACTED}/s2/IM1.dcm" in caplog.text
    assert "Doe, Jane/" not in caplog.text


def test_a_tagged_exception_is_scrubbed_and_still_pickles(tmp_path: Path) -> None:
    with pytest.raises(KeyError) as info, plan_upload(_dicom_zip(tmp_path), Settings()):
        raise KeyError(f"There is no item named '{FOLDER}/s2/IM1.dcm' in the archive")
    assert str(info.value) == f"\"There is no item named '{REDACTED}/s2/IM1.dcm' in the archive\""
    copy = pickle.loads(pickle.dumps(info.value))  # as billiard sends it to the parent
    assert copy.args == info.value.args


def test_the_scrubber_never_shows_or_travels(tmp_path: Path) -> None:
    plan = plan_upload(_dicom_zip(tmp_path), Settings())
    assert repr(plan.scrubber) == "Scrubber(mode='redacted')"
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(plan.scrubber)


def test_store_source_paths_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORE_SOURCE_PATHS", "None")
    monkeypatch.setenv("REDACT_STUDY_DATE", "yes")
    settings = Settings()
    assert settings.store_source_paths == "none" and settings.redact_study_date
    monkeypatch.setenv("STORE_SOURCE_PATHS", "")
    assert Settings().store_source_paths is None
    with pytest.raises(ValueError, match="store_source_paths"):
        Settings(store_source_paths="hidden")


# --- issue 21, item 8: control and bidi characters never stored ---------------------------

CONTROL_NAMES = ["a\rb.png", "a\nb.png", "esc\x1b[31m.png", "scan\u202egnp.png", "tab\tx.png"]


@pytest.mark.parametrize("mode", ["full", "redacted"])
def test_control_characters_in_member_names_are_replaced(tmp_path: Path, mode: str) -> None:
    members = [(f"study/{name}", image_bytes()) for name in CONTROL_NAMES]
    members.append(("study/notes\u202etxt.exe", b"x"))  # skipped: its name is shown too
    plan = plan_upload(write_zip(tmp_path / "c.zip", members), Settings(store_source_paths=mode))
    shown = [s.source for s in plan.slices] + [k.source for k in plan.skipped]
    assert len(plan.slices) == len(CONTROL_NAMES)
    for name in shown:
        assert name.isprintable(), repr(name)
    assert "study/scan\ufffdgnp.png" in shown
    assert "study/esc\ufffd[31m.png" in shown
