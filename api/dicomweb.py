"""STOW-RS: ``POST /dicomweb/studies`` feeds the same grouping as the DICOM listener.

The body is ``multipart/related; type="application/dicom"`` (PS3.18 10.5), one
Part 10 file per part; any valid API key may store, and the groups it opens
belong to the key's owner. Each part goes through
:func:`dicomnet.receive.store_instance` (stored and recorded before the answer),
grouped under this node's AE title, so a study may arrive partly over DIMSE and
partly over the web. The answer is the PS3.18 store response in
``application/dicom+json``: 200 all stored, 202 some refused, 409 none stored.
"""

from __future__ import annotations

from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from apiflask import APIBlueprint, abort
from flask import Response, json, request

from api import context
from api.auth import auth, caller
from dicomnet.receive import Outcome, store_instance

bp = APIBlueprint("dicomweb", __name__, url_prefix="/dicomweb", tag="DICOMweb")
STOW_CALLING_AE = "STOW-RS"
"""The calling AE title recorded for instances that came over STOW-RS."""
STOW_RESPONSES: dict[int | str, Any] = {
    200: {"description": "all stored", "content": {"application/dicom+json": {}}},
    202: {"description": "some refused (Failed SOP Sequence)"},
    400: {"description": "no application/dicom part"},
    401: {"description": "no valid API key"},
    409: {"description": "none stored"},
    415: {"description": "not multipart/related"},
}
# PS3.18 Table 10.5.3-1 / PS3.4 GG.4: why an instance failed
FAILURE_REASON = "00081197"


@bp.post("/studies")
@bp.auth_required(auth)
@bp.doc(
    summary="Store instances (STOW-RS)",
    description='multipart/related; type="application/dicom"; CT images only.',
    responses=STOW_RESPONSES,
)
def store_studies() -> Response:
    parts = _dicom_parts()
    settings = context.settings()
    owner = caller().owner
    outcomes = [
        store_instance(settings, settings.dicom_ae_title, STOW_CALLING_AE, data, owner=owner)
        for data in parts
    ]
    stored = [o for o in outcomes if o.ok]
    status = 200 if len(stored) == len(outcomes) else 202 if stored else 409
    body = json.dumps(_store_response(outcomes))
    return Response(body, status=status, mimetype="application/dicom+json")


def _dicom_parts() -> list[bytes]:
    """The application/dicom parts of the request body; 4xx when it is not that."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/related"):
        abort(415, 'send multipart/related; type="application/dicom"')
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message: Message = BytesParser(policy=HTTP).parsebytes(head + request.get_data())
    if not message.is_multipart():
        abort(400, "the multipart body could not be read (boundary?)")
    parts = [
        part.get_payload(decode=True)
        for part in message.iter_parts()  # type: ignore[attr-defined]
        if part.get_content_type() == "application/dicom"
    ]
    found = [p for p in parts if isinstance(p, bytes) and p]
    if not found:
        abort(400, "no application/dicom part in the request")
    return found


def _store_response(outcomes: list[Outcome]) -> dict[str, Any]:
    """PS3.18 store response: Referenced SOP Sequence and Failed SOP Sequence."""
    body: dict[str, Any] = {}
    ok = [_ref(o) for o in outcomes if o.ok]
    failed = [{**_ref(o), FAILURE_REASON: _us(o.status)} for o in outcomes if not o.ok]
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": ok}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    return body


def _ref(o: Outcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if o.sop_class:
        item["00081150"] = {"vr": "UI", "Value": [o.sop_class]}
    if o.sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [o.sop_uid]}
    return item


def _us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}
