"""Headers every answer carries, and a JSON-friendly answer to ``OPTIONS``.

The web UI and ``/docs`` load nothing from other hosts, so a strict
Content-Security-Policy fits: scripts, styles and requests from this origin
only, images also from ``blob:`` (slice images the UI fetches with the API
key) and ``data:``, no framing (clickjacking), no ``<base>`` or ``<object>``.
APIFlask's Swagger page needs its inline start-up script and style, so
``/docs`` alone also allows inline ones. ``nosniff``, ``X-Frame-Options`` (for
browsers without ``frame-ancestors``) and ``Referrer-Policy`` go on every
answer, JSON included: they cost nothing there.
"""

from __future__ import annotations

from apiflask import APIFlask
from flask import Response, request

STRICT_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = STRICT_CSP + "; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'"
DOCS_PATH = "/docs"


class ServiceApp(APIFlask):
    """APIFlask whose automatic ``OPTIONS`` answer is 204 with ``Allow``, not an empty HTML page."""

    def make_default_options_response(self) -> Response:
        response = super().make_default_options_response()
        response.status_code = 204
        response.headers.pop("Content-Type", None)
        return response


def security_headers(response: Response) -> Response:
    """Add the security headers (an ``after_request`` hook); a view's own ones are kept."""
    csp = DOCS_CSP if request.path == DOCS_PATH else STRICT_CSP
    response.headers.setdefault("Content-Security-Policy", csp)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response
