"""Dependencies shared by the routes, as ``Annotated`` aliases (``SettingsDep``, ``SessionDep``,
``CurrentPrincipal``...).

Settings: the app is bound to one ``Settings`` when it is built (``create_app(settings)``, by default
the ``lru_cache``d ``get_settings()``), and ``SettingsDep`` injects it. Tests swap it exactly as the
FastAPI docs say, ``app.dependency_overrides[get_settings] = ...``, and everything derived from it
follows (database, object store, queue client, rate limiter), because builders are cached per
settings object. Why not plain ``Depends(get_settings)``: FastAPI runs a sync dependency in the
thread pool, and as soon as *any* override is registered it re-analyses every dependency of every
request. Measured on the status endpoint, those two costs were larger than the endpoint itself.

For the same reason the cheap dependencies are ``async def``: only real I/O goes to a thread.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.auth import build_auth_cache
from api.errors import ApiError, ErrorCode
from api.queue import JobQueue, build_job_queue
from api.ratelimit import MemoryRateLimiter, NoRateLimit, build_rate_limiter
from service.db import keys
from service.db.aio import AsyncReader
from service.db.keys import Principal
from service.db.session import get_read_sessionmaker, get_sessionmaker
from service.logs import bind_request as bind_log_context
from service.settings import Settings, get_settings
from service.storage import ObjectStore, build_store


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was built with, or ``dependency_overrides[get_settings]`` when set."""
    override = request.app.dependency_overrides.get(get_settings)
    if override is not None:
        value = override()
        return await value if inspect.isawaitable(value) else value
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def _session(factory: sessionmaker[Session]) -> AsyncIterator[Session]:
    session = factory()
    try:
        yield session
    finally:
        # The db functions commit their own transactions, so closing is usually pure bookkeeping;
        # only a session left mid-transaction (an error) needs the round trip of a rollback.
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_db(settings: SettingsDep) -> AsyncIterator[Session]:
    """One short session per request, for anything that writes."""
    async for session in _session(get_sessionmaker(settings)):
        yield session


async def get_read_db(settings: SettingsDep) -> AsyncIterator[Session]:
    """A read-only (autocommit) session: one round trip per query, for GET routes."""
    async for session in _session(get_read_sessionmaker(settings)):
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
ReadSessionDep = Annotated[Session, Depends(get_read_db)]


def async_reader_for(request: Request, settings: Settings) -> AsyncReader | None:
    """The async Postgres reader opened by the app's lifespan, if it serves these settings' database."""
    reader: AsyncReader | None = getattr(request.app.state, "async_reader", None)
    if reader is None or request.app.state.settings.database_url != settings.database_url:
        return None
    return reader


@lru_cache(maxsize=8)
def _store_for(settings: Settings) -> ObjectStore:
    return build_store(settings)


async def get_store(settings: SettingsDep) -> ObjectStore:
    """The object store of the settings."""
    return _store_for(settings)


StoreDep = Annotated[ObjectStore, Depends(get_store)]


async def get_job_queue(settings: SettingsDep) -> JobQueue:
    """The broker client (tests override this with a recorder)."""
    return build_job_queue(settings)


QueueDep = Annotated[JobQueue, Depends(get_job_queue)]


# auto_error=False: a missing header must be our 401, not FastAPI's 403/422.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key from `hydra-service create-key`.")


def unauthorized() -> ApiError:
    return ApiError(
        ErrorCode.UNAUTHORIZED, "missing, invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
    )


def _authenticate_sync(settings: Settings, token: str) -> Principal | None:
    with get_read_sessionmaker(settings)() as session:
        return keys.authenticate(session, token)


async def lookup_principal(request: Request, settings: Settings, token: str) -> Principal | None:
    """The live key ``token`` names (from the auth cache, else the database), or None."""
    cache = build_auth_cache(settings)
    principal = cache.get(token)
    if principal is None:
        reader = async_reader_for(request, settings)
        if reader is not None:
            principal = await reader.authenticate(token)
        else:
            principal = await run_in_threadpool(_authenticate_sync, settings, token)
        if principal is not None:
            cache.put(token, principal)
    return principal


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """Authenticate the Bearer key (one answer for every failure) and count it against its rate limit.

    Every authenticated request runs this, so it resolves settings, reader and limiter itself rather
    than through sub-dependencies (each costs a resolution step per request)."""
    if credentials is None or not credentials.credentials:
        raise unauthorized()
    settings = await get_app_settings(request)
    limiter = build_rate_limiter(settings)
    principal = await lookup_principal(request, settings, credentials.credentials)
    if principal is None:
        raise unauthorized()
    bind_log_context(tenant=principal.tenant_name)  # on every later log line of this request
    if isinstance(limiter, (MemoryRateLimiter, NoRateLimit)):
        retry_after = limiter.hit(principal.api_key_id)  # in memory: no I/O, no thread hop
    else:
        retry_after = await run_in_threadpool(limiter.hit, principal.api_key_id)
    if retry_after is not None:
        raise ApiError(
            ErrorCode.RATE_LIMITED,
            f"rate limit exceeded; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
