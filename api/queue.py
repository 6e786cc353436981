"""How the API hands a job to the workers: a bare Celery client that sends ``hydra.run_job`` by name.

The API never imports the worker package (no torch training code, no task registry in the web
process); it only needs a broker connection and the task's name. The message carries the job id
alone: the row already holds the spec, and the worker re-reads it on entry.

Publishing is best-effort by design. The job row is committed before we publish, so a broker outage
costs latency, not the job: ``service.db.jobs.list_unsent_queued`` finds rows never marked enqueued
and the worker's sweep sends them. Publishing is therefore bounded (short timeouts, few retries) so a
dead broker cannot hold an HTTP request for minutes.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Protocol

from service.settings import Settings
from service.tasks import RUN_JOB_TASK

log = logging.getLogger(__name__)


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> bool:
        """Send the job to the workers; ``False`` if the broker did not take it (the sweep will)."""
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

    def enqueue(self, job_id: str) -> bool:
        try:
            self.app.send_task(
                RUN_JOB_TASK,
                args=[job_id],
                queue=self.settings.queue_name,
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

    def enqueue(self, job_id: str) -> bool:
        return False

    def ping(self) -> None:
        return None


@lru_cache(maxsize=8)
def build_job_queue(settings: Settings) -> JobQueue:
    """One client (and broker connection pool) per settings object."""
    return CeleryJobQueue(settings) if settings.enqueue_enabled else DisabledJobQueue()
