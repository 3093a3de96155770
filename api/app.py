"""Application factory: settings, JSON errors, rate limits, blueprints."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from apiflask import APIFlask, HTTPError
from flask import Response, request
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from flask_limiter.util import get_remote_address
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter
from redis import Redis, RedisError
from werkzeug.exceptions import RequestEntityTooLarge

from api import context
from api.auth import bearer_token, hash_key
from api.body_guard import BodyGuard
from api.docs import docs_config
from api.errors import error_body
from api.schemas import ERROR_SCHEMA
from api.uploads import UploadRequest
from api.web_headers import ServiceApp, security_headers
from config import Settings, get_settings
from storage import open_storage


def _error_body(error: HTTPError) -> tuple[dict[str, Any], int, Any]:
    """Every error, ours or Werkzeug's, as ``{"error": {"code", "message", "detail"?}}``."""
    message = error.message
    if error.status_code == 400 and error.detail and message == "Invalid request":
        message = f"Invalid request: {_first_problem(error.detail)}"
    detail = _capped(error.detail) if error.detail else None
    body = error_body(error.status_code, message or "error", detail)
    return body, error.status_code, error.headers


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
    from api.batch import SUBMIT_ENDPOINT  # loaded by create_app (see there)

    settings = context.settings()
    limit = request.max_content_length or settings.max_upload_bytes
    if request.content_length is not None and request.content_length <= limit:
        message = (
            f"too many form fields: at most {settings.max_form_parts} are accepted "
            "(send the upload as the multipart field 'file', plus 'model')"
        )
        if request.endpoint == SUBMIT_ENDPOINT:
            message = (
                f"too many form fields: a batch takes at most {settings.batch_max_files} "
                "files (BATCH_MAX_FILES), each with an optional 'idempotency_key', plus 'model'"
            )
        return error_body(400, message), 400
    message = f"upload too large: the limit is {limit / 1024**2:g} MB (MAX_UPLOAD_MB)"
    return error_body(413, message), 413


def _rate_limited(error: RateLimitExceeded) -> tuple[dict[str, Any], int]:
    """429 naming the limit and its setting (:func:`_limit_headers` adds Retry-After)."""
    setting = "RATE_LIMIT_SUBMIT" if request.method == "POST" else "RATE_LIMIT_READ"
    message = (
        f"rate limit exceeded: {error.limit.limit} per API key ({setting}); "
        "retry after the number of seconds in Retry-After"
    )
    return error_body(429, message), 429


LIMITER_TIMEOUT_S = 0.5


def rate_limit_key() -> str:
    """Rate limits count per API key (its hash), or per address without one."""
    token = bearer_token()
    return "key:" + hash_key(token)[:32] if token else "ip:" + get_remote_address()


def _limiter(app: APIFlask, settings: Settings) -> Limiter:
    """Per-key limits on /api/ routes, counted in Redis so every API process shares them."""
    from api.batch import SUBMIT_ENDPOINT  # loaded by create_app (see there)

    timeout_s = min(LIMITER_TIMEOUT_S, settings.broker_timeout_s)
    redis_options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    limiter = Limiter(
        rate_limit_key,
        default_limits=[settings.rate_limit_read],
        default_limits_exempt_when=lambda: not request.path.startswith("/api/"),
        storage_uri=settings.redis_url,
        # a limit is best effort (swallow_errors): a Redis that does not answer
        # must cost a request a fraction of a second, not BROKER_TIMEOUT_S
        storage_options=redis_options,
        # Flask-Limiter's own headers put Retry-After on every answer (a 202 said
        # "Retry-After: 60") and raised a view's own Retry-After to its window:
        # _limit_headers writes them instead.
        headers_enabled=False,
        swallow_errors=True,
        key_prefix=f"lungct-limits:{settings.celery_queue}",
    )
    limiter.init_app(app)
    app.after_request(lambda response: _limit_headers(limiter, response))
    # A decorated limit is checked by the wrapper the decorator returns, so that
    # wrapper must be the registered view (decorating jobs.submit_job alone left
    # submits unlimited: the route still called the undecorated function).
    submit_limit = limiter.limit(lambda: settings.rate_limit_submit, methods=["POST"])
    # Flask types a view as sync or async; this one is sync, as the decorator needs.
    # A batch counts once here; its files count against the per-owner cap (api/batch.py).
    for endpoint in ("jobs.submit_job", SUBMIT_ENDPOINT):
        view = cast(Callable[..., ResponseReturnValue], app.view_functions[endpoint])
        app.view_functions[endpoint] = submit_limit(view)
    return limiter


