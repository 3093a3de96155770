"""Reading untrusted uploads: archive safety, image and DICOM decoding, series order.

TensorFlow-free (the web API imports it). See ``ingest/README.md`` and the Ingest
contract in ``docs/architecture.md``.
"""

from ingest.archive import Skipped
from ingest.errors import InvalidUpload, SliceError
from ingest.plan import SeriesInfo, SliceSource, UploadPlan
from ingest.upload import inspect_upload, plan_upload, upload_input_name

__all__ = [
    "InvalidUpload",
    "SeriesInfo",
    "Skipped",
    "SliceError",
    "SliceSource",
    "UploadPlan",
    "inspect_upload",
    "plan_upload",
    "upload_input_name",
]
