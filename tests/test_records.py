"""One slice record and one list of status names, and every copy checked against them."""

from __future__ import annotations

import dataclasses

from db.records import SLICE_FIELDS


def test_the_table_stores_exactly_a_slice_result() -> None:
    from db.models import SlicePrediction

    columns = [c.name for c in SlicePrediction.__table__.columns]
    # id, the job, and where the slice's image is stored (storage/packs.py): not its result
    assert [c for c in columns if c not in ("id", "job_id", "pack")] == list(SLICE_FIELDS)


def test_the_api_and_the_client_agree_with_openapi(app) -> None:  # type: ignore[no-untyped-def]
    """The client imports nothing of the service: its copies are checked here."""
    from client.api import SliceResult as ClientSlice
    from client.cli import JOB_STATUSES as CLIENT_STATUSES
    from db.models import JobStatus

    spec = app.test_client().get("/openapi.json").json["components"]["schemas"]
    assert list(spec["SliceOut"]["properties"]) == list(SLICE_FIELDS)
    client_fields = [f.name for f in dataclasses.fields(ClientSlice) if f.name != "raw"]
    assert sorted(client_fields) == sorted(SLICE_FIELDS)
    statuses = spec["JobOut"]["properties"]["status"]["enum"]
    assert statuses == [str(s) for s in JobStatus] == list(CLIENT_STATUSES)


def test_a_result_round_trips_through_its_row() -> None:
    from db.models import SlicePrediction
    from db.records import SliceResult

    result = SliceResult(3, "a.dcm", "1.2", 4, -12.5, None, "normal", {"normal": 1.0}, 0.9, False)
    row = SlicePrediction(**result.row("job", "packs/3-0123456789ab.pack"))
    assert SliceResult.of(row) == result and row.job_id == "job"
    assert row.pack == "packs/3-0123456789ab.pack" and "pack" not in result.to_dict()
