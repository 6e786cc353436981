"""500 concurrent submissions, with and without Idempotency-Keys, on Postgres and on SQLite: exactly
the expected rows, one job per key, no 5xx. (bench/api_load.py runs the same burst against a real
uvicorn server and measures throughput; this is its exactly-once check, in process and fast.)"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest

from service.db import jobs, keys
from service.db.session import session_scope
from service.settings import Settings
from tests.service.svc_helpers import RecordingQueue, build_app, migrate

TOTAL = 500
REPEATED_KEYS = 25


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'data' / 'hydra.db'}"
    migrate(url)
    return Settings(
        database_url=url,
        broker_url="memory://",
        storage_dir=str(tmp_path / "objects"),
        work_dir=str(tmp_path / "work"),
        rate_limit_per_minute=0,
    )


async def _burst(app, token: str) -> list[tuple[str | None, int, str]]:  # type: ignore[no-untyped-def]
    plans: list[str | None] = [None] * (TOTAL // 2) + [f"retry-{i % REPEATED_KEYS}" for i in range(TOTAL - TOTAL // 2)]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://load", timeout=120) as client:

        async def post(i: int, key: str | None) -> tuple[str | None, int, str]:
            headers = {"Authorization": f"Bearer {token}"} | ({"Idempotency-Key": key} if key else {})
            spec = {"name": f"burst-{key or i}", "seed": 1}
            response = await client.post("/v1/jobs", json=spec, headers=headers)
            body = response.json()
            return key, response.status_code, body.get("id") or body.get("error_code", "")

        return await asyncio.gather(*[post(i, key) for i, key in enumerate(plans)])


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_500_concurrent_submissions_make_exactly_the_expected_jobs(
    backend: str, request: pytest.FixtureRequest
) -> None:
    settings: Settings = request.getfixturevalue("settings" if backend == "postgres" else "sqlite_settings")
    queue = RecordingQueue()
    app = build_app(settings, queue)
    with session_scope(settings) as session:
        key, token = keys.create_api_key(session, f"load-{backend}", "load")

    results = asyncio.run(_burst(app, token))

    statuses = Counter(status for _, status, _ in results)
    assert set(statuses) <= {200, 201}, (statuses, [r for r in results if r[1] not in (200, 201)][:3])
    ids_by_key: dict[str, set[str]] = defaultdict(set)
    for idem, _, job_id in results:
        if idem:
            ids_by_key[idem].add(job_id)
    assert len(ids_by_key) == REPEATED_KEYS and all(len(ids) == 1 for ids in ids_by_key.values()), ids_by_key
    expected = TOTAL // 2 + REPEATED_KEYS
    assert statuses[201] == expected and statuses[200] == TOTAL - expected, statuses
    with session_scope(settings) as session:
        _, count = jobs.list_jobs(session, key.tenant_id, limit=1)
    assert count == expected
    assert len(queue.sent) == expected and len(set(queue.sent)) == expected  # each job published once
