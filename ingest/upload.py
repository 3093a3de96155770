"""The two entry points: ``inspect_upload`` (API, before a job) and ``plan_upload`` (worker).

``inspect_upload`` is cheap and reads no pixel data: magic bytes, the zip central
directory, a DICOM header or an image header. ``plan_upload`` reads the header of
every member, selects series and orders slices; pixels are decoded later, one
slice at a time, by :meth:`SliceSource.load`. A bad member never aborts the
rest: it becomes a :class:`Skipped` entry here or a :class:`SliceError` at load.
Every name and message of a plan is scrubbed (:mod:`ingest.privacy`) before it is returned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from config.settings import ArchiveLimits, Settings
from ingest import privacy
from ingest.archive import (
    ArchiveTooLarge,
    FileOrigin,
    MemberTooLarge,
    Origin,
    Skipped,
    ZipOrigin,
    check_central_directory,
    open_zip,
    scan_members,
)
from ingest.dicom import (
    DEFLATED_TS,
    DicomHeader,
    DicomSlice,
    TooManyFrames,
    exclusion_reason,
    order_series,
    read_header,
)
from ingest.dicom_checks import pixel_data_problem
from ingest.errors import InvalidUpload, LimitExceeded
from ingest.images import open_image, verify_image
from ingest.plan import MemberReader, SeriesInfo, SliceSource, UploadPlan
from ingest.redact import Identifiers, known_suffix
from ingest.series_rules import SeriesRule, SeriesRules
from ingest.sniff import HEAD_BYTES, natural_key, sniff

_NOT_SUPPORTED = "not a DICOM/PNG/JPEG/zip file"
_DICOM_KINDS = ("dicom", "dicom?")
_IMAGE_KINDS = ("png", "jpeg")


class _Skip(Exception):
    """A member is left out; the message is the reason."""


def inspect_upload(path: Path, filename: str, limits: ArchiveLimits) -> str:
    """Job kind for an upload (``"image"`` or ``"study"``), or :class:`InvalidUpload`.

    The type is decided by content; ``filename`` only improves the message.
    """
    kind = sniff(_head(path))
    if kind == "zip":
        _inspect_zip(path, limits)
        return "study"
    if kind in _DICOM_KINDS:
        _inspect_dicom(path, kind, limits)
        return "image"
    if kind in _IMAGE_KINDS:
        _inspect_image(path, limits)
        return "image"
    if kind == "archive":
        raise InvalidUpload("unsupported archive format: upload a .zip")
    raise InvalidUpload(f"{_label(filename)}{_NOT_SUPPORTED}")


def upload_input_name(path: Path, filename: str, settings: Settings) -> str | None:
    """The storable name of an upload as its client called it (ingest.privacy.input_name).

    A single DICOM file's header is read (tags only) to learn the identifiers to
    redact; nothing else is opened. Never raises: an unreadable header keeps no name.
    """
    learned = Identifiers(study_date=settings.redact_study_date)
    try:
        kind = sniff(_head(path))
        if kind in _DICOM_KINDS:
            with path.open("rb") as fp:
                read_header(fp, force=kind == "dicom?", identifiers=learned)
    except Exception:  # untrusted bytes: no header, no name (unless STORE_SOURCE_PATHS=full)
        learned = Identifiers(study_date=settings.redact_study_date)
    try:
        return privacy.input_name(filename, settings, learned)
    finally:
        learned.clear()


def plan_upload(
    path: Path, settings: Settings, filename: str | None = None, rules: SeriesRules | None = None
) -> UploadPlan:
    """Ordered slices, series and skipped members of an upload, scrubbed (ingest.privacy).

    Raises :class:`InvalidUpload` ("no decodable slices: ...") when nothing is left;
    its message is scrubbed too, and any other exception is tagged so that its
    traceback is scrubbed wherever it is logged. ``rules`` select the series (a model's
    :mod:`ingest.series_rules`); default: SKIP_IMAGE_TYPES and ALLOWED_MODALITIES.
    """
    rules = rules or SeriesRules.from_settings(settings)
    kind = sniff(_head(path))
    name = filename or path.name
    learned = Identifiers(study_date=settings.redact_study_date)
    positions: dict[str, int] = {}
    try:
        plan = _plan(path, kind, name, settings, learned, positions, rules)
    except BaseException as exc:
        scrubber = privacy.build(settings, learned, positions, archive=kind == "zip")
        learned.clear()
        if isinstance(exc, InvalidUpload):  # its message becomes the job's error
            refusal = InvalidUpload(scrubber(str(exc)))
            privacy.tag(refusal, scrubber)
            raise refusal from exc
        privacy.tag(exc, scrubber)
        raise
    scrubber = privacy.build(settings, learned, positions, archive=kind == "zip")
    learned.clear()  # the scrubber keeps its own compiled copy; nothing else holds them
    return plan.scrubbed(scrubber)


def _plan(
    path: Path,
    kind: str,
    name: str,
    settings: Settings,
    learned: Identifiers,
    positions: dict[str, int],
    rules: SeriesRules,
) -> UploadPlan:
    """The unscrubbed plan; fills ``positions`` (member -> position in the archive)."""
    if kind == "zip":
        return _plan_zip(path, settings, learned, positions, rules)
    if kind in _DICOM_KINDS or kind in _IMAGE_KINDS:
        positions[name] = 1
        origin = FileOrigin(path)
        found, skipped = _examine_all(origin, [name], settings, learned)
        return _assemble(origin, found, skipped, settings, "image", rules)
    raise InvalidUpload(f"{_label(name)}{_NOT_SUPPORTED}")


def _head(path: Path) -> bytes:
    with path.open("rb") as fp:
        head = fp.read(HEAD_BYTES)
    if not head:
        raise InvalidUpload("the uploaded file is empty")
    return head


def _label(filename: str) -> str:
    """Names the file by a known extension only: the client's name may name the patient."""
    suffix = known_suffix(filename.replace("\\", "/"))
    return f"the {suffix} file is " if suffix else "the file is "


