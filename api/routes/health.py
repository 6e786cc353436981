"""Liveness and readiness, for load balancers and orchestrators (no API key needed).

``/healthz`` only says the process answers; ``/readyz`` says it can do useful work, i.e. reach the
database, the broker and the object store, and names whichever it cannot.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import QueueDep, ReadSessionDep, StoreDep
from api.errors import ErrorCode, error_response
from api.schemas import ErrorPublic, HealthPublic

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> dict[str, Any]:
    """The process is up."""
    return {"status": "ok", "checks": {}}


@router.get("/readyz", response_model=HealthPublic, responses={503: {"model": ErrorPublic}})
def readyz(session: ReadSessionDep, store: StoreDep, queue: QueueDep) -> Any:
    """Database, broker and object store are all reachable (503 names the ones that are not)."""
    checks: dict[str, str] = {}

    def check(name: str, probe: Any) -> None:
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("readiness check %s failed: %s", name, exc)
            checks[name] = f"{type(exc).__name__}: {str(exc)[:200]}"

    check("database", lambda: session.execute(text("SELECT 1")).scalar_one())
    check("broker", getattr(queue, "ping", lambda: None))
    check("store", store.ping)
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        detail = "not ready: " + "; ".join(f"{name} ({checks[name]})" for name in failed)
        return error_response(503, ErrorCode.SERVICE_UNAVAILABLE.code, detail)
    return {"status": "ok", "checks": checks}
