"""Request and response schemas; they document the v1 contract in /openapi.json."""

from __future__ import annotations

from apiflask import Schema
from apiflask.fields import Boolean, Dict, File, Float, Integer, List, Nested, Raw, String
from apiflask.validators import Range


class JobIn(Schema):
    file = File(
        metadata={"description": "A .png/.jpg/.jpeg image, a DICOM file, or a .zip study archive"}
    )
    model = String(
        metadata={"description": "Model name (GET /api/v1/models); default model if absent"}
    )


class ModelRef(Schema):
    name = String()
    version = String()


class Progress(Schema):
    done = Integer()
    total = Integer()


class JobOut(Schema):
    id = String()
    status = String(metadata={"enum": ["queued", "running", "succeeded", "failed"]})
    kind = String(metadata={"enum": ["image", "study"]})
    model = Nested(ModelRef)
    progress = Nested(Progress)
    created_at = String()
    started_at = String(allow_none=True)
    finished_at = String(allow_none=True)
    updated_at = String()
    error = String(allow_none=True)
    warnings_count = Integer()
    warnings = List(Dict())
    summary = Raw(allow_none=True, metadata={"description": "Study result once succeeded"})
    links = Dict()


class ResultsQuery(Schema):
    offset = Integer(load_default=0, validate=Range(min=0))
    limit = Integer(load_default=None, validate=Range(min=1, max=1000))


class SliceOut(Schema):
    slice_index = Integer()
    source = String()
    series_uid = String(allow_none=True)
    instance_number = Integer(allow_none=True)
    slice_position = Float(allow_none=True)
    frame = Integer(allow_none=True)
    label = String(allow_none=True)
    probabilities = Dict(keys=String(), values=Float(), allow_none=True)
    ood_score = Float(
        allow_none=True,
        metadata={"description": "Distance from the training data (about 1 = typical)"},
    )
    out_of_distribution = Boolean(
        allow_none=True,
        metadata={"description": "ood_score above the model card's threshold, or input checks"},
    )
    error = String(allow_none=True)


class ResultsOut(Schema):
    items = List(Nested(SliceOut))
    total = Integer()
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


class ModelsOut(Schema):
    items = List(Nested(ModelOut))
    default = String()
