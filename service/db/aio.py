"""Async reads for the requests clients repeat most: "is my job done yet?" and "who is this key?".

Why a second access path: a status poll does one indexed SELECT. Through the sync engine it also pays
a hop to a worker thread (FastAPI runs sync code in a thread pool) and the ORM's bookkeeping, which
together cost several times the query. On Postgres these two reads therefore run on psycopg's native
asyncio connections, straight from the event loop, with statements prepared server-side after a few
uses. Everything else (all writes, every other read) goes through the sync functions in this package,
and with SQLite (the embedded default) there is no async path at all: callers fall back to the sync
functions (``get_job_view``, ``keys.authenticate``), which return the same shapes.

Status polls are also *batched* (the DataLoader pattern): lookups that arrive while a query is in
flight wait for it and then share one ``WHERE id = ANY(...)`` query. One poller sees no difference;
hundreds of pollers cost a handful of round trips per batch instead of one each. Every answer is
still a committed row read after the request arrived, as fresh as a query of its own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any

from sqlalchemy.engine import make_url

from service.db.base import Job
from service.db.keys import Principal, hash_key
from service.settings import Settings

log = logging.getLogger(__name__)

_JOB_COLUMNS = ", ".join(c.name for c in Job.__table__.c)
JOB_VIEWS_SQL = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ANY(%s)"
MAX_BATCH = 500
AUTH_SQL = (
    "SELECT k.id, k.tenant_id, t.name FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
    "WHERE k.key_hash = %s AND k.revoked_at IS NULL"
)


def conninfo_for(database_url: str) -> str:
    """The libpq connection string of a SQLAlchemy ``postgresql+psycopg://`` URL (UTC session)."""
    from psycopg.conninfo import make_conninfo

    url = make_url(database_url)
    params: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    params.update({k: v for k, v in url.query.items() if isinstance(v, str)})
    params["options"] = (str(params.get("options", "")) + " -c TimeZone=UTC").strip()
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


class AsyncReader:
    """A small psycopg async pool serving the two hot reads. Open it inside the running event loop."""

    def __init__(self, database_url: str, max_size: int = 10, timeout_s: float = 10.0) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(
            conninfo_for(database_url),
            min_size=1,
            max_size=max_size,
            timeout=timeout_s,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            name="hydra-async-reads",
        )
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self.batches = 0  # queries sent for status lookups (observability, tests)

    async def open(self) -> None:
        # wait=False: a database that is down at start-up must not stop the API from starting
        # (/readyz reports it); queries wait up to ``timeout_s`` for a connection, then fail.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def get_job_view(self, tenant_id: int, job_id: str) -> dict[str, Any] | None:
        """Same answer as ``jobs.get_job_view`` (the tenant's job, or ``None``)."""
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(future)
        if not self._flushing:
            self._flushing = True
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())  # keep a reference
        row = await future
        return row if row is not None and row["tenant_id"] == tenant_id else None

    async def _flush(self) -> None:
        """Answer waiting lookups in batches until none is left; one batch in flight at a time."""
        try:
            await asyncio.sleep(0)  # let the requests that arrived with this one join the batch
            while self._waiting:
                ids = list(self._waiting)[:MAX_BATCH]
                batch = {job_id: self._waiting.pop(job_id) for job_id in ids}
                self.batches += 1
                try:
                    async with self.pool.connection() as conn:
                        cursor = await conn.execute(JOB_VIEWS_SQL, (ids,))
                        rows: dict[str, Any] = {row["id"]: row for row in await cursor.fetchall()}  # type: ignore[call-overload]  # dict_row
                except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for job_id, futures in batch.items():
                    for future in futures:
                        if not future.done():  # a waiter may have been cancelled (client gone)
                            future.set_result(rows.get(job_id))
        finally:
            self._flushing = False

    async def authenticate(self, token: str) -> Principal | None:
        """Same answer as ``keys.authenticate``."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(AUTH_SQL, (hash_key(token),))
            row = await cursor.fetchone()
        if row is None:
            return None
        return Principal(api_key_id=row["id"], tenant_id=row["tenant_id"], tenant_name=row["name"])  # type: ignore[call-overload]  # dict_row


def build_async_reader(settings: Settings) -> AsyncReader | None:
    """An async reader for Postgres databases; ``None`` for others (use the sync functions)."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "postgresql" or url.get_driver_name() not in ("psycopg", ""):
        return None
    if importlib.util.find_spec("psycopg_pool") is None:  # the pool extra is missing: degrade, loudly
        log.warning("psycopg_pool is not installed; hot reads use the sync path")
        return None
    return AsyncReader(settings.database_url, max_size=settings.db_pool_size)
