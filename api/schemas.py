"""Request and response schemas; they document the v1 contract in /openapi.json."""

from __future__ import annotations

import dataclasses
from typing import Any

from apiflask import Schema
from apiflask.fields import (
    AwareDateTime,
    Boolean,
    Dict,
    File,
    Float,
    Integer,
    List,
    Nested,
    String,
)
from apiflask.validators import Length, OneOf, Range

from db.models import JobKind, JobStatus
from db.records import SliceResult

JOB_STATUSES = [str(s) for s in JobStatus]
JOB_KINDS = [str(k) for k in JobKind]
MAX_OFFSET = 2**31 - 1
MAX_LISTED_IDS = 100
MAX_WAIT_S = 60

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "integer", "description": "the HTTP status code"},
                "message": {"type": "string", "description": "what went wrong, for people"},
                "detail": {
                    "type": "object",
                    "description": "validation problems by location and field, when any",
                },
            },
        }
    },
}
"""The body of every error answer (api/app.py); documented as such in /openapi.json."""


class JobIn(Schema):
    file = File(
        required=True,
        metadata={"description": "A .png/.jpg/.jpeg image, a DICOM file, or a .zip study archive"},
    )
    model = String(
        validate=Length(max=128),
        metadata={"description": "Model name (GET /api/v1/models); default model if absent"},
    )


class BatchIn(Schema):
    file = List(
        File(),
        required=True,
        validate=Length(min=1),
        metadata={
            "description": "Repeated: each a .png/.jpg/.jpeg image, a DICOM file or a .zip study "
            "archive, and each its own job (at most BATCH_MAX_FILES)"
        },
    )
    model = String(
        validate=Length(max=128),
        metadata={"description": "Model name for every file; default model if absent"},
    )
    idempotency_key = List(
        String(),
        metadata={
            "description": "Repeated, one per file in the files' order (empty: none for that "
            "file); each works as the Idempotency-Key header of POST /api/v1/jobs"
        },
    )


class ModelRef(Schema):
    name = String()
    version = String()


class Progress(Schema):
    done = Integer()
    total = Integer()


class SliceRef(Schema):
    """Where a slice is: its index in the job, its source and its DICOM position."""

    slice_index = Integer()
    source = String()
    series_uid = String(allow_none=True)
    instance_number = Integer(allow_none=True)
    slice_position = Float(allow_none=True)


class TopSlice(SliceRef):
    label = String(allow_none=True, metadata={"description": "the slice's own label"})
    probability = Float(metadata={"description": "probability of top_class (the most severe)"})
    heatmap = Boolean(metadata={"description": "a heat map is stored for this slice"})


class Evidence(Schema):
    """The verdict rule's numbers (docs/review.md, "The verdict")."""

    readable_slices = Integer()
    needed_slices = Integer(metadata={"description": "slices an abnormal class needs"})
    label_slices = Integer(metadata={"description": "slices labelled like the model output"})
    label_fraction = Float()


class SummaryGroup(Schema):
    """The verdict of the whole study, or of one series (docs/review.md, "The verdict")."""

    verdict = String(
        allow_none=True,
        metadata={"description": "a class, or 'inconclusive' when out of distribution"},
    )
    verdict_text = String(allow_none=True, metadata={"description": "the verdict and its numbers"})
    label = String(allow_none=True, metadata={"description": "the model output (rule applied)"})
    evidence = Nested(Evidence, allow_none=True)
    top_class = String(allow_none=True, metadata={"description": "the class ranking top_slices"})
    probabilities = Dict(keys=String(), values=Float(), allow_none=True)
    slice_counts = Dict(keys=String(), values=Integer())
    slices_predicted = Integer()
    slices_failed = Integer()
    top_slices = List(Nested(TopSlice))
    out_of_distribution = Boolean(
        allow_none=True,
        metadata={"description": "the model has not seen data like this: do not trust the label"},
    )
    ood_fraction = Float(
        allow_none=True, metadata={"description": "share of readable slices flagged"}
    )
    ood_warning = String(allow_none=True, metadata={"description": "says why, when flagged"})


class SeriesSummary(SummaryGroup):
    series_uid = String(allow_none=True)
    series_description = String(allow_none=True, metadata={"description": "SeriesDescription"})
    series_number = Integer(allow_none=True, metadata={"description": "SeriesNumber"})


class Summary(SummaryGroup):
    series = List(Nested(SeriesSummary))
    heatmaps = List(Integer(), metadata={"description": "slice indexes with a heat map"})
    skipped_files = Integer()
    rule = String()
    ood_rule = String(allow_none=True)
    disclaimer = String()


class ExportOut(Schema):
    """One outbox entry of a DICOM job's SR (docs/dicom.md, "Sending")."""

    destination = String()
    status = String(metadata={"enum": ["pending", "sending", "delivered", "failed"]})
    attempts = Integer()
    last_error = String(allow_none=True)


class ExportQueued(ExportOut):
    """The answer of POST /api/v1/jobs/<id>/export: the new outbox entry."""


class ExportIn(Schema):
    destination = String(
        required=True,
        validate=Length(min=1, max=64),
        metadata={"description": "a name from DICOM_DESTINATIONS"},
    )


class DicomPeer(Schema):
    name = String()
    ae_title = String()
    host = String()
    port = Integer()
    echo = Boolean(metadata={"description": "whether it answered C-ECHO just now"})
    detail = String()


class DicomStatusOut(Schema):
    node = Nested(DicomPeer)
    destinations = List(Nested(DicomPeer))


