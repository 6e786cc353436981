"""Every read and write of a job's life: creation, the lease that guards a running attempt, progress,
events, cancellation, the reaper's sweep and the job's artifacts.

The job row is the source of truth, not the broker's message: ``claim_job`` is one atomic conditional
update, and every later write of a worker names its lease and is refused once the lease is lost.
Delivery semantics: docs/DELIVERY.md.

Conventions: each function takes a ``Session``, runs one short transaction and commits it itself;
refusals are ``False``/``None``, never exceptions. Status transitions append a ``status`` event in
the same transaction, so the event history can never disagree with the row; callers need not (and
should not) append their own ``status`` events. Time is the service's UTC clock (``utcnow``);
hosts are expected to run NTP, which is far tighter than any lease.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, literal, not_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.base import (
    FINAL_STATUSES,
    Artifact,
    Job,
    JobEvent,
    JobStatus,
    UTCDateTime,
    new_id,
    read_row,
    read_rows,
    rowcount,
    utcnow,
)

_UNSET: Any = object()
_NO_SYNC = {"synchronize_session": False}


def _dialect_insert(session: Session):  # type: ignore[no-untyped-def]
    """The dialect's INSERT (with ON CONFLICT) for Postgres and SQLite; ``None`` elsewhere."""
    name = session.get_bind().dialect.name
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(name)


def json_safe(value: Any) -> Any:
    """Make metrics and payloads storable: NaN/Inf become ``None`` (JSONB rejects them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return json_safe(value.item())
        except (TypeError, ValueError):
            return value
    return value


def _event(job_id: str, kind: str, payload: dict[str, Any] | None) -> JobEvent:
    return JobEvent(job_id=job_id, kind=kind, payload=json_safe(payload or {}), created_at=utcnow())


# ----------------------------------------------------------------------------- creation and reads
def create_job(
    session: Session,
    tenant_id: int,
    spec_dict: dict[str, Any],
    idempotency_key: str | None = None,
    max_attempts: int = 3,
) -> tuple[Job, bool]:
    """Write a queued job; with an idempotency key, return the existing job instead of a second one.

    Race-safe: concurrent requests with one key all insert with ``ON CONFLICT DO NOTHING``; the
    database lets exactly one through and the rest read the winner's row. Returns ``(job, created)``.
    """
    now = utcnow()
    job_id = new_id()
    values = {
        "id": job_id,
        "tenant_id": tenant_id,
        "name": spec_dict.get("name"),
        "spec": spec_dict,
        "status": JobStatus.QUEUED.value,
        "fraction": 0.0,
        "attempt": 0,
        "max_attempts": max_attempts,
        "cancel_requested": False,
        "idempotency_key": idempotency_key,
        "created_at": now,
        "updated_at": now,
    }
    insert = _dialect_insert(session)
    if idempotency_key is None:
        inserted = True
        session.add(Job(**values))
        session.flush()
    elif insert is not None:
        stmt = (
            insert(Job)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
            .returning(Job.id)
        )
        inserted = session.execute(stmt).scalar_one_or_none() is not None
    else:  # another backend: let the unique constraint decide
        try:
            with session.begin_nested():
                session.add(Job(**values))
            inserted = True
        except IntegrityError:
            inserted = False
    if inserted:
        session.add(_event(job_id, "status", {"status": JobStatus.QUEUED.value}))
        session.commit()
        return session.execute(select(Job).where(Job.id == job_id)).scalar_one(), True
    session.rollback()
    existing = session.execute(
        select(Job)
        .where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key)
        .execution_options(populate_existing=True)
    ).scalar_one()
    session.commit()
    return existing, False


def get_job(session: Session, tenant_id: int | None, job_id: str) -> Job | None:
    """The job if it exists and belongs to ``tenant_id`` (``None``: any tenant, for the worker)."""
    stmt = select(Job).where(Job.id == job_id)
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    job: Job | None = read_row(session, stmt)
    return job


_JOBS = Job.__table__
# Built once: the statement behind the endpoint clients poll, with its compiled form cached.
_JOB_VIEW = select(*_JOBS.c).where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.tenant_id == bindparam("tenant_id"))


def get_job_view(session: Session, tenant_id: int, job_id: str) -> dict[str, Any] | None:
    """The tenant's job as a plain mapping of its columns, or ``None``.

    Same answer as ``get_job`` without building an ORM object: about half the CPU, which matters on
    the status endpoint every client polls. Read-only; use ``get_job`` to modify the row."""
    row = session.connection().execute(_JOB_VIEW, {"job_id": job_id, "tenant_id": tenant_id}).mappings().first()
    session.commit()
    return dict(row) if row is not None else None


def list_jobs(
    session: Session, tenant_id: int, status: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Job], int]:
    """A tenant's jobs, newest first, and the total count matching the filter."""
    where = [Job.tenant_id == tenant_id]
    if status is not None:
        where.append(Job.status == status)
    count = session.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()
    rows: Select[Any] = select(Job).where(*where).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    return read_rows(session, rows), count


