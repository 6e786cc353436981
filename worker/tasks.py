"""Celery tasks. They take a job id only and re-read everything from the row (``worker.runner``);
``hydra.run_job`` is safe to deliver any number of times. Delivery semantics: docs/DELIVERY.md.
"""

from __future__ import annotations

import logging

from celery.exceptions import Reject

from service.settings import get_settings
from worker.celery_app import REAP_TASK, RUN_JOB_TASK, app
from worker.signals import shutdown_requested, sigterm_stops_the_run

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job_task(job_id: str) -> str:
    """Run (or resume) one attempt of ``job_id``; returns the outcome, for the worker's log."""
    from worker.runner import run_attempt

    if shutdown_requested.is_set():
        # A worker that is stopping can still be handed a message (the job it just gave back, with the
        # solo pool). Give the message back to the broker untouched for the next worker.
        raise Reject("worker shutting down", requeue=True)
    with sigterm_stops_the_run():
        outcome = run_attempt(get_settings(), str(job_id), app=app)
    log.info("job %s: %s", job_id, outcome)
    return outcome


@app.task(name=REAP_TASK, acks_late=False, ignore_result=True)
def reap_task() -> dict[str, list[str]]:
    """The periodic sweep (Celery beat): requeue stale leases, re-send queued jobs without a message."""
    from worker.reaper import sweep

    return sweep(get_settings(), app)
