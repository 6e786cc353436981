"""Fixtures for the service tests: a real Postgres database per test session (migrated with Alembic,
dropped at the end), settings pointing at it and at a temp object folder, an app with the broker
client replaced by a recorder, and a factory for tenants' API keys.

Tests isolate themselves by tenant (every ``make_key()`` creates a fresh one), not by truncating
tables, so they can share one migrated database and stay fast.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.db import keys
from service.db.session import session_scope
from service.settings import Settings
from tests.service.svc_helpers import Key, RecordingQueue, build_app, create_database, drop_database, migrate, pg_url


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh Postgres database for this test session, migrated to head."""
    name = create_database("hydra_test")
    url = pg_url(name)
    try:
        migrate(url)
        yield url
    finally:
        drop_database(name)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url="memory://",
        storage_backend="local",
        storage_dir=str(tmp_path / "objects"),
        work_dir=str(tmp_path / "work"),
        rate_limit_per_minute=0,
    )


@pytest.fixture
def session(settings: Settings):  # type: ignore[no-untyped-def]
    with session_scope(settings) as s:
        yield s


@pytest.fixture
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture
def app(settings: Settings, queue: RecordingQueue) -> FastAPI:
    return build_app(settings, queue)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def make_key(settings: Settings):  # type: ignore[no-untyped-def]
    """``make_key(tenant=None) -> Key``: a live API key, for a fresh tenant unless one is named."""

    def make(tenant: str | None = None) -> Key:
        tenant = tenant or f"tenant-{uuid.uuid4().hex[:10]}"
        with session_scope(settings) as s:
            key, token = keys.create_api_key(s, tenant, "test")
            return Key(token=token, prefix=key.prefix, tenant=tenant, tenant_id=key.tenant_id)

    return make


@pytest.fixture
def key(make_key) -> Key:  # type: ignore[no-untyped-def]
    return make_key()
