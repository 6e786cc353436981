"""How the API hands a job to the workers: a bare Celery client that sends ``hydra.run_job(<job id>)``
by name (the API never imports the worker), after the row is committed and with bounded retries; a send
that fails is left to the reaper. Delivery semantics: docs/DELIVERY.md.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Protocol

from service.settings import Settings
from service.tasks import RUN_JOB_TASK

log = logging.getLogger(__name__)


class JobQueue(Protocol):
    def enqueue(self, job_id: str, queue: str | None = None) -> bool:
        """Send the job to the workers (``queue``: its routed queue, default ``queue_name``); ``False``
        if the broker did not take it (the sweep will)."""
        ...


class CeleryJobQueue:
    """Publishes ``hydra.run_job(job_id)`` to the settings' broker and queue."""

    def __init__(self, settings: Settings) -> None:
        from celery import Celery

        self.settings = settings
        self.app = Celery("hydra-api", broker=settings.broker_url, backend=settings.result_backend)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=3,
            broker_connection_retry_on_startup=False,
            task_publish_retry=True,
            task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
            task_ignore_result=True,
        )

    def enqueue(self, job_id: str, queue: str | None = None) -> bool:
        try:
            self.app.send_task(
                RUN_JOB_TASK,
                args=[job_id],
                queue=queue or self.settings.queue_name,
                expires=self.settings.task_expires_seconds,
            )
        except Exception as exc:  # noqa: BLE001 - any broker failure: the sweep re-sends
            log.warning("could not enqueue job %s (%s); the enqueue sweep will retry", job_id, exc)
            return False
        return True

    def ping(self) -> None:
        """Raise if the broker cannot be reached (for ``/readyz``)."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)


class DisabledJobQueue:
    """Used when ``enqueue_enabled`` is off (benchmarks): jobs are stored, never sent."""

    def enqueue(self, job_id: str, queue: str | None = None) -> bool:
        return False

    def ping(self) -> None:
        return None


@lru_cache(maxsize=8)
def build_job_queue(settings: Settings) -> JobQueue:
    """One client (and broker connection pool) per settings object."""
    return CeleryJobQueue(settings) if settings.enqueue_enabled else DisabledJobQueue()
