"""The Alembic history builds exactly the schema of ``service.db.base``, and unwinds cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from migrations import alembic_config
from service.db.base import Base
from tests.service.svc_helpers import create_database, drop_database, pg_url

TABLES = {"tenants", "api_keys", "jobs", "job_events", "artifacts", "models", "datasets"}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    name = create_database("hydra_mig")
    try:
        yield pg_url(name)
    finally:
        drop_database(name)


def _config(url: str):  # type: ignore[no-untyped-def]
    cfg = alembic_config(url)
    cfg.attributes["configure_logging"] = False
    return cfg


def test_upgrade_matches_models_and_downgrade_unwinds(empty_url: str) -> None:
    cfg = _config(empty_url)
    command.upgrade(cfg, "head")
    engine = create_engine(empty_url)
    try:
        with engine.connect() as conn:
            assert TABLES <= set(inspect(conn).get_table_names())
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == [], diff
            columns = {c["name"] for c in inspect(conn).get_columns("jobs")}
            assert {"lease_owner", "lease_expires_at", "attempt", "max_attempts", "idempotency_key"} <= columns
            assert {"tags", "note"} <= columns  # 0003
        command.downgrade(cfg, "0002")  # 0003 alone unwinds: the columns go, the table stays
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("jobs")}
            assert "tags" not in columns and "note" not in columns and "idempotency_key" in columns
        command.downgrade(cfg, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) - {"alembic_version"} == set()
        command.upgrade(cfg, "head")  # and up again
        with engine.connect() as conn:
            assert TABLES <= set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_history_is_linear_and_revertable() -> None:
    script = ScriptDirectory.from_config(_config("sqlite://"))
    heads = script.get_heads()
    assert len(heads) == 1
    for revision in script.walk_revisions():
        source = Path(revision.path).read_text()
        assert "def downgrade" in source and "pass\n" not in source.split("def downgrade")[1][:40]