class JobOut(Schema):
    id = String()
    status = String(metadata={"enum": JOB_STATUSES})
    kind = String(metadata={"enum": JOB_KINDS})
    owner = String()
    model = Nested(ModelRef)
    progress = Nested(Progress)
    cancel_requested = Boolean()
    attempts = Integer()
    created_at = String()
    started_at = String(allow_none=True)
    finished_at = String(allow_none=True)
    updated_at = String()
    error = String(allow_none=True)
    warnings_count = Integer()
    warnings = List(Dict())
    input_name = String(
        allow_none=True,
        metadata={"description": "The upload's name as sent, if STORE_SOURCE_PATHS allows it"},
    )
    summary = Nested(
        Summary, allow_none=True, metadata={"description": "Study result once succeeded"}
    )
    # DICOM node (docs/dicom.md): the SR's exports, one per destination
    exports = List(Nested(ExportOut))
    links = Dict()


class CancelOut(JobOut):
    pass


class ItemError(Schema):
    message = String()


class BatchItem(Schema):
    index = Integer(metadata={"description": "the file's position in the request, from 0"})
    status = Integer(
        metadata={
            "description": "202 created, 200 replayed (same key and bytes), or the refusal: "
            "400 unreadable, 422 key reused for other bytes, 429 cap, 503 queue down"
        }
    )
    job = Nested(JobOut, metadata={"description": "the job (202 and 200)"})
    error = Nested(ItemError, metadata={"description": "why the file was refused"})


class BatchOut(Schema):
    items = List(Nested(BatchItem), metadata={"description": "one per file, in order"})


class Page(Schema):
    offset = Integer(load_default=0, validate=Range(min=0, max=MAX_OFFSET))
    limit = Integer(load_default=None, validate=Range(min=1, max=1000))


class ResultsQuery(Page):
    pass


def _wait(until: str) -> Float:
    """A long poll's ``wait`` parameter (0-60 s), held until ``until``."""
    return Float(
        load_default=0.0,
        validate=Range(min=0, max=MAX_WAIT_S),
        metadata={
            "description": f"Seconds to hold the answer until {until} (long poll); "
            "capped at JOB_WAIT_MAX_S. 0 (default): answer at once."
        },
    )


class JobWaitQuery(Schema):
    wait = _wait("the job has ended")


class JobListQuery(Page):
    id = List(
        String(validate=Length(max=64)),
        validate=Length(max=MAX_LISTED_IDS),
        metadata={"description": f"Only these jobs (repeated; at most {MAX_LISTED_IDS})"},
    )
    wait = _wait("one of the jobs named by id has ended (only with id)")
    status = String(validate=OneOf(JOB_STATUSES))
    model = String(validate=Length(max=128))
    verdict = String(
        validate=Length(max=64),
        metadata={"description": "Only jobs with this study verdict (a class, or inconclusive)"},
    )
    ood = Boolean(
        metadata={
            "description": "Only jobs whose study is (true) or is not (false) out of distribution"
        }
    )
    q = String(
        validate=Length(min=1, max=255),
        metadata={"description": "Only jobs whose input name contains this (case-insensitive)"},
    )
    since = AwareDateTime(
        default_timezone=None,
        metadata={"description": "Only jobs created at or after this ISO 8601 time (with zone)"},
    )


class JobList(Schema):
    items = List(Nested(JobOut))
    next = String(allow_none=True)


def _slice_field(f: dataclasses.Field[Any]) -> Any:
    """The marshmallow field of one SliceResult field (db/records.py), by its type."""
    kinds = {"int": Integer, "str": String, "float": Float, "bool": Boolean}
    text = str(f.type)
    optional = text.endswith(" | None")
    base = text.removesuffix(" | None")
    meta = dict(f.metadata)
    if base.startswith("dict["):
        return Dict(keys=String(), values=Float(), allow_none=optional, metadata=meta)
    return kinds[base](allow_none=optional, required=not optional, metadata=meta)


SliceOut = Schema.from_dict(
    {f.name: _slice_field(f) for f in dataclasses.fields(SliceResult)}, name="SliceOut"
)
"""One slice's result: generated from db/records.py, the one definition of it."""

JobSliceOut = Schema.from_dict(
    {"job_id": String(required=True)}
    | {f.name: _slice_field(f) for f in dataclasses.fields(SliceResult)},
    name="JobSliceOut",
)
"""One slice's result with the job it belongs to (GET /api/v1/results)."""


class ResultsOut(Schema):
    items = List(Nested(SliceOut))
    total = Integer()
    next = String(allow_none=True)


class ManyResultsQuery(Page):
    job = List(
        String(validate=Length(max=64)),
        required=True,
        validate=Length(min=1, max=MAX_LISTED_IDS),
        metadata={"description": f"A job ID (repeated; at most {MAX_LISTED_IDS})"},
    )


class ManyResultsOut(Schema):
    items = List(Nested(JobSliceOut), metadata={"description": "by job ID, then slice order"})
    next = String(allow_none=True)


class ModelOut(Schema):
    name = String()
    version = String()
    architecture = String(allow_none=True)
    classes = List(String())
    severity = List(String(), metadata={"description": "Classes from least to most severe"})
    input = Dict(metadata={"description": "height, width, channels"})
    metrics = Dict(metadata={"description": "Test-split accuracy, macro_f1 and the split method"})
    intended_use = String(allow_none=True)
    default = Boolean()
    card_url = String(metadata={"description": "the model card, readable without a key"})


class ModelsOut(Schema):
    items = List(Nested(ModelOut))
    default = String()


class AuditEventOut(Schema):
    at = String()
    owner = String()
    action = String()
    job_id = String(allow_none=True)


class AuditOut(Schema):
    items = List(Nested(AuditEventOut))
    next = String(allow_none=True)
