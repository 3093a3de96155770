"""The result as a DICOM Comprehensive 3D SR, template TID 1500 (highdicom).

One measurement report per job, a new series in the received study:

* a study group (TID 1501, tracking identifier ``study``): the verdict as the
  group's Finding, coded normal SCT 17621005, benign SCT 30807003, malignant
  SCT 21594007; ``inconclusive`` (out of distribution, see worker/summary.py) is
  coded SCT 373068000 "Undetermined", never as a class. The class probabilities
  are measurements (UCUM ``1``), and the top slices are its source images;
* one group per classified series: its verdict, probabilities, an
  "Out of distribution" evaluation (SCT Yes/No) when the model has a detector,
  and its top slices;
* every source instance in the evidence sequence; the algorithm's name and
  version in each group and in Contributing Equipment; VerificationFlag
  UNVERIFIED; Content Qualification RESEARCH.

Fresh Series and SOP Instance UIDs for every result version (a PACS ignores a
SOP Instance UID it already holds). The SR built here carries no patient
identifiers (evidence datasets hold only UIDs); :func:`with_patient` adds the
study's own patient module at send time, from a received header.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

MANUFACTURER = "lungct (research use only)"
SCHEME = "99LUNGCT"
"""Private coding scheme for what no standard code names (class probabilities, OOD)."""

VERDICT_CODES = {
    "normal": CodedConcept("17621005", "SCT", "Normal"),
    "benign": CodedConcept("30807003", "SCT", "Benign"),
    "malignant": CodedConcept("21594007", "SCT", "Malignant"),
}
UNDETERMINED = CodedConcept("373068000", "SCT", "Undetermined")
YES = CodedConcept("373066001", "SCT", "Yes")
NO = CodedConcept("373067005", "SCT", "No")
OOD = CodedConcept("ood", SCHEME, "Out of distribution")
UNIT = CodedConcept("1", "UCUM", "no units")
PROCEDURE = CodedConcept("169069000", "SCT", "Computed tomography of chest")
PATIENT_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "OtherPatientIDsSequence", "PatientAge", "StudyDate", "StudyTime", "AccessionNumber",
    "ReferringPhysicianName", "StudyID",
)  # fmt: skip
"""Patient and study module attributes copied from a received header at send time."""
EMPTY_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "ReferringPhysicianName", "StudyID",
)  # fmt: skip
"""Type 2 attributes highdicom copies from the evidence: empty in the SR we build."""


@dataclass(frozen=True)
class SourceImage:
    """A received instance the SR refers to (no patient data)."""

    sop_uid: str
    sop_class: str
    series_uid: str
    instance_number: int | None


@dataclass(frozen=True)
class Algorithm:
    name: str
    version: str


def verdict_code(summary: Mapping[str, Any]) -> CodedConcept:
    """The coded study verdict: ``summary["verdict"]`` when present, else the label."""
    return code_for(summary.get("verdict") or summary.get("label"))


def code_for(verdict: str | None) -> CodedConcept:
    """A class name as SNOMED CT; ``inconclusive`` and unknown names: Undetermined."""
    return VERDICT_CODES.get(str(verdict or "").lower(), UNDETERMINED)


def build_sr(
    summary: Mapping[str, Any],
    study_uid: str,
    sources: Sequence[SourceImage],
    algorithm: Algorithm,
    version: int,
) -> Dataset:
    """The SR of one result version (no patient identifiers)."""
    by_instance = {(s.series_uid, s.instance_number): s for s in sources}
    algo = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
    groups = [_group("study", summary, algo, by_instance)]
    groups += [
        _group(f"series {item.get('series_uid')}", item, algo, by_instance)
        for item in summary.get("series") or []
        if item.get("series_uid")
    ]
    observer = hd.sr.ObserverContext(
        observer_type=CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=algorithm.name, model_name=algorithm.version
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=CodedConcept("109102", "DCM", "Processing Equipment"),
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[_evidence(study_uid, s) for s in sources],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=9900 + version,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_verified=False,
        contributing_equipment=[equipment],
        series_description=f"AI lung CT result v{version} (research use, not for diagnosis)",
        content_qualification="RESEARCH",
    )


def _group(
    identifier: str,
    result: Mapping[str, Any],
    algo: hd.sr.AlgorithmIdentification,
    by_instance: Mapping[tuple[str, int | None], SourceImage],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One TID 1501 group: the verdict, the probabilities, OOD, the top slices."""
    measurements = [
        hd.sr.Measurement(
            name=CodedConcept(f"p-{name}"[:16], SCHEME, f"Probability of {name}"),
            value=float(p),
            unit=UNIT,
            algorithm_id=algo,
        )
        for name, p in sorted((result.get("probabilities") or {}).items())
    ]
    evaluations = []
    if result.get("out_of_distribution") is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(OOD, YES if result["out_of_distribution"] else NO)
        )
    top = list(_top_images(result.get("top_slices") or [], by_instance))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=identifier),
        finding_type=verdict_code(result),
        algorithm_id=algo,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=top or None,
    )


def _top_images(
    top: Iterable[Mapping[str, Any]], by_instance: Mapping[tuple[str, int | None], SourceImage]
) -> Iterable[hd.sr.SourceImageForMeasurementGroup]:
    seen: set[str] = set()
    for item in top:
        source = by_instance.get((str(item.get("series_uid")), item.get("instance_number")))
        if source is not None and source.sop_uid not in seen:
            seen.add(source.sop_uid)
            yield hd.sr.SourceImageForMeasurementGroup(source.sop_class, source.sop_uid)


def _evidence(study_uid: str, source: SourceImage) -> Dataset:
    """A stand-in for a source instance: its UIDs and empty patient module attributes."""
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = source.series_uid
    ds.SOPInstanceUID = source.sop_uid
    ds.SOPClassUID = source.sop_class
    for keyword in EMPTY_TYPE2:
        setattr(ds, keyword, "")
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """The SR as a Part 10 file."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_patient(sr: bytes, header: bytes | None) -> Dataset:
    """The SR with the study's patient and study modules, copied from a received header."""
    ds = dcmread(io.BytesIO(sr))
    if header is not None:
        source = dcmread(io.BytesIO(header), stop_before_pixels=True)
        for keyword in PATIENT_KEYWORDS:
            if keyword in source:
                ds[keyword] = source[keyword]
    return ds
