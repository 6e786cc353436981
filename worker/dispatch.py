"""Sending a job's message, and handing a job back to the queue.

The message says only "look at job X": everything else is read from the row when it arrives, so
sending it again is always safe (only one ``claim_job`` can win). Each message expires after
``task_expires_seconds``; a worker drops an expired one unread, and the reaper re-sends a job that is
still queued by then, so duplicates do not pile up in the broker behind a long-running job.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session

from service.db import jobs as db_jobs
from service.db.base import Job, JobEvent, JobStatus, utcnow
from service.db.session import session_scope
from service.settings import Settings
from worker.celery_app import RUN_JOB_TASK

log = logging.getLogger(__name__)


def send_job(app: Celery, settings: Settings, job_id: str) -> None:
    """Send ``hydra.run_job(job_id)`` to the job queue and note it on the row."""
    app.send_task(RUN_JOB_TASK, args=[job_id], queue=settings.queue_name, expires=settings.task_expires_seconds)
    with session_scope(settings) as session:
        db_jobs.mark_enqueued(session, job_id)


def _release_job_bridge(session: Session, job_id: str, owner: str, attempt: int, reason: str) -> bool:
    """Put a running job back to ``queued`` from the attempt holding its lease (worker shutting down).

    A worker that was asked to stop did not fail, and ``max_attempts`` exists to stop jobs that *kill*
    their worker, so the handed-back attempt is not counted against it: ``max_attempts`` grows by one.
    Attempt numbers stay monotonic (the next claim is ``attempt + 1``, with a new owner), so logs and
    events never show two attempts under one number.

    Bridge: ``service.db.jobs`` has no release function yet; this belongs there (all SQL in ``db/``).
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.lease_owner == owner,
            Job.attempt == attempt,
            Job.status == JobStatus.RUNNING.value,
        )
        .values(
            status=JobStatus.QUEUED.value,
            max_attempts=Job.max_attempts + 1,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
            updated_at=now,
        ),
        execution_options={"synchronize_session": False},
    )
    done = result.rowcount == 1
    if done:
        payload: dict[str, Any] = {
            "status": JobStatus.QUEUED.value,
            "attempt": attempt,
            "reason": reason,
            "counts_against_max_attempts": False,
        }
        session.add(JobEvent(job_id=job_id, kind="status", payload=payload, created_at=now))
    session.commit()
    return done


release_job = getattr(db_jobs, "release_job", _release_job_bridge)