# ----------------------------------------------------------------------------- the lease
def claim_job(session: Session, job_id: str, owner: str, lease_seconds: float) -> int | None:
    """Atomically start an attempt: returns its number, or ``None`` if someone else holds the job,
    it is final or canceled, or it used up its attempts. Takes over a running job whose lease expired."""
    now = utcnow()
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status == JobStatus.QUEUED.value,
                and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now),
            ),
            Job.attempt < Job.max_attempts,
            not_(Job.cancel_requested),
        )
        .values(
            status=JobStatus.RUNNING.value,
            attempt=Job.attempt + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, literal(now, UTCDateTime())),
            updated_at=now,
        )
        .returning(Job.attempt)
    )
    attempt = session.execute(stmt, execution_options=_NO_SYNC).scalar_one_or_none()
    if attempt is not None:
        session.add(_event(job_id, "status", {"status": JobStatus.RUNNING.value, "attempt": attempt, "owner": owner}))
    session.commit()
    return attempt


def _lease_held(job_id: str, owner: str, attempt: int) -> tuple[Any, ...]:
    return (
        Job.id == job_id,
        Job.lease_owner == owner,
        Job.attempt == attempt,
        Job.status == JobStatus.RUNNING.value,
    )


def heartbeat(session: Session, job_id: str, owner: str, attempt: int, lease_seconds: float) -> bool:
    """Extend the lease; ``False`` means this attempt lost the job and must stop writing."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(*_lease_held(job_id, owner, attempt))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now),
        execution_options=_NO_SYNC,
    )
    session.commit()
    return rowcount(result) == 1


def record_progress(
    session: Session,
    job_id: str,
    owner: str,
    attempt: int,
    *,
    stage: str | None = _UNSET,
    variant: str | None = _UNSET,
    epoch: int | None = _UNSET,
    epochs: int | None = _UNSET,
    fraction: float | None = _UNSET,
    metrics: dict[str, Any] | None = _UNSET,
    lease_seconds: float | None = None,
) -> bool:
    """Write the live progress fields (those passed; omitted ones stay) if the lease is still held.

    Also extends the lease (by ``lease_seconds``, else by the lease's current length), since progress
    is proof of life. ``False``: the attempt lost its lease."""
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
    for name, value in (("stage", stage), ("variant", variant), ("epoch", epoch), ("epochs", epochs)):
        if value is not _UNSET:
            values[name] = value
    if fraction is not _UNSET and fraction is not None:
        values["fraction"] = min(1.0, max(0.0, float(fraction)))
    if metrics is not _UNSET:
        values["metrics"] = json_safe(metrics)
    if lease_seconds is not None:
        values["lease_expires_at"] = now + timedelta(seconds=lease_seconds)
    else:
        # Renew for the same length the lease was granted with (expires_at - heartbeat_at).
        values["lease_expires_at"] = literal(now, UTCDateTime()) + (Job.lease_expires_at - Job.heartbeat_at)
    stmt = update(Job).where(*_lease_held(job_id, owner, attempt)).values(**values)
    if lease_seconds is None and session.get_bind().dialect.name == "sqlite":
        # SQLite has no interval arithmetic on text timestamps: read the lease length first.
        row = session.execute(
            select(Job.lease_expires_at, Job.heartbeat_at).where(*_lease_held(job_id, owner, attempt))
        ).one_or_none()
        if row is None or row[0] is None or row[1] is None:
            session.commit()
            return False
        stmt = stmt.values(lease_expires_at=now + (row[0] - row[1]))
    result = session.execute(stmt, execution_options=_NO_SYNC)
    session.commit()
    return rowcount(result) == 1


def finish_job(
    session: Session,
    job_id: str,
    owner: str,
    attempt: int,
    status: str,
    error_reason: str | None = None,
    report: dict[str, Any] | None = None,
) -> bool:
    """Move a running job to a final status, only from the attempt that holds the lease."""
    status = JobStatus(status).value
    if status not in FINAL_STATUSES:
        raise ValueError(f"finish_job needs a final status, got {status!r}")
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
        "error_reason": error_reason,
    }
    if report is not None:
        values["report"] = json_safe(report)
    if status == JobStatus.SUCCEEDED.value:
        values["fraction"] = 1.0
    result = session.execute(
        update(Job).where(*_lease_held(job_id, owner, attempt)).values(**values), execution_options=_NO_SYNC
    )
    done = rowcount(result) == 1
    if done:
        payload: dict[str, Any] = {"status": status, "attempt": attempt}
        if error_reason:
            payload["error_reason"] = error_reason
        session.add(_event(job_id, "status", payload))
    session.commit()
    return done


def release_job(session: Session, job_id: str, owner: str, attempt: int, reason: str) -> bool:
    """Hand a running job back to the queue from the attempt holding its lease (a worker shutting
    down on SIGTERM, after saving its checkpoint). ``False`` if that attempt no longer holds it.

    A worker asked to stop did not fail, and ``max_attempts`` exists to stop jobs that *kill* their
    worker, so the handed-back attempt is not counted: ``max_attempts`` grows by one. Attempt numbers
    stay monotonic (the next claim is ``attempt + 1``), so no two attempts ever share a number."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(*_lease_held(job_id, owner, attempt))
        .values(
            status=JobStatus.QUEUED.value,
            max_attempts=Job.max_attempts + 1,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
            updated_at=now,
        ),
        execution_options=_NO_SYNC,
    )
    done = rowcount(result) == 1
    if done:
        payload = {
            "status": JobStatus.QUEUED.value,
            "attempt": attempt,
            "reason": reason,
            "counts_against_max_attempts": False,
        }
        session.add(_event(job_id, "status", payload))
    session.commit()
    return done


