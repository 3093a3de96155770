"""Celery configuration shared by the API (producer) and the workers (consumers).

Kept here, apart from ``worker/``, so the API can enqueue by task name without
importing worker code (which would pull in TensorFlow).
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings

RUN_JOB_TASK = "lungct.run_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Broker, serialization and reliability options, identical on both sides."""
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_default_queue": settings.celery_queue,
        "task_routes": {RUN_JOB_TASK: {"queue": settings.celery_queue}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        # Model loading in a fresh child can take longer than Celery's 4 s default.
        "worker_proc_alive_timeout": 120.0,
        "worker_hijack_root_logger": False,
        # A hung decoder or model call must not keep a job "running" forever.
        "task_soft_time_limit": settings.job_time_limit_s,
        "task_time_limit": settings.job_time_limit_s + 60,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_transport_options": {"visibility_timeout": 6 * 3600},
    }
