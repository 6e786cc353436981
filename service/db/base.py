"""Table definitions: typed SQLAlchemy 2 models that run unchanged on Postgres and SQLite.

Why these choices:
- A naming convention on the metadata, so constraint names are stable and Alembic revisions can
  drop them on every backend (SQLite has no anonymous ``ALTER``).
- ``UTCDateTime`` stores UTC and always hands back timezone-aware values: SQLite drops the zone, and
  lease comparisons and API timestamps must not depend on which database is behind them.
- JSON columns become JSONB on Postgres (indexable, compact) and JSON text on SQLite.
- Job ids are uuid4 strings created in Python, so the API can answer with the id before any
  round trip and the same id travels through Celery as a plain string.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    Select,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware: the single clock used for leases and timestamps."""
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and returned timezone-aware on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite keeps the text form; a naive UTC value compares correctly as text.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    variant: Mapped[str | None] = mapped_column(String(200))
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error_reason: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    tags: Mapped[list[str] | None] = mapped_column(JSONType)  # the user's labels (PATCH /v1/jobs/{id})
    note: Mapped[str | None] = mapped_column(Text)  # the user's free-text note
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    storage_key: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(100), default="application/octet-stream")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class _Upload:
    """The columns of every uploaded file's row (a model's, a dataset's): whose it is, its name, where its
    validated bytes are stored, their size and hash."""

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    storage_key: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UploadedModel(_Upload, Base):
    """A checkpoint a tenant uploaded, already loaded once into its declared architecture."""

    __tablename__ = "models"

    arch: Mapped[str] = mapped_column(String(200))
    arch_kwargs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    format: Mapped[str] = mapped_column(String(32))


class Dataset(_Upload, Base):
    """An ``.npz`` dataset a tenant uploaded, validated on arrival."""

    __tablename__ = "datasets"

    num_classes: Mapped[int | None] = mapped_column(Integer)
    n_samples: Mapped[int | None] = mapped_column(Integer)
    input_shape: Mapped[list[int] | None] = mapped_column(JSONType)


class WorkerBeat(Base):
    """A worker process that is (or was) alive: its heartbeat, written every ``lease_seconds / 4`` by the
    worker whether or not it runs a job (worker/liveness.py). ``/readyz`` reads the newest one: no beat
    within the lease means no worker will take a job (docs/DELIVERY.md)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid, like a lease owner's prefix
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


def rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE touched (SQLAlchemy types ``execute`` as a plain ``Result``; for DML it
    is a ``CursorResult``, which has ``rowcount``)."""
    from sqlalchemy.engine import CursorResult

    return int(cast(CursorResult[Any], result).rowcount)


def read_rows(session: Session, stmt: Select[Any]) -> list[Any]:
    """The rows of ``stmt`` as the database has them now, with the read's transaction ended.

    ``populate_existing``: a session that already holds one of the rows must see the UPDATEs made since
    (the worker's progress, another request's cancel); the commit ends the read, so no snapshot stays open."""
    rows = list(session.execute(stmt.execution_options(populate_existing=True)).scalars())
    session.commit()
    return rows


def read_row(session: Session, stmt: Select[Any]) -> Any:
    """The one row of ``stmt`` or None, read as :func:`read_rows` reads (more than one is an error)."""
    row = session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()
    session.commit()
    return row