def _inspect_zip(path: Path, limits: ArchiveLimits) -> None:
    with open_zip(path) as zf:
        check_central_directory(zf, limits)
        candidates, skipped = scan_members(zf)
    if not candidates:
        raise InvalidUpload(f"archive holds no image or DICOM files{_summary(skipped, ' (', ')')}")


def _inspect_dicom(path: Path, kind: str, limits: ArchiveLimits) -> None:
    with path.open("rb") as fp:
        if DEFLATED_TS in fp.read(HEAD_BYTES):
            raise InvalidUpload("deflated DICOM transfer syntax is not supported")
        fp.seek(0)
        try:
            header = read_header(fp, force=kind == "dicom?", max_frames=limits.max_members)
        except TooManyFrames as exc:
            raise InvalidUpload(str(exc)) from exc
        except Exception as exc:  # any parser failure on untrusted bytes
            corrupt = "corrupt DICOM file: header unreadable"
            raise InvalidUpload(_NOT_SUPPORTED if kind == "dicom?" else corrupt) from exc
    # the environment-level rule (the model is not known yet): a single file any
    # model's default rule refuses is refused here; per-model rules apply in the job
    rule = SeriesRule(modalities=limits.allowed_modalities, excluded_types=limits.skip_image_types)
    default = SeriesRules((rule,))
    problem = exclusion_reason(header, default, limits.max_image_pixels)
    if problem is None:
        with path.open("rb") as fp:
            try:
                problem = pixel_data_problem(fp, force=kind == "dicom?")
            except Exception:  # the header parsed above; the rest of the file did not
                problem = "truncated or corrupt file after the header"
    if problem:
        raise InvalidUpload(f"DICOM file cannot be used: {problem}")


def _inspect_image(path: Path, limits: ArchiveLimits) -> None:
    with path.open("rb") as fp:
        try:
            verify_image(fp, limits.max_image_pixels)
        except LimitExceeded as exc:
            raise InvalidUpload(str(exc)) from exc
        except Exception as exc:  # any Pillow failure on untrusted bytes
            raise InvalidUpload("corrupt image: PNG/JPEG header cannot be read") from exc


def _plan_zip(
    path: Path,
    settings: Settings,
    learned: Identifiers,
    positions: dict[str, int],
    rules: SeriesRules,
) -> UploadPlan:
    with open_zip(path) as zf:
        check_central_directory(zf, settings.limits)
        for number, info in enumerate(zf.infolist(), 1):
            positions.setdefault(info.filename, number)
        candidates, skipped = scan_members(zf)
    origin = ZipOrigin(path, settings.limits)
    names = [info.filename for info in candidates]
    try:
        found, more = _examine_all(origin, names, settings, learned)
        return _assemble(origin, found, skipped + more, settings, "study", rules)
    except BaseException:
        origin.close()  # the plan that would own the zip handles never came to be
        raise


Found = tuple[str, str, DicomHeader | None]  # (member, "dicom" | "image", header)


