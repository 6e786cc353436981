"""The worker's own heartbeat (``service.db.workers``): a thread of the worker's main process writes
its row every ``lease_seconds / 4`` from ``worker_ready`` until ``worker_shutdown``, busy or idle, so
``/readyz`` and the metrics can tell "no worker at all" from "no job running". A SIGKILLed worker (the
OOM killer) simply stops beating; one that stops cleanly deletes its row. A failed write is logged and
retried at the next beat: liveness must never take the worker down. Delivery semantics and readiness:
docs/DELIVERY.md.
"""

from __future__ import annotations

import logging
import os
import socket

from celery import signals

from service.db import workers as db_workers
from service.db.session import session_scope
from service.settings import Settings, get_settings
from worker.leases import Heartbeat

log = logging.getLogger(__name__)


def worker_name() -> str:
    """This process as the ``workers`` table names it: ``host:pid`` (a lease owner starts the same)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerHeartbeat:
    """Writes this process's ``workers`` row every ``interval_s`` in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = worker_name()
        # a failed write is retried at the next beat: liveness never stops on its own
        self._heartbeat = Heartbeat(settings, lambda: self.beat() or True, "hydra-worker-heartbeat")

    @property
    def interval_s(self) -> float:
        return self._heartbeat.interval_s

    def beat(self) -> bool:
        try:
            with session_scope(self.settings) as session:
                db_workers.beat(session, self.name, socket.gethostname(), os.getpid())
        except Exception:  # the database may be briefly away; the next beat retries
            log.warning("worker heartbeat of %s not written; retrying", self.name, exc_info=True)
            return False
        return True

    def start(self) -> None:
        try:
            with session_scope(self.settings) as session:
                db_workers.forget_stale(session)
        except Exception:  # pruning is housekeeping only
            log.debug("old worker rows not pruned", exc_info=True)
        self.beat()  # at once: a restarted worker makes the service ready again without waiting
        self._heartbeat.start()
        log.info("worker %s: heartbeat every %.1fs", self.name, self.interval_s)

    def stop(self) -> None:
        self._heartbeat.stop()
        try:
            with session_scope(self.settings) as session:
                db_workers.forget(session, self.name)
        except Exception:  # the row then ages out like a dead worker's
            log.warning("worker %s: row not removed on shutdown", self.name, exc_info=True)


_heartbeat: WorkerHeartbeat | None = None


@signals.worker_ready.connect
def _start_heartbeat(**_: object) -> None:
    global _heartbeat
    if _heartbeat is None:
        _heartbeat = WorkerHeartbeat(get_settings())
        _heartbeat.start()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
