"""Authentication, rate limiting and the one error shape, as a client sees them."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from launch.service_cli import app as cli_app
from service.db import keys, workers
from service.db.base import WorkerBeat, utcnow
from service.db.session import session_scope
from tests.service.svc_helpers import RecordingQueue, assert_error, build_app


def test_every_auth_failure_is_the_same_401(client: TestClient, key, settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as s:
        revoked, revoked_token = keys.create_api_key(s, key.tenant, "old")
        assert keys.revoke_keys(s, revoked.prefix) == 1
    attempts = {
        "missing": {},
        "empty": {"Authorization": "Bearer "},
        "wrong scheme": {"Authorization": f"Basic {key.token}"},
        "unknown": {"Authorization": "Bearer " + "x" * 43},
        "revoked": {"Authorization": f"Bearer {revoked_token}"},
    }
    bodies = []
    for headers in attempts.values():
        response = client.get("/v1/jobs", headers=headers)
        bodies.append(assert_error(response, 401, "unauthorized", None))
        assert response.headers["www-authenticate"] == "Bearer"
    assert all(body == bodies[0] for body in bodies)
    assert client.get("/v1/jobs", headers=key.headers).status_code == 200


def test_missing_key_is_401_not_422_even_with_a_bad_body(client: TestClient) -> None:
    assert_error(client.post("/v1/jobs", json={"pruning": {"k": [7]}}), 401, "unauthorized")


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/jobs/x"),
        ("POST", "/v1/jobs/x/cancel"),
        ("GET", "/v1/models"),
        ("GET", "/v1/datasets"),
        ("GET", "/v1/catalogue/objectives"),
        ("GET", "/v1/jobs/x/artifacts/y"),
    ],
)
def test_all_tenant_routes_need_a_key(client: TestClient, method: str, path: str) -> None:
    assert_error(client.request(method, path), 401, "unauthorized")


def test_health_needs_no_key(client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").json()["status"] == "ok"
    with session_scope(settings) as s:
        workers.beat(s, "health-test:1", "health-test", 1)  # a live worker, as a running one writes it
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "store": "ok", "worker": "ok"}
    finally:
        with session_scope(settings) as s:
            workers.forget(s, "health-test:1")


def test_readyz_is_not_ready_without_a_live_worker(client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as s:
        s.execute(delete(WorkerBeat))
        s.commit()
    body = assert_error(client.get("/readyz"), 503, "service_unavailable")
    assert body["detail"] == (
        f"not ready: worker (no worker heartbeat within the lease of {settings.lease_seconds} s (last: never))"
    )
    with session_scope(settings) as s:  # a worker silent for longer than the lease is no worker
        s.add(WorkerBeat(name="dead:2", host="dead", pid=2, heartbeat_at=utcnow() - timedelta(seconds=300)))
        s.commit()
    body = assert_error(client.get("/readyz"), 503, "service_unavailable")
    assert "worker (no worker heartbeat within the lease" in body["detail"] and "(last: 300 s ago)" in body["detail"]
    with session_scope(settings) as s:
        workers.beat(s, "dead:2", "dead", 2)  # it beats again (a restarted worker): ready at once
    assert client.get("/readyz").status_code == 200
    unchecked = settings.model_copy(update={"ready_requires_worker": False})
    with session_scope(settings) as s:
        s.execute(delete(WorkerBeat))
        s.commit()
    with TestClient(build_app(unchecked, RecordingQueue())) as other:
        ready = other.get("/readyz")
        assert ready.status_code == 200 and "worker" not in ready.json()["checks"]


def test_readyz_names_what_is_down(client: TestClient, queue, settings) -> None:  # type: ignore[no-untyped-def]
    queue.fail = True
    with session_scope(settings) as s:
        workers.beat(s, "down-test:1", "down-test", 1)
    try:
        body = assert_error(client.get("/readyz"), 503, "service_unavailable")
    finally:
        with session_scope(settings) as s:
            workers.forget(s, "down-test:1")
    assert "broker" in body["detail"] and "database" not in body["detail"] and "worker" not in body["detail"]


def test_unknown_route_and_method_use_the_error_shape(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.get("/v1/nothing-here", headers=key.headers), 404, "not_found")
    assert_error(client.delete("/v1/jobs", headers=key.headers), 405, "method_not_allowed")


def test_rate_limit_per_key(settings, queue, make_key) -> None:  # type: ignore[no-untyped-def]
    limited = settings.model_copy(update={"rate_limit_per_minute": 3})
    first, second = make_key(), make_key()
    while time.time() % 60 > 55:  # keep the requests inside one fixed window
        time.sleep(0.5)
    with TestClient(build_app(limited, queue)) as client:
        for _ in range(3):
            assert client.get("/v1/jobs", headers=first.headers).status_code == 200
        response = client.get("/v1/jobs", headers=first.headers)
        assert_error(response, 429, "rate_limited", None)
        assert int(response.headers["retry-after"]) >= 1
        assert client.get("/v1/jobs", headers=second.headers).status_code == 200  # per key, not global


def test_revocation_reaches_a_process_within_the_auth_cache_time(settings, queue, key) -> None:  # type: ignore[no-untyped-def]
    cached = settings.model_copy(update={"auth_cache_seconds": 0.5})
    with TestClient(build_app(cached, queue)) as client:
        assert client.get("/v1/jobs", headers=key.headers).status_code == 200
        with session_scope(settings) as s:
            assert keys.revoke_keys(s, key.prefix) == 1
        assert client.get("/v1/jobs", headers=key.headers).status_code == 200  # remembered, for now
        time.sleep(0.6)
        assert_error(client.get("/v1/jobs", headers=key.headers), 401, "unauthorized")


def test_cli_creates_and_revokes_keys(settings, queue, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from service.settings import get_settings

    monkeypatch.setenv("HYDRA_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    uncached = settings.model_copy(update={"auth_cache_seconds": 0})
    try:
        client = TestClient(build_app(uncached, queue))
        runner = CliRunner()
        created = runner.invoke(cli_app, ["create-key", "--tenant", "cli-tenant"])
        assert created.exit_code == 0, created.output
        token = created.stdout.strip().splitlines()[0]
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        listed = runner.invoke(cli_app, ["list-keys", "--tenant", "cli-tenant"])
        assert token[:8] in listed.stdout and token not in listed.stdout
        revoked = runner.invoke(cli_app, ["revoke-key", token[:8]])
        assert revoked.exit_code == 0, revoked.output
        assert_error(client.get("/v1/jobs", headers=headers), 401, "unauthorized")
        assert runner.invoke(cli_app, ["revoke-key", token[:8]]).exit_code == 1
    finally:
        get_settings.cache_clear()


def test_cli_lists_workers_with_host_pid_and_heartbeat(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The per-worker view /metrics no longer gives: ``hydra-service workers``."""
    from typer.testing import CliRunner

    from service.settings import get_settings

    monkeypatch.setenv("HYDRA_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    with session_scope(settings) as s:
        s.execute(delete(WorkerBeat))
        s.add(WorkerBeat(name="old-node:7", host="old-node", pid=7, heartbeat_at=utcnow() - timedelta(seconds=600)))
        s.commit()
        workers.beat(s, "gpu-node:42", "gpu-node", 42)
    try:
        listed = CliRunner().invoke(cli_app, ["workers"])
        assert listed.exit_code == 0, listed.output
        lines = listed.stdout.strip().splitlines()
        assert lines[0].startswith("gpu-node:42\talive\theartbeat ") and lines[1].startswith("old-node:7\tsilent\t")
    finally:
        get_settings.cache_clear()
        with session_scope(settings) as s:
            s.execute(delete(WorkerBeat))
            s.commit()
