"""What a person does with their jobs and uploads beyond running them: find them (search, sort, pages,
tags and a note), name them by a short id prefix, compare them, and delete them.

Same conventions as ``jobs.py``: each function takes a ``Session``, runs one short transaction and
commits it; refusals are return values, never exceptions.

Deleting: the row goes first, the stored objects after (the caller deletes the keys returned here,
once the row's transaction committed). A crash between the two leaves objects no row points to
(invisible garbage, swept by hand with the object store's own tools), never a row pointing to objects
that are gone: a user could see and try to download such a row, and would get errors for a thing the
API still lists. A job is deleted only in a final status, in one conditional ``DELETE ... WHERE status
IN (final)``, so a job a worker picks up in between is never deleted under it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from service.db.base import (
    FINAL_STATUSES,
    Artifact,
    Dataset,
    Job,
    JobEvent,
    JobStatus,
    UploadedModel,
    read_rows,
    rowcount,
)

SortKey = Literal["created", "name", "status"]
SORT_COLUMNS = {"created": Job.created_at, "name": Job.name, "status": Job.status}
MIN_PREFIX = 8
_FINAL = sorted(s.value for s in FINAL_STATUSES)
_HEX = frozenset("0123456789abcdef-")


# ----------------------------------------------------------------------------- short ids
def match_job_ids(session: Session, tenant_id: int, ref: str, limit: int = 2) -> list[str]:
    """The tenant's job ids equal to ``ref`` or, for a prefix of at least 8 characters, starting with it
    (at most ``limit``: two are enough to call a prefix ambiguous)."""
    ref = ref.lower()
    exact = session.execute(select(Job.id).where(Job.tenant_id == tenant_id, Job.id == ref)).scalar_one_or_none()
    if exact is not None or len(ref) < MIN_PREFIX or len(ref) >= 36 or not set(ref) <= _HEX:
        session.commit()
        return [exact] if exact is not None else []
    ids = list(
        session.execute(
            select(Job.id).where(Job.tenant_id == tenant_id, Job.id.startswith(ref)).order_by(Job.id).limit(limit)
        ).scalars()
    )
    session.commit()
    return ids


# ----------------------------------------------------------------------------- finding
def search_jobs(
    session: Session,
    tenant_id: int,
    *,
    status: str | None = None,
    q: str | None = None,
    tag: str | None = None,
    sort: SortKey = "created",
    descending: bool = True,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """A page of the tenant's jobs and the total that match: ``status``, ``q`` (a case-insensitive
    substring of the name), ``tag`` (one of the job's tags). Ties are broken by newest, then id."""
    where: list[Any] = [Job.tenant_id == tenant_id]
    if status is not None:
        where.append(Job.status == status)
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(func.lower(Job.name).like(f"%{escaped.lower()}%", escape="\\"))
    stmt: Select[Any] = select(Job).where(*where)
    if tag:
        # Tags are few per job; filtering in Python keeps one query for Postgres' JSONB and SQLite's JSON.
        rows = [j for j in session.execute(stmt.order_by(*_order(sort, descending))).scalars() if tag in (j.tags or [])]
        session.commit()
        return rows[offset : offset + limit], len(rows)
    count = session.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()
    page = stmt.order_by(*_order(sort, descending)).limit(limit).offset(offset)
    return read_rows(session, page), count


def _order(sort: SortKey, descending: bool) -> list[Any]:
    column = SORT_COLUMNS[sort]
    first = column.desc() if descending else column.asc()
    if sort == "name":
        first = first.nulls_last()
    return [first, Job.created_at.desc(), Job.id]


def set_labels(
    session: Session,
    tenant_id: int,
    job_id: str,
    *,
    tags: list[str] | None = None,
    note: str | None = None,
    clear_note: bool = False,
) -> Job | None:
    """Replace the job's tags (when given) and note (when given, or cleared); ``None`` if not the tenant's."""
    job = session.execute(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)).scalar_one_or_none()
    if job is None:
        session.commit()
        return None
    if tags is not None:
        job.tags = list(dict.fromkeys(tags))  # order kept, duplicates dropped
    if note is not None or clear_note:
        job.note = note
    session.commit()
    session.refresh(job)
    return job


# ----------------------------------------------------------------------------- deleting
@dataclass(frozen=True)
class Deletion:
    """The outcome of a delete: ``deleted`` with the storage keys to remove now, or why not."""

    outcome: Literal["deleted", "missing", "in_use"]
    keys: tuple[str, ...] = ()
    blockers: tuple[str, ...] = ()  # the job ids (or the status) that keep it


def _owned(
    session: Session, column: Any, table: type[Job] | type[UploadedModel] | type[Dataset], row_id: str, tenant_id: int
) -> Any:
    """``column`` of the tenant's row ``row_id`` of ``table``, or None when the tenant has no such row."""
    return session.execute(select(column).where(table.id == row_id, table.tenant_id == tenant_id)).scalar_one_or_none()


