"""Database rows -> JSON-ready dicts for the v1 API.

Text that came from an upload (member names, messages quoting them) is shown
without control or bidirectional characters (ingest/visible.py), whatever was
stored before that rule existed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import url_for
from sqlalchemy import inspect

from db.models import Job, SlicePrediction, as_utc
from db.records import SliceResult
from ingest.visible import visible, visible_json


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands back naive datetimes, which are stored in UTC."""
    return None if value is None else as_utc(value).isoformat()


def job_to_dict(job: Job) -> dict[str, Any]:
    """The job as clients poll it."""
    return {
        "id": job.id,
        "status": job.status,
        "kind": job.kind,
        "owner": job.owner,
        "model": {"name": job.model_name, "version": job.model_version},
        "progress": {"done": job.done, "total": job.total},
        "cancel_requested": bool(job.cancel_requested),
        "attempts": job.attempts,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "updated_at": iso(job.updated_at),
        "error": visible(job.error) if job.error else job.error,
        "warnings_count": len(job.warnings or []) + job.failed_slices,
        "warnings": visible_json(job.warnings or []),
        "input_name": visible(job.input_name) if job.input_name else None,
        "summary": visible_json(job.summary),
        "exports": exports(job),  # DICOM node (dicomnet/): the SR's outbox entries
        "links": {
            "self": url_for("jobs.get_job", job_id=job.id),
            "results": url_for("jobs.get_results", job_id=job.id),
        },
    }


def exports(job: Job) -> list[dict[str, Any]]:
    """Where a DICOM job's SR goes, and how that went; [] for other jobs.

    Loaded on first use; a job already detached from its session without them
    loaded (just submitted over HTTP) has none yet.
    """
    if "dicom_exports" in inspect(job).unloaded and inspect(job).session is None:
        return []
    return [
        {
            "destination": e.destination,
            "status": e.status,
            "attempts": e.attempts,
            "last_error": e.last_error,
        }
        for e in job.dicom_exports
    ]


def prediction_to_dict(p: SlicePrediction) -> dict[str, Any]:
    """One slice's result (or its error), as db/records.py defines it; names shown safely."""
    out = SliceResult.of(p).to_dict()
    for name in ("source", "error"):
        if out[name]:
            out[name] = visible(out[name])
    return out
