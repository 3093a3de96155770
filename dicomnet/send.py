"""C-STORE and C-ECHO to a destination (pynetdicom), with bounded timeouts."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import AE

from config import Settings
from dicomnet.peers import Destination

VERIFICATION = "1.2.840.10008.1.1"  # the Verification SOP class (C-ECHO)


class SendError(Exception):
    """A destination did not take the object; the message says why (no patient data)."""


def _ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.dicom_ae_title)
    for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
        setattr(ae, attr, settings.dicom_timeout_s)
    return ae


def c_store(settings: Settings, dest: Destination, datasets: list[Dataset]) -> None:
    """Send the datasets over one association; raises :class:`SendError` unless every
    one is answered Success (or a warning)."""
    ae = _ae(settings)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise SendError(_refused(assoc, dest))
    try:
        statuses = [getattr(assoc.send_c_store(ds), "Status", None) for ds in datasets]
    finally:
        assoc.release()
    for code in statuses:
        if code is None:
            raise SendError(f"{dest.name}: no answer to C-STORE")
        if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success or warning
            raise SendError(f"{dest.name}: C-STORE status 0x{code:04X}")


def c_echo(settings: Settings, dest: Destination) -> tuple[bool, str]:
    """(answered, a short word on it): the live check of GET /api/v1/admin/dicom."""
    ae = _ae(settings)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        return False, _refused(assoc, dest)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code == 0x0000:
        return True, "C-ECHO success"
    return False, "no answer to C-ECHO" if code is None else f"C-ECHO status 0x{code:04X}"


def _refused(assoc: object, dest: Destination) -> str:
    if getattr(assoc, "is_rejected", False):
        return f"{dest.name}: association rejected by {dest.ae_title}"
    if getattr(assoc, "is_aborted", False):
        return f"{dest.name}: association aborted"
    return f"{dest.name}: cannot connect to {dest.host}:{dest.port}"
