"""Liveness and readiness, for load balancers and orchestrators (no API key needed).

``/healthz`` only says the process answers; ``/readyz`` says the service can do useful work: reach
the database, the broker and the object store, and have at least one worker whose own heartbeat
(``workers`` table, written by every worker every ``lease_seconds / 4``, busy or idle) is younger than
the lease. It names whatever fails. Without a live worker a submitted job would be accepted and wait
in the queue for ever; ``ready_requires_worker=false`` leaves the worker out (docs/DELIVERY.md).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import QueueDep, ReadSessionDep, SettingsDep, StoreDep
from api.errors import ErrorCode, error_response
from api.schemas import ErrorPublic, HealthPublic
from service.db import workers

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


class NoLiveWorker(Exception):
    pass


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> dict[str, Any]:
    """The process is up."""
    return {"status": "ok", "checks": {}}


@router.get("/readyz", response_model=HealthPublic, responses={503: {"model": ErrorPublic}})
def readyz(session: ReadSessionDep, store: StoreDep, queue: QueueDep, settings: SettingsDep) -> Any:
    """Database, broker and object store reachable, and a worker alive (503 names what is not)."""
    checks: dict[str, str] = {}

    def check(name: str, probe: Any) -> None:
        try:
            probe()
            checks[name] = "ok"
        except NoLiveWorker as exc:
            checks[name] = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("readiness check %s failed: %s", name, exc)
            checks[name] = f"{type(exc).__name__}: {str(exc)[:200]}"

    def worker_alive() -> None:
        state = workers.liveness(session, settings.lease_seconds)
        if state.alive == 0:
            last = "never" if state.newest_age_s is None else f"{state.newest_age_s:.0f} s ago"
            raise NoLiveWorker(f"no worker heartbeat within the lease of {settings.lease_seconds} s (last: {last})")

    check("database", lambda: session.execute(text("SELECT 1")).scalar_one())
    check("broker", getattr(queue, "ping", lambda: None))
    check("store", store.ping)
    if settings.ready_requires_worker:
        if checks["database"] == "ok":
            check("worker", worker_alive)
        else:
            checks["worker"] = "unknown (database unreachable)"
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        detail = "not ready: " + "; ".join(f"{name} ({checks[name]})" for name in failed)
        return error_response(503, ErrorCode.SERVICE_UNAVAILABLE.code, detail)
    return {"status": "ok", "checks": checks}
