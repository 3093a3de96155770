"""Swagger UI served from the project's own dependencies, so ``/docs`` works offline.

APIFlask's docs page loads its script and style sheet from a CDN by default;
here they come from the ``swagger-ui`` distribution that the flask-swagger-ui
package ships (only its static files are used).
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from apiflask import APIBlueprint
from flask import Response, send_from_directory

SWAGGER_DIST = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
ASSETS = "/docs/assets"

bp = APIBlueprint("docs_assets", __name__, enable_openapi=False)


@bp.get(f"{ASSETS}/<path:name>")
def asset(name: str) -> Response:
    """A file of the Swagger UI distribution (cached by browsers for a day)."""
    return send_from_directory(SWAGGER_DIST, name, max_age=86400)


def docs_config() -> dict[str, str]:
    """APIFlask settings that point the docs page at the local assets."""
    return {
        "SWAGGER_UI_CSS": f"{ASSETS}/swagger-ui.css",
        "SWAGGER_UI_BUNDLE_JS": f"{ASSETS}/swagger-ui-bundle.js",
        "SWAGGER_UI_STANDALONE_PRESET_JS": f"{ASSETS}/swagger-ui-standalone-preset.js",
        "DOCS_FAVICON": f"{ASSETS}/favicon-32x32.png",
    }