def delete_job(session: Session, tenant_id: int, job_id: str, checkpoint_key: str) -> Deletion:
    """Delete a final job with its events and artifact rows; returns the object keys to delete after."""
    status = _owned(session, Job.status, Job, job_id, tenant_id)
    if status is None:
        session.commit()
        return Deletion("missing")
    keys = list(session.execute(select(Artifact.storage_key).where(Artifact.job_id == job_id)).scalars())
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))
    session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    result = session.execute(
        delete(Job).where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status.in_(_FINAL)),
        execution_options={"synchronize_session": False},
    )
    if rowcount(result) != 1:  # not final (or it changed since the read): keep everything
        session.rollback()
        return Deletion("in_use", blockers=(status,))
    session.commit()
    return Deletion("deleted", keys=(*keys, checkpoint_key))


def delete_artifact(session: Session, tenant_id: int, job_id: str, name: str) -> Deletion:
    """Delete one artifact of a final job of the tenant (a running job may still be writing it)."""
    status = _owned(session, Job.status, Job, job_id, tenant_id)
    row = (
        session.execute(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)).scalar_one_or_none()
        if status is not None
        else None
    )
    if row is None:
        session.commit()
        return Deletion("missing")
    if status not in _FINAL:
        session.commit()
        return Deletion("in_use", blockers=(str(status),))
    key = row.storage_key
    session.delete(row)
    session.commit()
    return Deletion("deleted", keys=(key,))


def jobs_using(session: Session, tenant_id: int, ref: str) -> list[str]:
    """The tenant's jobs not yet final whose spec names ``ref`` (``model:<id>`` or ``dataset:<id>``)."""
    rows = session.execute(
        select(Job.id, Job.spec).where(Job.tenant_id == tenant_id, Job.status.not_in(_FINAL)).order_by(Job.created_at)
    ).all()
    session.commit()
    using = []
    for job_id, spec in rows:
        if (spec.get("model") or {}).get("checkpoint") == ref or (spec.get("dataset") or {}).get("path") == ref:
            using.append(job_id)
    return using


def delete_upload(session: Session, tenant_id: int, kind: Literal["model", "dataset"], upload_id: str) -> Deletion:
    """Delete an uploaded model or dataset unless a job not yet final names it."""
    table: type[UploadedModel] | type[Dataset] = UploadedModel if kind == "model" else Dataset
    key = _owned(session, table.storage_key, table, upload_id, tenant_id)
    if key is None:
        session.commit()
        return Deletion("missing")
    blockers = jobs_using(session, tenant_id, f"{kind}:{upload_id}")
    if blockers:
        return Deletion("in_use", blockers=tuple(blockers))
    session.execute(delete(table).where(table.id == upload_id, table.tenant_id == tenant_id))
    session.commit()
    return Deletion("deleted", keys=(key,))


# ----------------------------------------------------------------------------- throughput
def measured_epochs(session: Session, arch: str, jobs_limit: int = 20) -> list[dict[str, Any]]:
    """Measured training epochs of recent jobs (any tenant: a throughput is no tenant's data) on ``arch``:
    ``{"spec", "dataset", "stage", "seconds"}`` per epoch, from the time between consecutive
    ``stage_started``/``epoch_finished`` events of one stage and variant (``dataset``: the report's)."""
    recent = session.execute(
        select(Job.id, Job.spec)
        .where(Job.status.in_([JobStatus.SUCCEEDED.value, JobStatus.RUNNING.value]))
        .order_by(Job.created_at.desc())
        .limit(500)
    ).all()
    specs = {j: spec for j, spec in recent if (spec.get("model") or {}).get("arch") == arch}
    ids = list(specs)[:jobs_limit]
    out: list[dict[str, Any]] = []
    if ids:
        reports: dict[str, Any] = dict(session.execute(select(Job.id, Job.report).where(Job.id.in_(ids))).all())
        events = session.execute(
            select(JobEvent.job_id, JobEvent.kind, JobEvent.payload, JobEvent.created_at)
            .where(JobEvent.job_id.in_(ids), JobEvent.kind.in_(["stage_started", "epoch_finished"]))
            .order_by(JobEvent.job_id, JobEvent.id)
        ).all()
        last: dict[tuple[str, Any, Any], Any] = {}
        for job_id, kind, payload, at in events:
            stage = (payload or {}).get("stage")
            key = (job_id, stage, (payload or {}).get("variant"))
            if kind == "epoch_finished" and key in last:
                seconds = (at - last[key]).total_seconds()
                if seconds > 0:
                    dataset = ((reports.get(job_id) or {}).get("dataset")) or {}
                    out.append({"spec": specs[job_id], "dataset": dataset, "stage": stage, "seconds": seconds})
            last[key] = at
    session.commit()
    return out


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
