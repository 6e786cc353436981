"""Tenants and their API keys.

A key is a random 32-byte url-safe token shown once, at creation. Only its sha256 is stored: a
leaked database does not leak working keys, and a 256-bit random secret needs no slow password hash
(there is nothing to brute-force). The first 8 characters are kept in clear as the ``prefix`` so an
admin can name a key ("revoke abcd1234") without ever seeing the secret again.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.base import ApiKey, Tenant, rowcount, utcnow

PREFIX_LENGTH = 8


def hash_key(token: str) -> str:
    """The stored form of a key: its sha256 in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a request is from: the key and the tenant it acts for."""

    api_key_id: int
    tenant_id: int
    tenant_name: str


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant called ``name``, created on first use (safe against a concurrent create)."""
    tenant = session.execute(select(Tenant).where(Tenant.name == name)).scalar_one_or_none()
    if tenant is None:
        try:
            with session.begin_nested():
                tenant = Tenant(name=name, created_at=utcnow())
                session.add(tenant)
        except IntegrityError:
            tenant = session.execute(select(Tenant).where(Tenant.name == name)).scalar_one()
    session.commit()
    return tenant


def create_api_key(session: Session, tenant_name: str, name: str | None = None) -> tuple[ApiKey, str]:
    """Create a key for a tenant (creating the tenant if new); returns the row and the secret token."""
    tenant = get_or_create_tenant(session, tenant_name)
    token = secrets.token_urlsafe(32)
    while not token[0].isalnum():  # a prefix starting with "-" reads as an option on a command line
        token = secrets.token_urlsafe(32)
    key = ApiKey(
        tenant_id=tenant.id, name=name, prefix=token[:PREFIX_LENGTH], key_hash=hash_key(token), created_at=utcnow()
    )
    session.add(key)
    session.commit()
    return key, token


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal of a valid, unrevoked key; ``None`` for anything else (one answer for all)."""
    row = session.execute(
        select(ApiKey.id, ApiKey.tenant_id, Tenant.name)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None))
    ).one_or_none()
    session.commit()
    return None if row is None else Principal(api_key_id=row[0], tenant_id=row[1], tenant_name=row[2])


def revoke_keys(session: Session, prefix: str) -> int:
    """Revoke the live keys whose prefix is ``prefix``; returns how many were revoked."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.prefix == prefix[:PREFIX_LENGTH], ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    return rowcount(result)


def list_api_keys(session: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Keys (without secrets) and their tenant names, for admins."""
    stmt = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.id)
    if tenant_name is not None:
        stmt = stmt.where(Tenant.name == tenant_name)
    rows = [(key, tenant) for key, tenant in session.execute(stmt).all()]
    session.commit()
    return rows