def _examine_all(
    origin: Origin, names: Sequence[str], settings: Settings, identifiers: Identifiers
) -> tuple[list[Found], list[Skipped]]:
    """Examine each member by content; corrupt or oversized ones become Skipped.

    Patient-identifying header values are learned by ``identifiers`` for scrubbing.
    """
    found: list[Found] = []
    skipped: list[Skipped] = []
    slices = 0
    for name in names:
        try:
            fmt, header = _examine(origin, name, settings.limits, identifiers)
        except _Skip as exc:
            skipped.append(Skipped(name, str(exc)))
        except ArchiveTooLarge as exc:
            raise InvalidUpload(str(exc)) from exc
        except MemberTooLarge as exc:
            skipped.append(Skipped(name, str(exc)))
        except Exception as exc:  # untrusted bytes: zlib, bz2, lzma... fail in many ways
            skipped.append(Skipped(name, f"corrupt archive member ({type(exc).__name__})"))
        else:
            found.append((name, fmt, header))
            slices += header.frames if header else 1
            if slices > settings.limits.max_members:
                raise InvalidUpload(
                    f"more than {settings.limits.max_members} slices (MAX_ARCHIVE_MEMBERS)"
                )
    return found, skipped


def _examine(
    origin: Origin, name: str, limits: ArchiveLimits, identifiers: Identifiers
) -> tuple[str, DicomHeader | None]:
    """Recognise one member by content and read its header; raise _Skip to leave it out."""
    with origin.open_stream(name) as stream:
        head = stream.read(HEAD_BYTES)
        kind = sniff(head)
        if kind in _IMAGE_KINDS:
            _image_header(stream, head, limits.max_image_pixels)
            return "image", None
        stream.seek(0)
        if kind in _DICOM_KINDS:
            return "dicom", _dicom_header(stream, head, kind, identifiers, limits.max_members)
    if kind in ("zip", "archive"):
        raise _Skip("nested archive, not opened")
    raise _Skip("not a DICOM, PNG or JPEG file")


IMAGE_HEAD_BYTES = 64 * 1024
"""Bytes of a PNG/JPEG member read at once to check its header: the whole of most CT
slices. Pillow parses the header in a few dozen small reads, and each one through a
zip member's capped stream cost about as much as the parse (0.3 ms a member)."""


def _image_header(stream: BinaryIO, head: bytes, max_pixels: int) -> None:
    """Check an image member's header from one read; the member's stream again only when
    the header runs past :data:`IMAGE_HEAD_BYTES` (large text or colour-profile chunks)."""
    data = head + stream.read(IMAGE_HEAD_BYTES - len(head))
    try:
        _parse_image_header(BytesIO(data), max_pixels)
        return
    except _Skip:
        if len(data) < IMAGE_HEAD_BYTES:  # the whole member was read: the answer stands
            raise
    stream.seek(0)
    _parse_image_header(stream, max_pixels)


def _parse_image_header(stream: BinaryIO, max_pixels: int) -> None:
    try:
        open_image(stream, max_pixels).close()
    except LimitExceeded as exc:
        raise _Skip(str(exc)) from exc
    except Exception as exc:  # any Pillow failure on untrusted bytes
        raise _Skip("corrupt image: PNG/JPEG header cannot be read") from exc


def _dicom_header(
    stream: object, head: bytes, kind: str, identifiers: Identifiers, max_frames: int
) -> DicomHeader:
    if DEFLATED_TS in head:
        raise _Skip("deflated DICOM transfer syntax is not supported")
    try:
        return read_header(
            stream,  # type: ignore[arg-type]
            force=kind == "dicom?",
            identifiers=identifiers,
            max_frames=max_frames,
        )
    except LimitExceeded:
        raise
    except TooManyFrames as exc:
        raise _Skip(str(exc)) from exc
    except Exception as exc:  # any pydicom failure on untrusted bytes
        reason = "not a DICOM, PNG or JPEG file" if kind == "dicom?" else "corrupt DICOM header"
        raise _Skip(reason) from exc


