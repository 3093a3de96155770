"""The DICOM listener (pynetdicom): C-ECHO and C-STORE, for this node's AE title only.

Associations are refused when the called AE title is not DICOM_AE_TITLE, or
when the calling AE title is not on DICOM_ALLOWED_AES (when set); the node's
own title may associate for C-ECHO only (the API's health check). An allowed
title calling from another host than its entry names gets 0x0124 (refused: not
authorized) on every request. Every storage SOP class is negotiated in every
transfer syntax, so that a non-CT object gets a clear refusal status (0x0122,
SOP class not supported) from :func:`dicomnet.receive.store_instance` instead
of a failed negotiation the sender might log and forget.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from config import Settings
from dicomnet.peers import allowed_callers, caller_allowed
from dicomnet.receive import store_instance
from dicomnet.send import VERIFICATION

log = logging.getLogger(__name__)
NOT_AUTHORIZED = 0x0124
CANNOT_UNDERSTAND = 0xC000


def build_ae(settings: Settings) -> AE:
    """The application entity, with its title checks and presentation contexts."""
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.require_called_aet = True
    callers = allowed_callers(settings)
    if callers:  # and our own title, for C-ECHO only (the API's health check)
        ae.require_calling_aet = sorted({title for title, _ in callers} | {ae.ae_title})
    for attr in ("acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, attr, settings.dicom_timeout_s)
    ae.maximum_associations = 16
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
    return ae


def start(settings: Settings) -> ThreadedAssociationServer:
    """Listen on DICOM_HOST:DICOM_PORT in background threads; returns the server."""
    callers = allowed_callers(settings)
    handlers: list[Any] = [
        (evt.EVT_C_ECHO, _on_echo, [callers]),
        (evt.EVT_C_STORE, _on_store, [settings, callers]),
    ]
    server = build_ae(settings).start_server(
        (settings.dicom_host, settings.dicom_port), block=False, evt_handlers=handlers
    )
    if server is None:  # block=False always returns the server
        raise RuntimeError("pynetdicom did not return its server")
    return server


def _allowed(event: evt.Event, callers: list[tuple[str, str | None]]) -> bool:
    requestor = event.assoc.requestor
    ok = caller_allowed(callers, requestor.ae_title, requestor.address)
    if not ok:
        log.warning("dicom: %s from %s is not allowed", requestor.ae_title, requestor.address)
    return ok


def _on_echo(event: evt.Event, callers: list[tuple[str, str | None]]) -> int:
    """Allowed callers, and this node's own title (GET /api/v1/admin/dicom), get an answer."""
    own = event.assoc.requestor.ae_title == event.assoc.acceptor.ae_title
    return 0x0000 if own or _allowed(event, callers) else NOT_AUTHORIZED


def _on_store(event: evt.Event, settings: Settings, callers: list[tuple[str, str | None]]) -> int:
    """Store before answering; any failure is a status for the peer, never a crash."""
    if not _allowed(event, callers):
        return NOT_AUTHORIZED
    try:
        outcome = store_instance(
            settings,
            event.assoc.acceptor.ae_title,
            event.assoc.requestor.ae_title,
            event.encoded_dataset(include_meta=True),
            sop_class=str(event.request.AffectedSOPClassUID),
        )
    except Exception as exc:  # the database away, a bug: the peer must know it failed
        log.error("dicom: C-STORE failed (%s)", type(exc).__name__)
        return 0xA700
    if not outcome.ok:
        log.info("dicom: C-STORE refused 0x%04X: %s", outcome.status, outcome.reason)
    return outcome.status
