"""Fixtures for the operator-facing tests (metrics, logs, offline docs): the real app on a fresh
database, Postgres (the production database) or SQLite (the embedded default)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.db import keys
from service.db.session import session_scope
from service.settings import Settings
from tests.service.svc_helpers import RecordingQueue, build_app, create_database, drop_database, migrate, pg_url


@pytest.fixture(scope="module")
def pg_url_module() -> Iterator[str]:
    name = create_database("hydra_ops")
    url = pg_url(name)
    try:
        migrate(url)
        yield url
    finally:
        from service.db.session import _engine_for

        _engine_for.cache_clear()
        drop_database(name)


def _settings(url: str, tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        database_url=url,
        broker_url="memory://",
        storage_dir=str(tmp_path / "objects"),
        work_dir=str(tmp_path / "work"),
        rate_limit_per_minute=0,
        auth_cache_seconds=0,
        **extra,
    )


@pytest.fixture(params=["postgres", "sqlite"])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """A fresh, migrated database of each kind (Postgres: a fresh one per test module, so counts are
    those of the test: each test starts from an empty jobs table)."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url_module")
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE jobs, job_events, artifacts, api_keys, tenants, workers CASCADE"))
        engine.dispose()
    else:
        url = f"sqlite:///{tmp_path / 'hydra.db'}"
        migrate(url)
    return _settings(url, tmp_path)


@pytest.fixture
def app(db_settings: Settings):  # type: ignore[no-untyped-def]
    return build_app(db_settings, RecordingQueue())


@pytest.fixture
def make_token(db_settings: Settings):  # type: ignore[no-untyped-def]
    def make(tenant: str | None = None) -> str:
        with session_scope(db_settings) as s:
            _, token = keys.create_api_key(s, tenant or f"t-{uuid.uuid4().hex[:8]}", "test")
        return token

    return make
