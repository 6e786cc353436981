"""The Celery application: ``acks_late`` + ``reject_on_worker_lost``, prefetch 1, message expiry, and a
Redis visibility timeout of an explicit hour, deliberately not above the longest job (the lease on the
job row makes every redelivery harmless). Delivery semantics: docs/DELIVERY.md.
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings, get_settings
from service.tasks import REAP_TASK, RUN_JOB_TASK

MAINTENANCE_QUEUE = "maintenance"
REAP_INTERVAL_S = 15.0
REDIS_VISIBILITY_TIMEOUT_S = 3600


def _transport_options(broker_url: str) -> dict[str, object]:
    """Redis: an explicit visibility timeout (see the module docstring). The SQLAlchemy transport
    hands its options to ``create_engine`` and has no such timeout: it deletes a message on delivery,
    so a lost worker's job is always brought back by the reaper."""
    if broker_url.split("://", 1)[0] in ("redis", "rediss", "sentinel"):
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
    return {}


def create_celery(settings: Settings | None = None) -> Celery:
    """Build the Celery app for ``settings`` (the process's settings by default)."""
    s = settings or get_settings()
    app = Celery("hydra", broker=s.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={
            RUN_JOB_TASK: {"queue": s.queue_name},
            REAP_TASK: {"queue": MAINTENANCE_QUEUE},
        },
        task_default_queue=s.queue_name,
        # The job row holds the outcome; a result backend would be a second, weaker copy.
        task_ignore_result=True,
        result_backend=s.result_backend,
        broker_transport_options=_transport_options(s.broker_url),
        broker_connection_retry_on_startup=True,
        # A lost broker connection must not kill hours of training: the lease keeps duplicates out.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        beat_schedule={
            "hydra-reaper": {
                "task": REAP_TASK,
                "schedule": REAP_INTERVAL_S,
                # a sweep nobody ran in time is worthless: the next one does the same work
                "options": {"expires": REAP_INTERVAL_S},
            }
        },
    )
    return app


app = create_celery()

# Log lines with the job, attempt and tenant of each, JSON with HYDRA_LOG_JSON (service/logs.py).
from service.logs import connect_celery_signals  # noqa: E402

connect_celery_signals(get_settings().log_json)

# The worker's own heartbeat (busy or idle), read by /readyz: worker/liveness.py.
import worker.liveness  # noqa: E402, F401
