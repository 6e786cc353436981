"""Worker liveness: one row per worker process (``workers``), its heartbeat written by the worker
itself every ``lease_seconds / 4``, busy or idle (worker/liveness.py).

A job's lease says whether *that job's* attempt is alive; this table says whether *any* worker is,
which is what ``/readyz`` needs: with no beat within the lease, a submitted job would wait in the
queue for ever. Rows are keyed by ``host:pid``; a worker that stops cleanly deletes its own row, a
killed one simply stops beating, and rows older than ``FORGET_AFTER`` are deleted when a worker starts.

Conventions as in ``service.db.jobs``: one short transaction per function, committed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.base import WorkerBeat, rowcount, utcnow

FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class Liveness:
    """What the heartbeats say at ``now``: live workers (beat within the lease) and the newest beat."""

    alive: int
    newest: datetime | None
    now: datetime

    @property
    def newest_age_s(self) -> float | None:
        return None if self.newest is None else max(0.0, (self.now - self.newest).total_seconds())


def beat(session: Session, name: str, host: str, pid: int) -> None:
    """Record that worker ``name`` is alive now (the row is created on its first beat)."""
    now = utcnow()
    result = session.execute(
        update(WorkerBeat).where(WorkerBeat.name == name).values(heartbeat_at=now),
        execution_options={"synchronize_session": False},
    )
    if rowcount(result) == 0:
        try:
            with session.begin_nested():
                session.add(WorkerBeat(name=name, host=host, pid=pid, started_at=now, heartbeat_at=now))
        except IntegrityError:  # created in between (cannot happen for one process, harmless if it does)
            pass
    session.commit()


def forget(session: Session, name: str) -> None:
    """A worker stopping cleanly: it is no longer a worker that could take a job."""
    session.execute(delete(WorkerBeat).where(WorkerBeat.name == name))
    session.commit()


def forget_stale(session: Session) -> int:
    """Delete the rows of workers silent for longer than ``FORGET_AFTER``; returns how many."""
    result = session.execute(delete(WorkerBeat).where(WorkerBeat.heartbeat_at < utcnow() - FORGET_AFTER))
    session.commit()
    return rowcount(result)


def liveness(session: Session, lease_seconds: float) -> Liveness:
    """How many workers beat within ``lease_seconds``, and when the newest beat was."""
    now = utcnow()
    alive, newest = session.execute(
        select(
            func.count().filter(WorkerBeat.heartbeat_at >= now - timedelta(seconds=lease_seconds)),
            func.max(WorkerBeat.heartbeat_at),
        )
    ).one()
    session.commit()
    if isinstance(newest, str):  # SQLite hands back an aggregate of a TypeDecorator column untyped
        newest = datetime.fromisoformat(newest)
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    return Liveness(int(alive or 0), newest, now)


def list_workers(session: Session) -> list[WorkerBeat]:
    """Every known worker, newest beat first (for ``hydra-service workers``)."""
    rows = list(session.execute(select(WorkerBeat).order_by(WorkerBeat.heartbeat_at.desc())).scalars())
    session.commit()
    return rows
