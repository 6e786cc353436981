"""The embedded default: the same API on SQLite (no async reader, sync fallbacks everywhere)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.db import jobs, keys, workers
from service.db.session import session_scope
from service.settings import Settings
from tests.service.svc_helpers import RecordingQueue, assert_error, build_app, migrate


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'var' / 'hydra.db'}"
    migrate(url)
    return Settings(
        database_url=url, storage_dir=str(tmp_path / "objects"), work_dir=str(tmp_path / "work"), broker_url="memory://"
    )


def test_embedded_default_serves_the_whole_job_flow(sqlite_settings: Settings) -> None:
    queue = RecordingQueue()
    app = build_app(sqlite_settings, queue)
    with session_scope(sqlite_settings) as s:
        _, token = keys.create_api_key(s, "local")
        _, other = keys.create_api_key(s, "someone-else")
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        assert app.state.async_reader is None  # SQLite: sync paths only
        assert_error(client.get("/readyz"), 503, "service_unavailable")  # no worker has beaten yet
        with session_scope(sqlite_settings) as s:
            workers.beat(s, "embedded:1", "embedded", 1)
        assert client.get("/readyz").status_code == 200
        first = client.post("/v1/jobs", json={"name": "a"}, headers={**headers, "Idempotency-Key": "k"})
        again = client.post("/v1/jobs", json={"name": "a"}, headers={**headers, "Idempotency-Key": "k"})
        assert first.status_code == 201 and again.status_code == 200 and first.json()["id"] == again.json()["id"]
        job_id = first.json()["id"]
        assert queue.sent == [job_id]
        assert client.get(f"/v1/jobs/{job_id}", headers=headers).json()["status"] == "queued"
        assert_error(client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {other}"}), 404, "not_found")
        assert client.get("/v1/jobs", headers=headers).json()["count"] == 1
        assert_error(client.post("/v1/jobs", json={"pruning": {"k": [2]}}, headers=headers), 422, None, "pruning.k")
        stored = json.loads((Path(__file__).parents[1] / "data/reports/v2_two_seeds.json").read_text())
        with session_scope(sqlite_settings) as s:
            attempt = jobs.claim_job(s, job_id, "w", 60)
            assert jobs.finish_job(s, job_id, "w", attempt, "succeeded", report=stored)
        served = client.get(f"/v1/jobs/{job_id}/report", headers=headers).json()
        assert served["format"] == "hydra-compress-report/3" and served["comparison"][0]["variant"] == "dense_s1"
        stream = client.get(f"/v1/jobs/{job_id}/events?stream=true", headers=headers)
        assert "event: end" in stream.text and '"succeeded"' in stream.text


def test_embedded_default_concurrent_idempotent_posts(sqlite_settings: Settings) -> None:
    app = build_app(sqlite_settings, RecordingQueue())
    with session_scope(sqlite_settings) as s:
        _, token = keys.create_api_key(s, "local")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "same"}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await asyncio.gather(*[client.post("/v1/jobs", json={}, headers=headers) for _ in range(25)])

    responses = asyncio.run(run())
    assert {r.status_code for r in responses} <= {200, 201}
    assert len({r.json()["id"] for r in responses}) == 1
