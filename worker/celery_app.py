"""The Celery application: how job messages travel, and why the broker is never the record of a job.

Delivery choices (facts measured on Celery 5.7 / kombu 5.7 / Redis 7 are in ARCHITECTURE.md):

* ``task_acks_late=True`` + ``task_reject_on_worker_lost=True``: the message is acknowledged only
  when the task returns, and a pool child killed by SIGKILL (the OOM killer) puts it back instead of
  losing it. ``acks_late`` alone loses it.
* ``worker_prefetch_multiplier=1``: a worker that is training for hours holds no other job's message
  hostage; the next job goes to an idle worker.
* Redis ``visibility_timeout`` is left at an explicit hour and deliberately *not* raised above the
  longest job. A job can run for days and no timeout is "long enough"; a long one also delays the
  return of the message of a worker that died as a whole. Instead:

  - the job row, not the message, is the truth. ``hydra.run_job`` takes only the job id and claims the
    row atomically (``claim_job``); a claim is refused while another attempt holds the lease, so a
    redelivered message (visibility timeout, restart, a reaper re-send) returns in milliseconds and
    never trains a second copy of a running job;
  - the worker heartbeats its lease every ``lease_seconds / 4``; every write is conditioned on the
    lease, so an attempt that lost it is stopped and can write nothing more;
  - attempts are counted in the row and capped by ``max_attempts``: a job that keeps killing its
    worker (and so keeps being redelivered) ends ``failed`` with a reason instead of looping forever;
  - the reaper (``worker.reaper``) requeues jobs whose lease went stale and re-sends queued jobs that
    have no live message, so a lost message (whole worker killed, SQL broker, Redis flush) costs at most
    one lease period plus one sweep, not an hour;
  - the run resumes from its last per-epoch checkpoint in object storage, so a second delivery costs
    at most one epoch of work, never a restart from scratch.

Messages carry an expiry (``task_expires_seconds``): a stale duplicate is dropped by the worker, and
the reaper re-sends a queued job whose message expired.
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
