"""Server text as the ``lungct`` command shows and writes it.

Member names come from uploads, so they may hold anything. Two rules, the
same as the service's and the web UI's:

- :func:`shown`: every character Python does not call printable (CR, LF,
  ESC, the right-to-left override U+202E, zero-width and other format
  characters) becomes U+FFFD, so a name cannot rewrite the terminal or fake
  its extension (ingest/visible.py on the server, api/static/js/dom.js);
- :func:`spreadsheet_safe`: a CSV cell that starts like a formula (``=``,
  ``+``, ``-``, ``@``, tab, CR) gets a leading apostrophe, so Excel or
  LibreOffice shows it as text instead of running it (api/static/js/export.js).
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def shown(text: str) -> str:
    """``text`` with every non-printable character replaced by U+FFFD."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else REPLACEMENT for c in text)


def spreadsheet_safe(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula."""
    return f"'{text}" if text.startswith(FORMULA_START) else text