def _limit_headers(limiter: Limiter, response: Response) -> Response:
    """X-RateLimit-Limit/-Remaining/-Reset on every limited answer, so clients can pace
    themselves; Retry-After only on the limiter's own 429 (never on a 2xx, and a view's
    own 429, such as the active-jobs cap, keeps the Retry-After it chose)."""
    current = limiter.current_limit
    if current is None:  # not a limited route, or Redis unreachable (limits swallowed)
        return response
    window = _window(limiter, current)
    if window is None:  # Redis went away since the limit was counted: no headers
        return response
    remaining, reset = window
    response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
    response.headers["X-RateLimit-Remaining"] = str(remaining)
    response.headers["X-RateLimit-Reset"] = str(int(reset))
    if response.status_code == 429 and "Retry-After" not in response.headers:
        wait = math.ceil(reset - time.time())  # never past the limit's window
        response.headers["Retry-After"] = str(max(1, min(wait, current.limit.get_expiry())))
    return response


def _window(limiter: Limiter, current: RequestLimit) -> tuple[int, int] | None:
    """What is left of the request's limit and when its window resets (epoch seconds).

    Flask-Limiter reads the fixed window's counter with a GET and then a TTL, two
    round trips to Redis after the one that counted the request; here they go in
    one pipeline, with the same arithmetic as its ``RequestLimit.reset_at`` and
    ``.remaining``. Another strategy or storage is asked the usual way.
    """
    storage, strategy = limiter.storage, limiter.limiter
    if not (isinstance(storage, RedisStorage) and isinstance(strategy, FixedWindowRateLimiter)):
        return current.remaining, current.reset_at
    key = storage.prefixed_key(current.key)
    pipe = cast(Redis, storage.get_connection(True)).pipeline(transaction=False)
    pipe.get(key)
    pipe.ttl(key)
    try:
        count, ttl = pipe.execute()
    except RedisError:
        return None
    return max(0, current.limit.amount - int(count or 0)), int(max(ttl, 0) + time.time() + 1)


def create_app(settings: Settings | None = None) -> APIFlask:
    """Build the API from ``settings`` (default: the environment)."""
    settings = settings or get_settings()
    app = ServiceApp(
        __name__,
        title="Lung-CT classifier API",
        version="1.0.0",
        spec_path="/openapi.json",
        docs_path="/docs",
    )
    app.request_class = UploadRequest
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
    if isinstance(app.json, DefaultJSONProvider):  # always: Flask's own provider
        app.json.sort_keys = False
    app.error_processor(_error_body)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    open_storage(settings).prepare()  # the local folder; nothing for S3

    # Imported here, not at the top: api/ modules load prometheus_client, which must
    # come after gunicorn_conf has set up its multiprocess folder (config/metrics.py).
    from api import (
        admin,
        batch,
        dicom_routes,
        dicomweb,
        docs,
        health,
        jobs,
        metrics,
        model_routes,
        ui,
    )

    modules = (jobs, batch, model_routes, admin, health, ui, docs, metrics, dicom_routes, dicomweb)
    for module in modules:
        app.register_blueprint(module.bp)
    metrics.init_app(app)
    app.after_request(security_headers)
    app.extensions["lungct_limiter"] = _limiter(app, settings)
    app.wsgi_app = BodyGuard(app.wsgi_app, settings.upload_idle_timeout_s)  # type: ignore[method-assign]
    # requests held by GET /api/v1/jobs/<id>?wait=S (api/jobs.py), per process
    # (with gthread, one thread always stays free for other requests)
    waiters = settings.job_waiters_per_process
    if settings.web_worker_class == "gthread":
        waiters = min(waiters, settings.web_threads - 1)
    app.extensions["lungct_waiters"] = threading.BoundedSemaphore(waiters)
    return app
