"""Application factory: settings, JSON errors, blueprints."""

from __future__ import annotations

from typing import Any

from apiflask import APIFlask, HTTPError

from config import get_settings


def _error_body(error: HTTPError) -> tuple[dict[str, Any], int, Any]:
    """Every error, ours or Werkzeug's, as ``{"error": {"code", "message"}}``."""
    body: dict[str, Any] = {"code": error.status_code, "message": error.message}
    if error.detail:
        body["detail"] = error.detail
    return {"error": body}, error.status_code, error.headers


def _too_large(_error: Exception) -> tuple[dict[str, Any], int]:
    """Werkzeug's 413 names no limit; ours does."""
    limit_mb = get_settings().max_upload_bytes // 1024**2
    message = f"upload too large: the limit is {limit_mb} MB (MAX_UPLOAD_MB)"
    return {"error": {"code": 413, "message": message}}, 413


def create_app() -> APIFlask:
    """Build the API from the process settings (environment variables)."""
    settings = get_settings()
    app = APIFlask(
        __name__,
        title="Lung-CT classifier API",
        version="1.0.0",
        spec_path="/openapi.json",
        docs_path="/docs",
    )
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        VALIDATION_ERROR_STATUS_CODE=400,
        VALIDATION_ERROR_DESCRIPTION="Invalid request",
        JSON_SORT_KEYS=False,
        INFO={
            "description": "Submit CT slices or zipped studies, poll jobs, read predictions. "
            "Research use only; not for clinical diagnosis."
        },
    )
    app.error_processor(_error_body)
    app.register_error_handler(413, _too_large)
    settings.storage_dir.mkdir(parents=True, exist_ok=True)

    from api import health, jobs, model_routes, ui

    for module in (jobs, model_routes, health, ui):
        app.register_blueprint(module.bp)
    return app
