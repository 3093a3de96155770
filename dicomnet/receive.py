"""Store one received instance before answering: raw bytes to storage, a row in SQL.

Nothing is decoded here (pixels are decoded by the worker); only the header
fields that grouping and series selection need are read. An instance joins the
open group of its (called AE, StudyInstanceUID), or opens a new one. The
C-STORE handler (dicomnet/listener.py) and STOW-RS (api/dicomweb.py) both call
:func:`store_instance`.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from config import Settings
from db.dicom_models import DicomGroup, DicomInstance, GroupStatus
from db.models import utcnow
from db.session import session_scope, transaction_lock
from dicomnet.peers import owner_for
from ingest.dicom import DicomHeader, read_header
from ingest.series_rules import orientation_name
from storage import LocalStorage, Storage, open_storage

log = logging.getLogger(__name__)
SLOW_STORE_S = 2.0
"""A store slower than this is logged with its lock wait: peers time out (often at 10 s),
and the log then says whether the database lock or the write took the time."""

ACCEPTED_SOP_CLASSES = {
    UID("1.2.840.10008.5.1.4.1.1.2"): "CT Image Storage",
    UID("1.2.840.10008.5.1.4.1.1.2.1"): "Enhanced CT Image Storage",
    UID("1.2.840.10008.5.1.4.1.1.2.2"): "Legacy Converted Enhanced CT Image Storage",
}

# C-STORE status codes (PS3.4 Annex GG.4, PS3.7 Annex C)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Outcome:
    """A status for the peer, and for a STOW-RS answer, why (no patient data)."""

    status: int
    reason: str = ""
    sop_uid: str | None = None
    sop_class: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


def store_instance(
    settings: Settings,
    called_ae: str,
    calling_ae: str,
    data: bytes,
    sop_class: str | None = None,
    owner: str | None = None,
) -> Outcome:
    """Store one Part 10 file (``data``: preamble, file meta, dataset) and record it.

    ``sop_class`` is the one the peer declared (C-STORE); the file's own is checked too.
    ``owner`` owns a group this instance opens (default: the calling AE's owner,
    :func:`dicomnet.peers.owner_for`; STOW-RS: the API key's owner).
    """
    if sop_class is not None and UID(sop_class) not in ACCEPTED_SOP_CLASSES:
        return _refused_class(sop_class)
    data = part10(data)
    try:
        header = read_header(io.BytesIO(data))
    except Exception as exc:  # untrusted bytes: any parser failure
        return Outcome(CANNOT_UNDERSTAND, f"unreadable DICOM header ({type(exc).__name__})")
    if UID(header.sop_class) not in ACCEPTED_SOP_CLASSES:
        return _refused_class(header.sop_class)
    if not (header.study_uid and header.series_uid and header.sop_uid):
        return Outcome(CANNOT_UNDERSTAND, "missing Study, Series or SOP Instance UID")
    problem = _resource_problem(settings, len(data))
    if problem:
        log.warning("instance refused (A700): %s", problem)
        return Outcome(OUT_OF_RESOURCES, problem, header.sop_uid, header.sop_class)
    try:
        who = owner or owner_for(settings, calling_ae)
        return _record(settings, (called_ae, calling_ae, who), header, data)
    except (OSError, SQLAlchemyError) as exc:  # disk full, storage or database down
        log.warning("instance refused (A700): %s failed", type(exc).__name__)
        reason = "storage or database unavailable"
        return Outcome(OUT_OF_RESOURCES, reason, header.sop_uid, header.sop_class)


def part10(data: bytes) -> bytes:
    """A file meta group sent without the 128-byte preamble and ``DICM`` (STOW-RS
    clients such as dicomweb-client send that) gets them, so every stored file
    is a proper Part 10 file."""
    if data[128:132] != b"DICM" and data[:2] == b"\x02\x00":
        return bytes(128) + b"DICM" + data
    return data


def _refused_class(sop_class: str) -> Outcome:
    name = UID(sop_class).name
    reason = f"SOP class {name} is not accepted: only CT images (CT, Enhanced CT, Legacy CT)"
    return Outcome(SOP_CLASS_NOT_SUPPORTED, reason, sop_class=sop_class)


def _resource_problem(settings: Settings, size: int) -> str | None:
    """Over the per-file limit, or the local storage folder short of space."""
    if size > settings.max_member_mb * 1024**2:
        return f"instance of {size} bytes is over MAX_MEMBER_MB"
    storage = open_storage(settings)
    if isinstance(storage, LocalStorage) and settings.dicom_min_free_mb:
        free = shutil.disk_usage(_existing(storage.root)).free
        if free < settings.dicom_min_free_mb * 1024**2 + size:
            return "less than DICOM_MIN_FREE_MB free in the storage folder"
    return None


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _record(settings: Settings, peer: tuple[str, str, str], h: DicomHeader, data: bytes) -> Outcome:
    """Join or open the group, write the file, record the instance: one transaction.

    The group lock serialises this with :func:`dicomnet.groups.close_group`, so an
    instance never lands in a group that is closing.
    """
    storage = open_storage(settings)
    cap = settings.dicom_max_study_instances
    start = time.monotonic()
    locked: float | None = None  # when the lock was had (None: never)
    try:
        with session_scope(settings.database_url) as s:
            transaction_lock(s, group_lock(peer[0], h.study_uid))
            locked = time.monotonic()
            group = open_group(s, peer, h.study_uid)
            if group.instance_count >= cap:
                raise _StudyFull
            _put_instance(s, storage, group, h, data)
            group.last_at = utcnow()
    except _StudyFull:
        reason = f"study over DICOM_MAX_STUDY_INSTANCES ({cap})"
        return Outcome(OUT_OF_RESOURCES, reason, h.sop_uid, h.sop_class)
    finally:
        _log_if_slow(start, locked)
    return Outcome(SUCCESS, sop_uid=h.sop_uid, sop_class=h.sop_class)


def _log_if_slow(start: float, locked: float | None) -> None:
    end = time.monotonic()
    if end - start > SLOW_STORE_S:
        log.warning(
            "dicom: storing an instance took %.1fs (%.1fs waiting for the group lock)",
            end - start, (locked or end) - start,
        )  # fmt: skip


class _StudyFull(Exception):
    """The open group already holds DICOM_MAX_STUDY_INSTANCES instances (nothing written)."""


def group_lock(called_ae: str, study_uid: str) -> str:
    """The name of the lock that guards one (called AE, study) group."""
    return f"lungct-dicom:{called_ae}:{study_uid}"


def open_group(s: Session, peer: tuple[str, str, str], study_uid: str) -> DicomGroup:
    """The open group of this study at this AE, or a new one (the next result version).

    ``peer`` is (called AE, calling AE, owner): the last two only name a new group.
    """
    called_ae, calling_ae, owner = peer
    query = select(DicomGroup).where(
        DicomGroup.called_ae == called_ae,
        DicomGroup.study_uid == study_uid,
        DicomGroup.status == GroupStatus.OPEN,
    )
    group = s.scalar(query)
    if group is not None:
        return group
    earlier = s.scalar(
        select(func.count())
        .select_from(DicomGroup)
        .where(DicomGroup.called_ae == called_ae, DicomGroup.study_uid == study_uid)
    )
    group = DicomGroup(
        called_ae=called_ae,
        calling_ae=calling_ae,
        owner=owner,
        study_uid=study_uid,
        version=(earlier or 0) + 1,
        status=GroupStatus.OPEN,
        instance_count=0,
    )
    s.add(group)
    s.flush()
    log.info("dicom: group %s opened (version %d)", group.id, group.version)
    return group


def _put_instance(
    s: Session, storage: Storage, group: DicomGroup, h: DicomHeader, data: bytes
) -> None:
    """Write the file and its row; a re-sent SOP Instance UID replaces the earlier copy."""
    row = s.scalar(
        select(DicomInstance).where(
            DicomInstance.group_id == group.id, DicomInstance.sop_uid == h.sop_uid
        )
    )
    if row is None:
        row = DicomInstance(group_id=group.id, name=uuid.uuid4().hex, sop_uid=h.sop_uid)
        s.add(row)
        group.instance_count += 1
    row.sop_class = h.sop_class
    row.series_uid = h.series_uid
    row.instance_number = h.instance_number
    row.modality = h.modality[:16]
    row.image_type = "\\".join(h.image_type)[:255]
    row.slice_thickness = h.slice_thickness
    row.orientation = orientation_name(h.orientation)
    row.size = len(data)
    row.received_at = utcnow()
    storage.put(group.id, instance_file(row.name), data)


def instance_file(name: str) -> str:
    """The storage name of a received instance (in its group's folder)."""
    return f"dicom/{name}.dcm"
