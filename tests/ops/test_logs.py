"""Log lines: JSON with job_id, attempt and tenant on every line (HYDRA_LOG_JSON), and API keys
scrubbed from everything logged. (The service's real processes are checked end to end in
tests/client/test_client_service.py.)"""

from __future__ import annotations

import io
import json
import logging
import secrets

import pytest
from fastapi.testclient import TestClient

from service import logs
from service.settings import Settings


def test_redact_removes_keys_and_keeps_ids_and_digests() -> None:
    token = secrets.token_urlsafe(32)
    job_id = "9e55cd33-854c-441e-863f-fa7447834fba"
    sha = "a" * 64
    text = (
        f"Authorization: Bearer {token} GET /v1/jobs/{job_id}?api_key={token}&x=1 key={token} "
        f"authorization={token} bare {token} sha {sha}"
    )
    clean = logs.redact(text)
    assert token not in clean
    assert job_id in clean and sha in clean and "x=1" in clean
    assert clean.count(logs.REDACTED) == 5


def test_settings_toggle() -> None:
    assert Settings().log_json is False
    assert Settings(log_json=True).log_json is True


@pytest.fixture
def captured():  # type: ignore[no-untyped-def]
    """A root handler writing JSON lines into a buffer, configured as the service does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logs.configure_logging(True)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_the_request_job_and_tenant(app, make_token, captured, db_settings) -> None:  # type: ignore[no-untyped-def]
    from service.db import jobs
    from service.db.keys import authenticate
    from service.db.session import session_scope

    token = make_token("acme")
    with session_scope(db_settings) as s:
        job_id = jobs.create_job(s, authenticate(s, token).tenant_id, {"name": "x"})[0].id
    probe = logging.getLogger("api.probe")

    @app.get("/v1/jobs/{job_id}/log-probe")
    def _probe(job_id: str) -> dict:  # type: ignore[type-arg]
        probe.info("probing %s with header %s", job_id, f"Bearer {token}")
        return {}

    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
        logging.getLogger("api.routes.jobs").info("status of %s read", job_id)  # outside any request
        with logs.request_context(job_id=job_id):
            logs.bind_request(tenant="acme")
            probe.warning("inside a request of job %s", job_id)
        client.get(f"/v1/jobs/{job_id}/log-probe")
    records = lines(captured)
    assert records, captured.getvalue()
    for record in records:
        assert {"ts", "level", "logger", "process", "job_id", "attempt", "tenant", "message"} <= set(record)
    inside = [r for r in records if r["message"].startswith("inside a request")]
    assert (
        inside and inside[0]["job_id"] == job_id and inside[0]["tenant"] == "acme" and inside[0]["level"] == "warning"
    )
    outside = [r for r in records if r["message"].startswith("status of")]
    assert outside and outside[0]["job_id"] is None and outside[0]["tenant"] is None
    probed = [r for r in records if r["message"].startswith("probing")]
    assert probed and probed[0]["job_id"] == job_id
    assert token not in captured.getvalue()


def test_worker_job_context_reaches_other_threads_and_is_restored(captured) -> None:  # type: ignore[no-untyped-def]
    import threading

    log = logging.getLogger("worker.test")
    with logs.job_context(job_id="j-1", attempt=2, tenant="acme"):
        thread = threading.Thread(target=lambda: log.info("heartbeat"))
        thread.start()
        thread.join()
    log.info("after")
    records = {r["message"]: r for r in lines(captured)}
    assert (records["heartbeat"]["job_id"], records["heartbeat"]["attempt"], records["heartbeat"]["tenant"]) == (
        "j-1",
        2,
        "acme",
    )
    assert records["after"]["job_id"] is None


def test_exceptions_are_scrubbed_too(captured) -> None:  # type: ignore[no-untyped-def]
    token = secrets.token_urlsafe(32)
    try:
        raise RuntimeError(f"request failed with Authorization: Bearer {token}")
    except RuntimeError:
        logging.getLogger("api.test").exception("unexpected")
    (record,) = [r for r in lines(captured) if r["message"] == "unexpected"]
    assert "RuntimeError" in record["exc"] and token not in captured.getvalue()


def test_plain_lines_are_scrubbed_and_uvicorn_access_lines_still_format() -> None:
    token = secrets.token_urlsafe(32)
    stream = io.StringIO()
    from uvicorn.logging import AccessFormatter

    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False))
    handler.addFilter(logs.ContextFilter())
    handler.addFilter(logs.RedactingFilter())
    access = logging.getLogger("uvicorn.access.test")
    access.propagate = False
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/v1/jobs?key={token}", "1.1", 200)
    assert token not in stream.getvalue() and "GET /v1/jobs?key=[redacted]" in stream.getvalue()
    config = logs.uvicorn_log_config(True)
    assert config["formatters"]["access"] == {"()": "service.logs.JsonFormatter"}
    assert config["handlers"]["default"]["filters"] == ["context", "redact"]