def _assemble(
    origin: Origin,
    found: list[Found],
    skipped: list[Skipped],
    settings: Settings,
    kind: str,
    rules: SeriesRules,
) -> UploadPlan:
    """Select series, order slices (DICOM series first, then images), index them."""
    dicoms = [(m, h) for m, fmt, h in found if fmt == "dicom" and h is not None]
    images = sorted((m for m, fmt, _ in found if fmt == "image"), key=natural_key)
    series, ordered = _select_series(dicoms, settings, skipped, rules)
    if ordered and images:
        reason = "PNG/JPEG next to DICOM series: only the DICOM series are used"
        skipped.extend(Skipped(m, reason) for m in images)
        images = []
    slices = [_dicom_source(i, s, origin, settings) for i, s in enumerate(ordered)]
    slices += [_image_source(len(slices) + i, m, origin, settings) for i, m in enumerate(images)]
    if not slices:
        raise InvalidUpload(f"no decodable slices: {_summary(skipped) or 'nothing to read'}")
    return UploadPlan(kind=kind, slices=slices, skipped=skipped, series=series, origin=origin)


def _select_series(
    dicoms: list[tuple[str, DicomHeader]],
    settings: Settings,
    skipped: list[Skipped],
    rules: SeriesRules,
) -> tuple[list[SeriesInfo], list[DicomSlice]]:
    """Group by study + series, apply the selection rule, order each kept series."""
    groups: dict[tuple[str, str], list[tuple[str, DicomHeader]]] = {}
    seen: set[str] = set()
    for member, h in dicoms:
        if h.sop_uid and h.sop_uid in seen:
            skipped.append(Skipped(member, "duplicate of another file (same SOPInstanceUID)"))
            continue
        if h.sop_uid:
            seen.add(h.sop_uid)
        groups.setdefault((h.study_uid, h.series_uid), []).append((member, h))
    infos: list[SeriesInfo] = []
    ordered: list[DicomSlice] = []
    for key in sorted(groups, key=lambda k: _series_key(groups[k][0][1])):
        info, slices = _select_one(groups[key], settings, skipped, rules)
        infos.append(info)
        ordered.extend(slices)
    return infos, ordered


def _series_key(h: DicomHeader) -> tuple[str, bool, int, str]:
    return (h.study_uid, h.series_number is None, h.series_number or 0, h.series_uid)


def _select_one(
    files: list[tuple[str, DicomHeader]],
    settings: Settings,
    skipped: list[Skipped],
    rules: SeriesRules,
) -> tuple[SeriesInfo, list[DicomSlice]]:
    max_pixels = settings.limits.max_image_pixels
    reasons = {m: exclusion_reason(h, rules, max_pixels) for m, h in files}
    kept = [(m, h) for m, h in files if reasons[m] is None]
    excluded = [(m, r) for m, r in reasons.items() if r is not None]
    first = files[0][1]
    note = None
    if not kept:
        reason = Counter(r for _, r in excluded).most_common(1)[0][0]
        skipped.append(Skipped(f"series {first.series_uid}", f"{reason} ({len(files)} files)"))
        note = f"skipped: {reason}"
    elif excluded:
        skipped.extend(Skipped(m, r) for m, r in excluded)
        note = f"{len(excluded)} of {len(files)} files skipped"
    slices = order_series(kept) if kept else []
    info = SeriesInfo(
        series_uid=first.series_uid,
        study_uid=first.study_uid,
        modality=first.modality,
        description=first.description,
        slice_count=len(slices),
        note=note,
        series_number=first.series_number,
    )
    return info, slices


def _reader(origin: Origin, member: str, fmt: str, settings: Settings) -> MemberReader:
    return MemberReader(
        origin=origin,
        member=member,
        fmt=fmt,
        window_center=settings.dicom_window_center,
        window_width=settings.dicom_window_width,
        max_pixels=settings.limits.max_image_pixels,
    )


def _dicom_source(index: int, s: DicomSlice, origin: Origin, settings: Settings) -> SliceSource:
    return SliceSource(
        index=index,
        source=s.member,
        series_uid=s.header.series_uid or None,
        instance_number=s.header.instance_number,
        slice_position=s.position,
        frame=s.frame,
        reader=_reader(origin, s.member, "dicom", settings),
    )


def _image_source(index: int, member: str, origin: Origin, settings: Settings) -> SliceSource:
    return SliceSource(
        index=index,
        source=member,
        series_uid=None,
        instance_number=None,
        slice_position=None,
        reader=_reader(origin, member, "image", settings),
    )


def _summary(skipped: Sequence[Skipped], before: str = "", after: str = "") -> str:
    """Most common skip reasons, for a message that says why nothing is left."""
    if not skipped:
        return ""
    counts = Counter(s.reason for s in skipped).most_common(3)
    text = "; ".join(f"{n} x {reason}" if n > 1 else reason for reason, n in counts)
    rest = len(skipped) - sum(n for _, n in counts)
    if rest:
        text += f"; {rest} more"
    return f"{before}{text}{after}"
