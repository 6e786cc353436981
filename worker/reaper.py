"""The reaper: requeues jobs whose lease expired, re-sends queued jobs that have no live message (and
every queued job when Redis's ``run_id`` shows the broker restarted), so a lost worker or message costs
minutes, not a job. It runs as the beat entry ``hydra.reap``, in a thread of the embedded launcher, or
as ``python -m worker.reaper``; delivery semantics: docs/DELIVERY.md.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from service.db import jobs as db_jobs
from service.db.session import session_scope
from service.settings import Settings, get_settings
from worker.celery_app import REAP_INTERVAL_S
from worker.dispatch import send_job

log = logging.getLogger(__name__)

UNSENT_AFTER_S = 60.0
_BROKER_RUN_IDS: dict[str, str] = {}  # broker URL -> the run id this process saw last


def broker_run_id(app: Celery) -> str | None:
    """The identity of the running broker process (Redis ``run_id``, new at every start); ``None``
    for brokers without one (the SQL transport keeps its messages in the database)."""
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        return str(client.info("server").get("run_id"))
    finally:
        client.close()


def broker_restarted(app: Celery) -> bool:
    """Whether the broker is another process than at this process's previous sweep."""
    try:
        current = broker_run_id(app)
    except Exception:  # noqa: BLE001 - broker down: the next sweep looks again
        return False
    if current is None:
        return False
    url = str(app.conf.broker_url)
    previous = _BROKER_RUN_IDS.get(url)
    _BROKER_RUN_IDS[url] = current
    return previous is not None and previous != current


def sweep(settings: Settings, app: Celery, unsent_after_s: float = UNSENT_AFTER_S) -> dict[str, list[str]]:
    """One pass: requeue stale leases and (re-)send queued jobs that have no live message."""
    restarted = broker_restarted(app)
    with session_scope(settings) as session:
        requeued = db_jobs.requeue_stale_jobs(session)
        # a message older than its expiry was dropped unread; a little slack for clock skew
        resend_after: float | None = settings.task_expires_seconds + 60 if settings.task_expires_seconds else None
        if restarted:  # whatever the broker held may be gone: every queued job gets a message again
            resend_after, unsent_after_s = 0.0, 0.0
            log.warning("reaper: the broker restarted (new run id); re-sending every queued job")
        unsent = db_jobs.list_unsent_queued(session, unsent_after_s, resend_after_s=resend_after)
    to_send = list(dict.fromkeys([*requeued, *unsent]))
    sent: list[str] = []
    for job_id in to_send:
        try:
            send_job(app, settings, job_id)
            sent.append(job_id)
        except Exception:
            log.warning("reaper could not send job %s", job_id, exc_info=True)
    if requeued or sent:
        log.info("reaper: requeued %s, sent %s", requeued, sent)
    return {"requeued": requeued, "sent": sent}


def run_forever(
    settings: Settings,
    app: Celery,
    stop: threading.Event,
    interval_s: float = REAP_INTERVAL_S,
    unsent_after_s: float = UNSENT_AFTER_S,
) -> None:
    """Sweep every ``interval_s`` until ``stop`` is set; a failing sweep is logged and retried."""
    while not stop.is_set():
        try:
            sweep(settings, app, unsent_after_s)
        except Exception:
            log.warning("reaper sweep failed", exc_info=True)
        stop.wait(interval_s)


def start_reaper_thread(
    settings: Settings, app: Celery, interval_s: float = REAP_INTERVAL_S, unsent_after_s: float = UNSENT_AFTER_S
) -> tuple[threading.Thread, threading.Event]:
    """Run the reaper in a daemon thread (the embedded launcher); set the returned event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_forever, args=(settings, app, stop, interval_s, unsent_after_s), name="hydra-reaper", daemon=True
    )
    thread.start()
    return thread, stop


def main() -> None:
    """``python -m worker.reaper``: the sweep as a process of its own (an alternative to beat)."""
    from worker.celery_app import app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    try:
        run_forever(get_settings(), app, stop)
    except KeyboardInterrupt:
        stop.set()


if __name__ == "__main__":
    main()
