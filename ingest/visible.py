"""Text from uploads as it may be stored and shown: no control or formatting characters.

Archive member names are chosen by whoever built the zip. CR, LF and ESC in
one break log lines and terminals; the right-to-left override (U+202E) shows
``scan<U+202E>gnp.exe`` as ``scanexe.png``. Every character that Python does
not call printable (controls, format characters such as the bidirectional
overrides and zero-width spaces, line and paragraph separators, unassigned
code points, every space but the plain one) becomes U+FFFD, visibly.
The web UI (api/static/js/dom.js) and the ``lungct`` CLI (client/text.py)
apply the same rule to what they display.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


def visible(text: str) -> str:
    """``text`` with every non-printable character replaced by U+FFFD."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else REPLACEMENT for c in text)


def visible_json(value: Any) -> Any:
    """:func:`visible` applied to every string in a JSON-like value (keys included)."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, list):
        return [visible_json(v) for v in value]
    if isinstance(value, dict):
        return {visible_json(k): visible_json(v) for k, v in value.items()}
    return value
