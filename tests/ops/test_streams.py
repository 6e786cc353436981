"""Open event streams (SSE) against the API served by uvicorn: a key revoked while its stream is open
loses the stream within the promise of ``auth_cache_seconds``, and one key cannot hold more than
``max_streams_per_key`` streams (429 naming the limit); a closed stream gives its slot back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.db import jobs, keys
from service.db.session import session_scope
from service.settings import Settings
from tests.ops.server_process import free_port
from tests.service.svc_helpers import RecordingQueue, build_app, migrate

PROMISE_S = 2.0  # auth_cache_seconds of these tests: "a revoked key stops working within this time"
MARGIN_S = 1.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    url = f"sqlite:///{tmp_path / 'hydra.db'}"
    migrate(url)
    settings = Settings(
        database_url=url,
        broker_url="memory://",
        storage_dir=str(tmp_path / "objects"),
        work_dir=str(tmp_path / "work"),
        rate_limit_per_minute=0,
        auth_cache_seconds=PROMISE_S,
        max_streams_per_key=2,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(settings, RecordingQueue()), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", settings
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _key_and_job(settings: Settings, tenant: str) -> tuple[str, str, str]:
    """A key (token, prefix) and a queued job of its tenant: a job that never ends, so its stream stays open."""
    with session_scope(settings) as s:
        key, token = keys.create_api_key(s, tenant, "test")
        job, _ = jobs.create_job(s, key.tenant_id, {"name": "never-ends"})
        return token, key.prefix, job.id


def _open(client: httpx.Client, job_id: str, token: str):  # type: ignore[no-untyped-def]
    return client.stream(
        "GET",
        f"/v1/jobs/{job_id}/events",
        params={"stream": "true"},
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
    )


def test_a_revoked_key_loses_its_open_stream_within_the_promise(served: tuple[str, Settings]) -> None:
    base, settings = served
    token, prefix, job_id = _key_and_job(settings, "revoked-tenant")
    other_token, _, other_job = _key_and_job(settings, "other-tenant")
    with httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=PROMISE_S + 8)) as client:
        with _open(client, job_id, token) as stream, _open(client, other_job, other_token) as other:
            assert stream.status_code == 200 and other.status_code == 200
            lines = stream.iter_lines()
            assert next(lines) == "retry: 2000"
            time.sleep(PROMISE_S)  # well past the first key check: the stream is established and trusted
            with session_scope(settings) as s:
                assert keys.revoke_keys(s, prefix) == 1
            revoked_at = time.monotonic()
            try:
                rest = [line for line in lines if line]  # returns when the server closes the stream
            except httpx.ReadTimeout:
                pytest.fail(f"the stream of a revoked key was still open {PROMISE_S + 8} s after the revocation")
            closed_s = time.monotonic() - revoked_at
            print(f"stream closed {closed_s:.2f} s after revoke-key (promise: {PROMISE_S} s)")
            assert closed_s < PROMISE_S + MARGIN_S, closed_s
            assert rest[-1].startswith(": the API key was revoked"), rest
            # only the job's one event written before the revocation (its "queued" status) was sent
            assert [line for line in rest if line.startswith("event:")] == ["event: status"], rest
            # the other key's stream is untouched
            other_lines = other.iter_lines()
            assert next(other_lines) == "retry: 2000"
        again = client.get(
            f"/v1/jobs/{job_id}/events", params={"stream": "true"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert again.status_code == 401 and again.json()["error_code"] == "unauthorized"


def test_one_key_holds_at_most_the_limit_of_streams_and_a_closed_one_frees_its_slot(
    served: tuple[str, Settings],
) -> None:
    base, settings = served
    token, _, job_id = _key_and_job(settings, "greedy-tenant")
    other_token, _, other_job = _key_and_job(settings, "modest-tenant")
    with httpx.Client(base_url=base, timeout=10) as client:
        with _open(client, job_id, token) as first, _open(client, job_id, token) as second:
            assert first.status_code == 200 and second.status_code == 200
            third = client.get(
                f"/v1/jobs/{job_id}/events", params={"stream": "true"}, headers={"Authorization": f"Bearer {token}"}
            )
            assert third.status_code == 429, third.text
            body = third.json()
            assert body["error_code"] == "rate_limited" and third.headers["retry-after"]
            assert "the limit is 2 (max_streams_per_key)" in body["detail"]
            with _open(client, other_job, other_token) as another:  # another key is not affected
                assert another.status_code == 200
            # the history (JSON) is not a stream and is not capped
            history = client.get(f"/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {token}"})
            assert history.status_code == 200
        # both closed by the client: their slots come back as soon as the server notices the disconnect
        deadline = time.monotonic() + 5
        while True:
            with _open(client, job_id, token) as s1, _open(client, job_id, token) as s2:
                if s1.status_code == 200 and s2.status_code == 200:
                    break
            assert time.monotonic() < deadline, "closed streams did not give their slots back"
            time.sleep(0.2)
