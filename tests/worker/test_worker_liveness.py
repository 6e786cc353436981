"""The production shape of worker liveness: real Celery workers (prefork, as Compose runs them) on
Postgres and Redis write their own heartbeat row while idle; ``/readyz`` is ready only while one is
younger than the lease, goes not-ready at once when the last worker stops cleanly (it deletes its
row) and within the lease when it is SIGKILLed (it just stops beating)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from sqlalchemy import delete

from service.db import workers
from service.db.base import WorkerBeat
from service.db.session import session_scope
from tests.worker.conftest import LEASE_SECONDS
from tests.worker.worker_helpers import wait_for

pytestmark = pytest.mark.slow


def _names(settings: Any) -> set[str]:
    with session_scope(settings) as s:
        return {row.name for row in workers.list_workers(s)}


def test_idle_workers_beat_and_readyz_follows_them(api: Any, start_worker: Any, settings: Any) -> None:
    with session_scope(settings) as s:  # workers of earlier tests (killed ones leave their rows)
        s.execute(delete(WorkerBeat))
        s.commit()
    assert api.get("/readyz").status_code == 503

    first = start_worker()
    name = f"{socket.gethostname()}:{first.proc.pid}"  # the main process beats, not the pool child
    wait_for(lambda: name in _names(settings), 10, "the idle worker's heartbeat row")
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["worker"] == "ok", ready.text
    with session_scope(settings) as s:
        before = {r.name: r.heartbeat_at for r in workers.list_workers(s)}[name]
    time.sleep(LEASE_SECONDS / 4 + 0.5)
    with session_scope(settings) as s:  # it keeps beating while idle
        assert {r.name: r.heartbeat_at for r in workers.list_workers(s)}[name] > before

    assert first.terminate() == 0  # a clean stop removes the row: not ready at once
    assert name not in _names(settings)
    body = api.get("/readyz").json()
    assert body["error_code"] == "service_unavailable" and "worker (no worker heartbeat" in body["detail"]

    second = start_worker()
    wait_for(lambda: api.get("/readyz").status_code == 200, 10, "ready again with a new worker")
    second.kill()  # SIGKILL: the row stays, silent
    killed_at = time.monotonic()
    wait_for(lambda: api.get("/readyz").status_code == 503, LEASE_SECONDS + 3, "/readyz 503 after the SIGKILL")
    assert time.monotonic() - killed_at <= LEASE_SECONDS + 3
