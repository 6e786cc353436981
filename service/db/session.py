"""Engines and sessions, built from settings and cached per database URL.

Nothing here is module-global: the API, the worker, the CLI and the tests each ask for the engine of
*their* settings, so a test can point at a fresh database without monkeypatching. Sessions are meant
to be short (one request, one state transition); a training run never holds one open.

SQLite gets the settings that make it usable by several processes at once (the embedded default runs
an API and a worker side by side): WAL journal, a busy timeout instead of instant "database is
locked", and foreign keys switched on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from service.settings import Settings


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def build_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 20,
    pre_ping: bool = False,
    one_shot: bool = False,
) -> Engine:
    """A new engine for ``database_url`` (creating the folder of a SQLite file if needed).

    ``one_shot`` (migrations, CLI commands) keeps no pooled connections behind. Without ``pre_ping``
    a connection killed by a database restart fails one statement; SQLAlchemy then discards the whole
    pool, so the next request reconnects. ``pool_recycle`` retires connections before typical
    server/firewall idle timeouts."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"poolclass": NullPool} if one_shot else {}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if one_shot:
        return create_engine(url, poolclass=NullPool)
    return create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=pre_ping, pool_recycle=1800)


@lru_cache(maxsize=16)
def _engine_for(database_url: str, pool_size: int, max_overflow: int, pre_ping: bool) -> Engine:
    return build_engine(database_url, pool_size=pool_size, max_overflow=max_overflow, pre_ping=pre_ping)


def get_engine(settings: Settings) -> Engine:
    """The process-wide engine for these settings' database (one connection pool per URL)."""
    return _engine_for(
        settings.database_url, settings.db_pool_size, settings.db_max_overflow, settings.db_pool_pre_ping
    )


@lru_cache(maxsize=16)
def _sessionmaker_for(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: rows returned by the db functions stay readable after their commit.
    return sessionmaker(bind=engine, expire_on_commit=False)


def get_sessionmaker(settings: Settings) -> sessionmaker[Session]:
    """A session factory bound to the settings' engine."""
    return _sessionmaker_for(get_engine(settings))


@lru_cache(maxsize=16)
def _read_sessionmaker_for(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


def get_read_sessionmaker(settings: Settings) -> sessionmaker[Session]:
    """Sessions for read-only work, in autocommit mode (same pool as ``get_sessionmaker``).

    A single SELECT needs no transaction; skipping BEGIN/COMMIT saves two round trips on the
    requests clients poll most (job status, auth). Never use it for writes: each statement would
    commit on its own."""
    return _read_sessionmaker_for(get_engine(settings))


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A short-lived session; the db functions commit their own transactions."""
    with get_sessionmaker(settings)() as session:
        yield session
