"""Multipart boundaries found with ``bytes.find``, not a regular expression compiled per request.

Werkzeug's multipart decoder compiles two regular expressions around each
request's boundary (random per request, so ``re``'s cache never helps), and
the one that finds the closing boundary has no literal prefix, so it is tried
at every byte of the buffer that holds it. For a 60 KB slice that was about
0.2 ms of CPU to compile and 0.3 ms to search, on every upload: the largest
single cost of ``POST /api/v1/jobs`` in the API (docs/benchmarks.md).

:class:`BoundaryPattern` answers the decoder's ``search`` calls exactly as its
patterns do (the same start, end and closing group; tests/test_multipart.py
compares them with the installed werkzeug's own, on every tricky case it can
generate): ``bytes.find`` locates each ``--boundary``, then the line break
before it and one pattern compiled once, for what may follow it, decide.
Everything else, the limits on parts and memory included, stays werkzeug's.

:func:`install` makes werkzeug's form parser build :class:`BoundaryFindingDecoder`
(a subclass of its decoder) for every request of this process; it leaves
werkzeug as it is if its decoder no longer keeps the two patterns it replaces.
"""

from __future__ import annotations

import logging
import re

from werkzeug import formparser
from werkzeug.sansio import multipart

log = logging.getLogger(__name__)

LINE_BREAK = rb"(?:\r\n|\n|\r)"
CLOSING = re.compile(rb"(--[^\S\n\r]*%s?|[^\S\n\r]*%s)" % (LINE_BREAK, LINE_BREAK))
"""What follows ``--boundary`` in werkzeug's patterns: ``--`` for the last one, then
a line break (group 1)."""
PLACEHOLDER = b"-"
"""The boundary the parent decoder compiles its unused patterns for: always the same,
so ``re``'s cache answers after the first time."""
PATTERNS = ("preamble_re", "boundary_re")
"""The decoder's attributes that :class:`BoundaryPattern` replaces."""


class Found:
    """The parts of a match object that the decoder reads."""

    __slots__ = ("_end", "_group", "_start")

    def __init__(self, start: int, end: int, group: bytes) -> None:
        self._start, self._end, self._group = start, end, group

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def group(self, index: int) -> bytes:
        if index != 1:
            raise IndexError(index)
        return self._group


class BoundaryPattern:
    """``re.Pattern.search`` of werkzeug's ``LINE_BREAK --boundary CLOSING`` pattern; the
    line break is optional in the preamble (the first boundary) and required after it."""

    def __init__(self, boundary: bytes, *, line_break: bool) -> None:
        self.delimiter = b"--" + boundary
        self.line_break = line_break

    def search(self, data: bytes | bytearray, pos: int = 0) -> Found | None:
        """The leftmost match starting at ``pos`` or later, as ``re`` would find it.

        The first delimiter that has what must come before and after it starts the
        leftmost match: a match starts at most a CRLF before its delimiter, and the
        delimiter begins with ``-``, so a later one cannot start further left.
        """
        at = data.find(self.delimiter, pos)
        while at != -1:
            start = self._start(data, at, pos)
            if start is not None:
                closing = CLOSING.match(data, at + len(self.delimiter))
                if closing is not None:
                    return Found(start, closing.end(), closing.group(1))
            at = data.find(self.delimiter, at + 1)
        return None

    def _start(self, data: bytes | bytearray, at: int, pos: int) -> int | None:
        """Where a match with the delimiter at ``at`` starts: at the line break before it,
        the longest first (CRLF, then LF or CR), not before ``pos``."""
        if at - 2 >= pos and data[at - 2 : at] == b"\r\n":
            return at - 2
        if at - 1 >= pos and data[at - 1] in b"\r\n":
            return at - 1
        return None if self.line_break else at


class BoundaryFindingDecoder(multipart.MultipartDecoder):
    """werkzeug's decoder with :class:`BoundaryPattern` in place of its two patterns."""

    def __init__(
        self,
        boundary: bytes,
        max_form_memory_size: int | None = None,
        *,
        max_parts: int | None = None,
    ) -> None:
        super().__init__(PLACEHOLDER, max_form_memory_size, max_parts=max_parts)
        self.boundary = boundary
        self.preamble_re = BoundaryPattern(boundary, line_break=False)  # type: ignore[assignment]
        self.boundary_re = BoundaryPattern(boundary, line_break=True)  # type: ignore[assignment]


def install() -> bool:
    """Have werkzeug's form parser decode with :class:`BoundaryFindingDecoder`; whether it does.

    Idempotent. Nothing changes (and a warning says so) if werkzeug's decoder no
    longer keeps ``preamble_re`` and ``boundary_re``: its own parsing is correct,
    only slower.
    """
    if formparser.MultipartDecoder is BoundaryFindingDecoder:
        return True
    stock = multipart.MultipartDecoder(PLACEHOLDER)
    if not all(isinstance(getattr(stock, n, None), re.Pattern) for n in PATTERNS):
        log.warning("werkzeug's multipart decoder changed; its own boundary search is kept")
        return False
    formparser.MultipartDecoder = BoundaryFindingDecoder  # type: ignore[misc]
    return True
