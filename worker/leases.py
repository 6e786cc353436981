"""The lease an attempt holds on its job row, renewed every ``lease_seconds / 4`` by a heartbeat thread
(a batch can take minutes and the training loop must not know about the database); a refused heartbeat
sets ``lost``, and the attempt stops at its next batch and writes nothing more. Delivery semantics:
docs/DELIVERY.md. The thread is a :class:`Heartbeat`, as is the worker's own (``worker.liveness``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from service.db import jobs as db_jobs
from service.db.session import session_scope
from service.settings import Settings

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread named ``name`` that calls ``beat`` every ``lease_seconds / 4`` (at least 0.5 s) from
    :meth:`start` until :meth:`stop`, or until ``beat`` returns False."""

    def __init__(self, settings: Settings, beat: Callable[[], bool], name: str) -> None:
        self.interval_s = max(0.5, settings.lease_seconds / 4)
        self._beat, self._name = beat, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self._beat():
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class Lease:
    """The (job, owner, attempt) triple that every conditional write names, plus its heartbeat."""

    def __init__(self, settings: Settings, job_id: str, owner: str, attempt: int) -> None:
        self.settings = settings
        self.job_id = job_id
        self.owner = owner
        self.attempt = attempt
        self.lost = threading.Event()
        self._heartbeat = Heartbeat(settings, self.renew, f"lease-{job_id[:8]}")

    @property
    def interval_s(self) -> float:
        return self._heartbeat.interval_s

    def __enter__(self) -> Lease:
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._heartbeat.stop()

    def renew(self) -> bool:
        """Extend the lease now; ``False`` (and ``lost`` set) if this attempt no longer holds it."""
        if self.lost.is_set():
            return False
        try:
            with session_scope(self.settings) as session:
                held = db_jobs.heartbeat(session, self.job_id, self.owner, self.attempt, self.settings.lease_seconds)
        except Exception:
            log.warning("heartbeat of job %s failed; retrying", self.job_id, exc_info=True)
            return True
        if not held:
            log.warning("job %s: attempt %s lost its lease; stopping without writing", self.job_id, self.attempt)
            self.lost.set()
        return held

    def mark_lost(self) -> None:
        """A conditional write was refused: the lease is gone even if the last heartbeat succeeded."""
        if not self.lost.is_set():
            log.warning("job %s: a write of attempt %s was refused; lease lost", self.job_id, self.attempt)
        self.lost.set()
