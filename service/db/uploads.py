"""Records of what tenants uploaded: model checkpoints and ``.npz`` datasets.

The bytes live in the object store; a row exists only after its file was validated and stored, so a
job spec that names ``model:<id>`` or ``dataset:<id>`` always points at something usable. Every read
is scoped by tenant: another tenant's upload is indistinguishable from a missing one.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.base import Dataset, UploadedModel, utcnow

_Upload = TypeVar("_Upload", UploadedModel, Dataset)


def create_model(session: Session, *, model_id: str, **fields: Any) -> UploadedModel:
    """Record a validated, stored checkpoint (``fields``: the ``UploadedModel`` columns tenant_id, name,
    arch, arch_kwargs, format, storage_key, size, sha256; an unknown one is a TypeError)."""
    return _add(session, UploadedModel(id=model_id, created_at=utcnow(), **fields))


def _add(session: Session, row: _Upload) -> _Upload:
    session.add(row)
    session.commit()
    return row


def get_model(session: Session, tenant_id: int | None, model_id: str) -> UploadedModel | None:
    """The tenant's model ``model_id`` (``tenant_id=None``: any tenant, for the worker)."""
    return _get(session, UploadedModel, tenant_id, model_id)


def list_models(session: Session, tenant_id: int, limit: int = 50, offset: int = 0) -> tuple[list[UploadedModel], int]:
    """A tenant's models, newest first, and their total count."""
    return _list(session, UploadedModel, tenant_id, limit, offset)


def create_dataset(session: Session, *, dataset_id: str, **fields: Any) -> Dataset:
    """Record a validated, stored dataset (``fields``: the ``Dataset`` columns tenant_id, name,
    storage_key, num_classes, n_samples, input_shape, size, sha256; an unknown one is a TypeError)."""
    return _add(session, Dataset(id=dataset_id, created_at=utcnow(), **fields))


def get_dataset(session: Session, tenant_id: int | None, dataset_id: str) -> Dataset | None:
    """The tenant's dataset ``dataset_id`` (``tenant_id=None``: any tenant, for the worker)."""
    return _get(session, Dataset, tenant_id, dataset_id)


def list_datasets(session: Session, tenant_id: int, limit: int = 50, offset: int = 0) -> tuple[list[Dataset], int]:
    """A tenant's datasets, newest first, and their total count."""
    return _list(session, Dataset, tenant_id, limit, offset)


def _get(session: Session, table: type[_Upload], tenant_id: int | None, row_id: str) -> _Upload | None:
    stmt = select(table).where(table.id == row_id)
    if tenant_id is not None:
        stmt = stmt.where(table.tenant_id == tenant_id)
    row = session.execute(stmt).scalar_one_or_none()
    session.commit()
    return row


def _list(session: Session, table: type[_Upload], tenant_id: int, limit: int, offset: int) -> tuple[list[_Upload], int]:
    where = table.tenant_id == tenant_id
    count = session.execute(select(func.count()).select_from(table).where(where)).scalar_one()
    stmt = select(table).where(where).order_by(table.created_at.desc(), table.id).limit(limit).offset(offset)
    rows = list(session.execute(stmt).scalars())
    session.commit()
    return rows, count
