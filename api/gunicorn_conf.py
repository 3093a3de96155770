"""gunicorn settings for the API: ``gunicorn -c python:api.gunicorn_conf api.wsgi:app``.

gevent workers by default (``WEB_WORKER_CLASS``): every connection is a
greenlet, so slow or stalled uploads cost a little memory each, not one of a
few threads, and cannot starve ``/healthz`` or other clients (issue 21: 16
stalled uploads took every thread of the former ``gthread`` set-up). A body
that sends nothing for ``UPLOAD_IDLE_TIMEOUT_S`` is answered 408 and closed
(:mod:`api.body_guard`). Uploads may take far longer than ``WEB_TIMEOUT_S``,
the worker's heartbeat. Why gevent and what it costs: docs/hardening.md.
``WEB_WORKER_CLASS=gthread`` brings back ``WEB_THREADS`` threads per process.

gunicorn answers some requests itself (a request line or headers over its
limits, a malformed request, a crash before Flask runs); those answers are
HTML in gunicorn, and JSON here (:func:`write_json_error`), like every answer
of the API.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import util

from config import get_settings
from config.metrics import mark_process_dead, prepare_multiprocess_dir

_settings = get_settings()
prepare_multiprocess_dir("api")  # before any worker imports prometheus_client

bind = f"{_settings.api_host}:{_settings.api_port}"
workers = _settings.web_concurrency
worker_class = _settings.web_worker_class
threads = _settings.web_threads  # gthread only
worker_connections = _settings.web_worker_connections  # gevent only
timeout = _settings.web_timeout_s  # the worker's heartbeat, not a per-request limit
graceful_timeout = 30
keepalive = 5
accesslog = "-"
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn 27's control socket lives in $HOME and every gunicorn on the host would
# replace the others' one; the API does not use it.
control_socket_disable = True


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answer, as ``{"error": {"code", "message"}}``."""
    message = f"{reason}: {mesg}" if mesg else reason
    from api.errors import error_body  # not at import: api/ loads prometheus_client

    body = json.dumps(error_body(status_int, message)).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def post_fork(_server: Any, _worker: Any) -> None:
    """In each worker process: gunicorn's error pages become JSON."""
    util.write_error = write_json_error


def child_exit(_server: Any, worker: Any) -> None:
    """A gunicorn worker ended: drop its live gauges from the metrics."""
    mark_process_dead(worker.pid)
