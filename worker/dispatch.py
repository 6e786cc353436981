"""Sending a job's message (the job id only, expiring after ``task_expires_seconds``), and handing a job
back to the queue; sending again is always safe, since only one ``claim_job`` can win. Delivery
semantics: docs/DELIVERY.md.
"""

from __future__ import annotations

import logging

from celery import Celery

from service.db import jobs as db_jobs
from service.db.session import session_scope
from service.routing import job_gpus, queue_for
from service.settings import Settings
from worker.celery_app import RUN_JOB_TASK

log = logging.getLogger(__name__)


def send_job(app: Celery, settings: Settings, job_id: str) -> None:
    """Send ``hydra.run_job(job_id)`` to the job's queue (by its GPU count, service/routing.py) and note
    it on the row."""
    with session_scope(settings) as session:
        job = db_jobs.get_job(session, None, job_id)
        spec = dict(job.spec) if job is not None else {}
    queue = queue_for(settings, spec)
    if queue is None:
        # Accepted when a queue served it; the configuration changed since. The default queue's worker
        # refuses it with the field named (too few GPUs), rather than the job waiting for nobody.
        log.error(
            "job %s needs %d GPUs and no queue serves them now; sent to %s", job_id, job_gpus(spec), settings.queue_name
        )
        queue = settings.queue_name
    app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue, expires=settings.task_expires_seconds)
    with session_scope(settings) as session:
        db_jobs.mark_enqueued(session, job_id)


release_job = db_jobs.release_job  # re-exported: the worker hands jobs back through here
