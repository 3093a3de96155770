"""The one place that decides what of an upload's names may leave the worker.

Everything the worker stores, shows, logs or raises about an upload passes through
the :class:`Scrubber` that :meth:`ingest.plan.UploadPlan.scrubbed` puts on a plan:

* member paths (``SliceSource.source``, ``Skipped.source``) are stored as the
  ``STORE_SOURCE_PATHS`` mode says (:class:`SourcePaths`), with control and
  bidirectional characters replaced (:mod:`ingest.visible`);
* free text (skip reasons, slice errors, job error messages, series
  descriptions) goes through ``plan.scrub(text)``;
* log records: while a plan is open, and for any exception that escaped one,
  every log record of the process is scrubbed (:func:`install_log_scrubbing`),
  so a traceback that quotes a member name is cleaned before any handler sees it.

The scrubber holds the identifiers learned from the headers (as patterns) and the
real member names for as long as the plan lives, in memory only: its ``repr``
shows neither, and it refuses to be pickled, so it can never travel through
Celery or Redis.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ingest.redact import TEXT_UNITS, Identifiers, Matcher, known_suffix, redact
from ingest.visible import visible

if TYPE_CHECKING:
    from config.settings import Settings


class SourcePaths(enum.StrEnum):
    """What is kept of an archive member's path (``STORE_SOURCE_PATHS``)."""

    FULL = "full"
    """As given in the archive: only for uploads known to hold no identifiers."""
    REDACTED = "redacted"
    """Path components that contain an identifier from the headers are replaced."""
    NONE = "none"
    """No path at all: ``#<position in the archive><known extension>``, e.g. ``#12.dcm``."""


def choose_mode(configured: str | None, *, archive: bool, headers_read: int) -> SourcePaths:
    """The mode for one upload: the configured one, else ``redacted``, except that an
    archive in which no DICOM header could be read (PNG/JPEG only) gets ``none``:
    with no header there is nothing to recognise a name by."""
    if configured:
        return SourcePaths(configured)
    return SourcePaths.NONE if archive and not headers_read else SourcePaths.REDACTED


def anonymous_name(member: str, position: int | None) -> str:
    """A member in ``none`` mode: its position in the archive and a known extension."""
    return f"#{position if position is not None else '?'}{known_suffix(member)}"


class Scrubber:
    """Applies one upload's privacy mode to member paths and to any text (module doc)."""

    def __init__(
        self, mode: SourcePaths, matcher: Matcher, positions: Mapping[str, int] | None = None
    ) -> None:
        self.mode = mode
        self._matcher = matcher
        self._positions = dict(positions or {})
        self._shown: dict[str, str] = {}
        self._paths_re: re.Pattern[str] | None = None

    def __repr__(self) -> str:
        return f"Scrubber(mode={self.mode.value!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a Scrubber holds patient identifiers and is never pickled")

    def is_member(self, name: str) -> bool:
        """True when ``name`` is the path of a member of this upload."""
        return name in self._positions

    def path(self, member: str) -> str:
        """How an archive member's path is stored and shown."""
        shown = self._shown.get(member)
        if shown is None:  # control and bidi characters never stored (ingest/visible.py)
            shown = self._shown[member] = visible(self._path(member))
        return shown

    def _path(self, member: str) -> str:
        if self.mode is SourcePaths.FULL:
            return member
        if self.mode is SourcePaths.NONE:
            return anonymous_name(member, self._positions.get(member))
        return redact(member, self._matcher)

    def __call__(self, text: str) -> str:
        """``text`` with member paths shown as :meth:`path` shows them and identifiers
        redacted word by word (``full`` mode: unchanged)."""
        if self.mode is SourcePaths.FULL or not text:
            return text
        text = self._replace_paths(text)
        return redact(text, self._matcher, TEXT_UNITS)

    def _replace_paths(self, text: str) -> str:
        """Real member names quoted in a message (zipfile does) become their shown form."""
        if self._paths_re is None:
            names = sorted((m for m in self._positions if self.path(m) != m), key=len, reverse=True)
            alternatives = "|".join(map(re.escape, names)) or r"(?!)"
            self._paths_re = re.compile(alternatives)
        return self._paths_re.sub(lambda m: self.path(m.group()), text)


def build(
    settings: Settings, learned: Identifiers, positions: Mapping[str, int], *, archive: bool
) -> Scrubber:
    """The scrubber for one upload, from what its headers said and where its members are."""
    mode = choose_mode(
        settings.store_source_paths, archive=archive, headers_read=learned.headers_read
    )
    return Scrubber(mode, learned.matcher(), positions)


def skipped_source(scrubber: Scrubber, source: str) -> str:
    """A skipped member's path, or a text such as ``series <uid>`` (not a member)."""
    return scrubber.path(source) if scrubber.is_member(source) else visible(scrubber(source))


