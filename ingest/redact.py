"""Patient identifiers out of member paths, because PACS exports name folders after the patient.

A zip member path becomes ``SliceSource.source`` / ``Skipped.source``, which the
worker stores and the API shows. Exports often write ``DOE^JOHN/...`` or
``<PatientID>/...``, so a path can name the patient even though no identifying
header field ever leaves ingest. While an upload is planned, the values of
:data:`IDENTIFYING_TAGS` are collected from every DICOM header read, and each
``source`` has them replaced (any case) by :data:`REDACTED` before the plan is
returned. The values live only in a local set during planning: they are never
logged, never put on a header or on the plan, and the set is emptied after use.

Only DICOM headers supply values: a zip of PNG/JPEG files named after the patient
cannot be redacted (nothing says which part of the path is a name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

REDACTED = "[redacted]"

IDENTIFYING_TAGS: tuple[str, ...] = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate",
    "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "AccessionNumber",
    "ReferringPhysicianName", "PerformingPhysicianName", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "RequestingPhysician", "OperatorsName",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
)  # fmt: skip
"""Header fields whose values a PACS or a person may put in an export's folder names.

The patient (names, IDs, birth date, contact data), the order (AccessionNumber
links the study to the hospital's RIS), the people who saw the patient and the
institution: the direct identifiers of the DICOM PS3.15 confidentiality profile
that are plain text. UIDs and dates of the study are left alone (they identify
no person and appear in every export path).
"""

MIN_LENGTH = 3
"""Shorter values are not searched for: "1" or "AB" identify no one, and would
turn every path that happens to contain them into ``[redacted]``."""

# Person names (VR PN) are ``family^given^middle^prefix^suffix``, optionally with
# ``=`` ideographic/phonetic groups; folders often hold just one component.
_NAME_PARTS = re.compile(r"[\^=\s]+")


def identifying_values(ds: Dataset) -> set[str]:
    """Values of :data:`IDENTIFYING_TAGS` in ``ds``, plus person-name components."""
    found: set[str] = set()
    for keyword in IDENTIFYING_TAGS:
        if keyword not in ds:
            continue
        person = dictionary_VR(keyword) == "PN"
        for item in _items(_value(ds, keyword)):
            if isinstance(item, Dataset):
                found |= identifying_values(item)
            else:
                found |= _variants(str(item), person=person)
    return found


def redactor(values: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces every occurrence of ``values`` (any case) by REDACTED.

    Longest values first, so ``DOE^JOHN`` becomes one ``[redacted]``, not two.
    """
    ordered = sorted({v for v in values if len(v) >= MIN_LENGTH}, key=len, reverse=True)
    if not ordered:
        return lambda text: text
    pattern = re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE)
    return lambda text: pattern.sub(REDACTED, text)


def _variants(text: str, *, person: bool) -> set[str]:
    """The value itself and, for a person name, each name component."""
    text = text.strip(" ^=\x00")
    found = {text} if len(text) >= MIN_LENGTH else set()
    if person:
        found |= {p for p in _NAME_PARTS.split(text) if len(p) >= MIN_LENGTH}
    return found


def _value(ds: Dataset, keyword: str) -> Any:
    """The element's value; its raw bytes if it does not decode (bad character set).

    A malformed identifier must neither skip a good slice nor escape redaction.
    """
    try:
        return ds[keyword].value
    except Exception:  # any pydicom conversion failure on untrusted bytes
        raw = ds.get_item(keyword)
        data = getattr(raw, "value", None)
        return data.decode("latin-1").split("\\") if isinstance(data, bytes) else None


def _items(value: Any) -> Iterator[Any]:
    """Single values, multi-values and sequence items alike, skipping empty ones."""
    if value is None or value == "":
        return
    # PersonName iterates over its characters, and str/bytes too: they are one value.
    if isinstance(value, str | bytes | PersonName | Dataset) or not hasattr(value, "__iter__"):
        yield value.decode(errors="ignore") if isinstance(value, bytes) else value
        return
    for item in value:
        yield from _items(item)
