"""Helpers shared by the service tests (importable by name: ``from svc_helpers import ...``)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import psycopg

from migrations import alembic_config

PG_HOST = os.environ.get("HYDRA_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("HYDRA_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("HYDRA_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("HYDRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pg_url(database: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def _admin() -> psycopg.Connection:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)


def create_database(prefix: str) -> str:
    """A new empty database with a unique name; returns the name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str, revision: str = "head") -> None:
    from alembic import command

    cfg = alembic_config(url)
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, revision)


@dataclass
class RecordingQueue:
    """Stands in for the Celery client: records job ids; ``fail`` simulates a broker outage."""

    sent: list[str] = field(default_factory=list)
    queues: list[str | None] = field(default_factory=list)  # the routed queue of each sent job
    fail: bool = False

    def enqueue(self, job_id: str, queue: str | None = None) -> bool:
        if self.fail:
            return False
        self.sent.append(job_id)
        self.queues.append(queue)
        return True

    def ping(self) -> None:
        if self.fail:
            raise ConnectionError("broker down")


@dataclass
class Key:
    token: str
    prefix: str
    tenant: str
    tenant_id: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def assert_error(response, status: int, code: str | None = None, field: object = ...) -> dict:  # type: ignore[no-untyped-def]
    """The one error shape, with the status, code and field expected."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "detail", "field"}, body
    assert isinstance(body["error_code"], str) and isinstance(body["detail"], str)
    if code is not None:
        assert body["error_code"] == code, body
    if field is not ...:
        assert body["field"] == field, body
    return body


def build_app(settings, queue):  # type: ignore[no-untyped-def]
    """The API for ``settings`` with the broker client replaced by ``queue``."""
    from api.deps import get_job_queue
    from api.main import create_app

    app = create_app(settings)
    app.dependency_overrides[get_job_queue] = lambda: queue
    return app