# ----------------------------------------------------------------------------- events
def append_event(session: Session, job_id: str, kind: str, payload: dict[str, Any] | None = None) -> int:
    """Record a milestone (epoch metrics, stage change...) and return its id, the stream cursor."""
    event = _event(job_id, kind, payload)
    session.add(event)
    session.commit()
    return event.id


def list_events(session: Session, job_id: str, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
    """Events of a job with ``id > after_id``, oldest first (ids only grow, so they are the cursor)."""
    rows = list(
        session.execute(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id).limit(limit)
        ).scalars()
    )
    session.commit()
    return rows


# ----------------------------------------------------------------------------- cancellation
def request_cancel(session: Session, tenant_id: int | None, job_id: str) -> Job | None:
    """Cancel a job: a queued one is canceled at once; a running one is flagged for its worker,
    which stops at the next batch. Final jobs are left alone. ``None`` if not the tenant's job."""
    if get_job(session, tenant_id, job_id) is None:
        return None
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.CANCELED.value, cancel_requested=True, finished_at=now, updated_at=now),
        execution_options=_NO_SYNC,
    )
    if rowcount(result) == 1:
        session.add(_event(job_id, "status", {"status": JobStatus.CANCELED.value, "reason": "canceled by user"}))
    else:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value, not_(Job.cancel_requested))
            .values(cancel_requested=True, updated_at=now),
            execution_options=_NO_SYNC,
        )
        if rowcount(result) == 1:
            session.add(_event(job_id, "cancel_requested", {}))
    session.commit()
    return get_job(session, tenant_id, job_id)


def is_cancel_requested(session: Session, job_id: str) -> bool:
    """Whether the worker running ``job_id`` should stop (also true once the job is canceled)."""
    row = session.execute(select(Job.cancel_requested, Job.status).where(Job.id == job_id)).one_or_none()
    session.commit()
    if row is None:
        return True  # the job vanished: nothing to work for
    return bool(row[0]) or row[1] == JobStatus.CANCELED.value


# ----------------------------------------------------------------------------- the reaper
def expire_lease(session: Session, job_id: str, owner: str, attempt: int) -> bool:
    """End this attempt's lease now, leaving the job ``running``: the reaper's next sweep treats it as
    a lost worker (requeued with the attempt spent, or failed after ``max_attempts``). For an attempt
    that lost part of itself (a data-parallel rank died) and must not record an outcome of its own."""
    now = utcnow()
    result = session.execute(
        update(Job).where(*_lease_held(job_id, owner, attempt)).values(lease_expires_at=now - timedelta(seconds=1)),
        execution_options=_NO_SYNC,
    )
    session.commit()
    return rowcount(result) == 1


