"""The lease an attempt holds on its job row, renewed every ``lease_seconds / 4`` by a heartbeat thread
(a batch can take minutes and the training loop must not know about the database); a refused heartbeat
sets ``lost``, and the attempt stops at its next batch and writes nothing more. Delivery semantics:
docs/DELIVERY.md.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from service.db import jobs as db_jobs
from service.db.session import session_scope
from service.settings import Settings

log = logging.getLogger(__name__)


class Lease:
    """The (job, owner, attempt) triple that every conditional write names, plus its heartbeat."""

    def __init__(self, settings: Settings, job_id: str, owner: str, attempt: int) -> None:
        self.settings = settings
        self.job_id = job_id
        self.owner = owner
        self.attempt = attempt
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval_s(self) -> float:
        return max(0.5, self.settings.lease_seconds / 4)

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.job_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

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

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.renew():
                return

    def mark_lost(self) -> None:
        """A conditional write was refused: the lease is gone even if the last heartbeat succeeded."""
        if not self.lost.is_set():
            log.warning("job %s: a write of attempt %s was refused; lease lost", self.job_id, self.attempt)
        self.lost.set()
