"""The body of every error answer, built in one place: ``{"error": {code, message, detail?}}``.

The app's error processor, its own handlers, the auth error and gunicorn's
answers (api/gunicorn_conf.py) all use :func:`error_body`, so clients parse
one shape whatever refused them (documented as ``ERROR_SCHEMA`` in api/schemas.py).
"""

from __future__ import annotations

from typing import Any


def error_body(code: int, message: str, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of an error answer with HTTP status ``code``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if detail:
        error["detail"] = detail
    return {"error": error}