def requeue_stale_jobs(session: Session, now: datetime | None = None) -> list[str]:
    """Deal with running jobs whose lease expired (their worker died or hung) and return the ids
    put back in the queue, which the caller should send to the broker again.

    A stale job goes back to ``queued`` while it has attempts left; otherwise it fails with the reason
    "gave up after N attempts (worker lost each time)"; one whose cancellation was requested becomes
    ``canceled``. Each update re-checks the expiry and the attempt, so a heartbeat or a claim that
    lands in between wins and the job is left alone."""
    now = now or utcnow()
    stale = session.execute(
        select(Job.id, Job.attempt, Job.max_attempts, Job.cancel_requested).where(
            Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now
        )
    ).all()
    requeued: list[str] = []
    for job_id, attempt, max_attempts, cancel_requested in stale:
        values: dict[str, Any] = {"lease_expires_at": None, "updated_at": now}
        payload: dict[str, Any] = {"attempt": attempt, "reason": "lease expired"}
        if cancel_requested:
            values.update(status=JobStatus.CANCELED.value, finished_at=now)
        elif attempt >= max_attempts:
            reason = f"gave up after {attempt} attempts (worker lost each time)"
            values.update(status=JobStatus.FAILED.value, finished_at=now, error_reason=reason)
            payload["error_reason"] = reason
        else:
            values.update(status=JobStatus.QUEUED.value, lease_owner=None, enqueued_at=None)
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.RUNNING.value,
                Job.lease_expires_at < now,
                Job.attempt == attempt,
            )
            .values(**values),
            execution_options=_NO_SYNC,
        )
        if rowcount(result) == 1:
            payload["status"] = values["status"]
            session.add(_event(job_id, "status", payload))
            if values["status"] == JobStatus.QUEUED.value:
                requeued.append(job_id)
    session.commit()
    return requeued


def mark_enqueued(session: Session, job_id: str) -> None:
    """Note that the broker accepted the job's message (the sweep then leaves it alone)."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()), execution_options=_NO_SYNC)
    session.commit()


def list_unsent_queued(
    session: Session,
    older_than_s: float,
    resend_after_s: float | None = None,
    now: datetime | None = None,
    limit: int = 1000,
) -> list[str]:
    """Queued jobs the broker may not know about, for the enqueue sweep to send (again).

    That is: never marked enqueued and last touched more than ``older_than_s`` ago (the API's send
    failed, or the reaper requeued them), plus, with ``resend_after_s``, jobs sent longer ago than that
    and still queued (a message dropped by expiry or a broker restart). Sending twice is harmless:
    only one ``claim_job`` can win."""
    now = now or utcnow()
    never_sent = and_(Job.enqueued_at.is_(None), Job.updated_at < now - timedelta(seconds=older_than_s))
    condition = never_sent
    if resend_after_s is not None:
        condition = or_(never_sent, Job.enqueued_at < now - timedelta(seconds=resend_after_s))
    ids = list(
        session.execute(
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED.value, not_(Job.cancel_requested), condition)
            .order_by(Job.created_at)
            .limit(limit)
        ).scalars()
    )
    session.commit()
    return ids


# ----------------------------------------------------------------------------- artifacts
def add_artifact(
    session: Session,
    job_id: str,
    name: str,
    storage_key: str,
    size: int,
    sha256: str,
    content_type: str = "application/octet-stream",
) -> Artifact:
    """Record (or replace, for a retried attempt) the artifact ``name`` of a job."""
    values = {
        "job_id": job_id,
        "name": name,
        "storage_key": storage_key,
        "size": size,
        "sha256": sha256,
        "content_type": content_type,
        "created_at": utcnow(),
    }
    insert = _dialect_insert(session)
    if insert is not None:
        stmt = insert(Artifact).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["job_id", "name"],
            set_={k: stmt.excluded[k] for k in ("storage_key", "size", "sha256", "content_type", "created_at")},
        )
        session.execute(stmt)
    else:
        existing = session.execute(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
        ).scalar_one_or_none()
        if existing is None:
            session.add(Artifact(**values))
        else:
            for key, value in values.items():
                setattr(existing, key, value)
    session.commit()
    artifact = get_artifact(session, job_id, name)
    assert artifact is not None
    return artifact


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    """A job's artifacts, by name."""
    return read_rows(session, select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name))


def get_artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    """One artifact of a job by name."""
    row: Artifact | None = read_row(session, select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    return row