# --- log records ---------------------------------------------------------------------

_active: weakref.WeakSet[Scrubber] = weakref.WeakSet()
_lock = threading.Lock()
_installed = False
_TAG = "_ingest_scrubber"


def activate(scrubber: Scrubber) -> None:
    """Scrub every log record of this process with ``scrubber`` until :func:`deactivate`
    (or until it is garbage-collected with its plan)."""
    if scrubber.mode is SourcePaths.FULL:
        return
    install_log_scrubbing()
    with _lock:
        _active.add(scrubber)


def deactivate(scrubber: Scrubber) -> None:
    """Stop scrubbing log records with ``scrubber`` (its plan was closed)."""
    with _lock:
        _active.discard(scrubber)


def tag(exc: BaseException, scrubber: Scrubber) -> None:
    """Scrub ``exc`` and the exceptions it chains to in place, and mark them.

    Their string arguments (and an OSError's file names) are scrubbed, so whatever
    renders them later (Celery's failure event, which Flower shows) gets the clean
    text; the mark makes their tracebacks scrubbed when logged, outside the plan
    (a task's ``log.exception``). The mark pickles to nothing, so a tagged exception
    still crosses a process boundary, without the identifiers.
    """
    if scrubber.mode is SourcePaths.FULL:
        return
    install_log_scrubbing()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        _scrub_exception(current, scrubber)
        with contextlib.suppress(AttributeError, TypeError):  # a type without a __dict__
            setattr(current, _TAG, _Tag(scrubber))
        current = current.__cause__ or current.__context__


class _Tag:
    """The mark on a tagged exception; pickles to an empty mark."""

    def __init__(self, scrubber: Scrubber | None) -> None:
        self.scrubber = scrubber

    def __reduce__(self) -> Any:
        return (_Tag, (None,))


def _scrub_exception(exc: BaseException, scrubber: Scrubber) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        exc.args = tuple(scrubber(a) if isinstance(a, str) else a for a in exc.args)
    if isinstance(exc, OSError):
        for name in ("filename", "filename2"):
            value = getattr(exc, name, None)
            if isinstance(value, str):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(exc, name, scrubber(value))


def install_log_scrubbing() -> None:
    """Wrap the process's log record factory once (see the module docstring).

    A record factory, not a handler filter, because Celery and the worker add their
    handlers at different times: every record of every logger is built here.
    """
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_factory(previous))
        _installed = True


def _factory(previous: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        with _lock:
            scrubbers = list(_active)
        scrubbers += _tags(record.exc_info)
        if scrubbers:
            _scrub_record(record, scrubbers)
        return record

    return make


def _tags(exc_info: Any) -> list[Scrubber]:
    exc = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None
    found: list[Scrubber] = []
    seen: set[int] = set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        mark = getattr(exc, _TAG, None)
        s = mark.scrubber if isinstance(mark, _Tag) else None
        if s is not None and s not in found:
            found.append(s)
        exc = exc.__cause__ or exc.__context__
    return found


def _scrub_record(record: logging.LogRecord, scrubbers: Iterable[Scrubber]) -> None:
    """Format the message (and traceback) now, scrubbed, so no handler formats the raw one."""
    try:
        message = record.getMessage()
    except Exception:  # bad arguments: a handler would print msg and args raw
        message = f"{record.msg} (unformattable log arguments)"
    exc_text = None
    if record.exc_info and record.exc_info[0] is not None:
        exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    for scrub in scrubbers:
        message = scrub(message)
        exc_text = scrub(exc_text) if exc_text else exc_text
    record.msg, record.args = message, None
    if exc_text is not None:
        record.exc_text = exc_text


def input_name(filename: str, settings: Settings, learned: Identifiers | None = None) -> str | None:
    """What may be stored of the name a client gave its upload (the job list's input name).

    The rule of member paths (:func:`choose_mode`), applied as to an archive: in
    ``redacted`` mode (the default) every part that holds an identifier learned
    from the upload's DICOM header becomes ``[redacted]``, and an upload whose
    header was not read (PNG/JPEG, or a zip: the API does not open its members)
    has nothing to recognise a name by, so it keeps none; ``full`` keeps the
    name, ``none`` never does. Folders are never kept (PACS exports name them
    after the patient). None: nothing may be stored.
    """
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()[:255]
    if not base:
        return None
    headers = learned.headers_read if learned is not None else 0
    mode = choose_mode(settings.store_source_paths, archive=True, headers_read=headers)
    if mode is SourcePaths.FULL:
        return base
    if mode is SourcePaths.NONE:
        return None
    matcher = learned.matcher() if learned is not None else Matcher()
    return redact(base, matcher)
