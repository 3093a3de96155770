"""Application factory: settings, JSON errors, rate limits, blueprints."""

from __future__ import annotations

import threading
from typing import Any

from apiflask import APIFlask, HTTPError
from flask import request
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import RequestEntityTooLarge

from api import context
from api.auth import bearer_token, hash_key
from api.docs import docs_config
from api.schemas import ERROR_SCHEMA
from config import Settings, get_settings
from storage import open_storage


def _error_body(error: HTTPError) -> tuple[dict[str, Any], int, Any]:
    """Every error, ours or Werkzeug's, as ``{"error": {"code", "message", "detail"?}}``."""
    message = error.message
    if error.status_code == 400 and error.detail and message == "Invalid request":
        message = f"Invalid request: {_first_problem(error.detail)}"
    body: dict[str, Any] = {"code": error.status_code, "message": message}
    if error.detail:
        body["detail"] = _capped(error.detail)
    return {"error": body}, error.status_code, error.headers


MAX_DETAIL_FIELDS = 20


def _capped(detail: dict[str, Any]) -> dict[str, Any]:
    """At most MAX_DETAIL_FIELDS problems per location (5000 unknown fields make no report)."""
    out: dict[str, Any] = {}
    for location, fields in detail.items():
        if isinstance(fields, dict) and len(fields) > MAX_DETAIL_FIELDS:
            kept = dict(list(fields.items())[:MAX_DETAIL_FIELDS])
            kept["..."] = [f"and {len(fields) - MAX_DETAIL_FIELDS} more"]
            out[location] = kept
        else:
            out[location] = fields
    return out


def _first_problem(detail: dict[str, Any]) -> str:
    """'field: message' of the first validation problem, for a readable message."""
    for fields in detail.values():
        if isinstance(fields, dict):
            for name, problems in fields.items():
                text = problems[0] if isinstance(problems, list) and problems else problems
                return f"{name}: {text}"
    return "see detail"


def _too_large(error: RequestEntityTooLarge) -> tuple[dict[str, Any], int]:
    """Werkzeug's 413 names no limit and also covers 'too many form parts'; ours say which."""
    settings = context.settings()
    limit = request.max_content_length or settings.max_upload_bytes
    if request.content_length is not None and request.content_length <= limit:
        message = (
            f"too many form fields: at most {settings.max_form_parts} are accepted "
            "(send the upload as the multipart field 'file', plus 'model')"
        )
        return {"error": {"code": 400, "message": message}}, 400
    message = f"upload too large: the limit is {limit / 1024**2:g} MB (MAX_UPLOAD_MB)"
    return {"error": {"code": 413, "message": message}}, 413


def _rate_limited(error: RateLimitExceeded) -> tuple[dict[str, Any], int]:
    """429 naming the limit and its setting (Flask-Limiter adds Retry-After and X-RateLimit-*)."""
    setting = "RATE_LIMIT_SUBMIT" if request.method == "POST" else "RATE_LIMIT_READ"
    message = (
        f"rate limit exceeded: {error.limit.limit} per API key ({setting}); "
        "retry after the number of seconds in Retry-After"
    )
    return {"error": {"code": 429, "message": message}}, 429


def rate_limit_key() -> str:
    """Rate limits count per API key (its hash), or per address without one."""
    token = bearer_token()
    return "key:" + hash_key(token)[:32] if token else "ip:" + get_remote_address()


def _limiter(app: APIFlask, settings: Settings) -> Limiter:
    """Per-key limits on /api/ routes, counted in Redis so every API process shares them."""
    limiter = Limiter(
        rate_limit_key,
        default_limits=[settings.rate_limit_read],
        default_limits_exempt_when=lambda: not request.path.startswith("/api/"),
        storage_uri=settings.redis_url,
        storage_options={"socket_timeout": settings.broker_timeout_s},
        headers_enabled=True,
        swallow_errors=True,
        key_prefix=f"lungct-limits:{settings.celery_queue}",
    )
    limiter.init_app(app)
    # A decorated limit is checked by the wrapper the decorator returns, so that
    # wrapper must be the registered view (decorating jobs.submit_job alone left
    # submits unlimited: the route still called the undecorated function).
    submit_limit = limiter.limit(lambda: settings.rate_limit_submit, methods=["POST"])
    app.view_functions["jobs.submit_job"] = submit_limit(app.view_functions["jobs.submit_job"])
    return limiter


def create_app(settings: Settings | None = None) -> APIFlask:
    """Build the API from ``settings`` (default: the environment)."""
    settings = settings or get_settings()
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
        MAX_FORM_PARTS=settings.max_form_parts,
        VALIDATION_ERROR_STATUS_CODE=400,
        VALIDATION_ERROR_DESCRIPTION="Invalid request",
        JSON_SORT_KEYS=False,
        INFO={
            "description": "Submit CT slices or zipped studies, poll jobs, read predictions. "
            "Every /api/v1 route needs `Authorization: Bearer <API key>`. "
            "Research use only; not for clinical diagnosis."
        },
    )
    app.config.update(
        docs_config(), HTTP_ERROR_SCHEMA=ERROR_SCHEMA, VALIDATION_ERROR_SCHEMA=ERROR_SCHEMA
    )
    app.json.sort_keys = False
    app.error_processor(_error_body)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    open_storage(settings).prepare()  # the local folder; nothing for S3

    from api import admin, dicom_routes, dicomweb, docs, health, jobs, metrics, model_routes, ui

    for module in (jobs, model_routes, admin, health, ui, docs, metrics, dicom_routes, dicomweb):
        app.register_blueprint(module.bp)
    metrics.init_app(app)
    app.extensions["lungct_limiter"] = _limiter(app, settings)
    # requests held by GET /api/v1/jobs/<id>?wait=S (api/jobs.py), per process
    # (one thread always stays free for other requests)
    waiters = min(settings.job_waiters_per_process, settings.web_threads - 1)
    app.extensions["lungct_waiters"] = threading.BoundedSemaphore(waiters)
    return app
