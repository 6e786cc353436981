"""The API's broker client publishes ``hydra.run_job(job_id)`` by name, against the real Redis."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from api.queue import RUN_JOB_TASK, CeleryJobQueue, DisabledJobQueue, build_job_queue
from service.settings import Settings
from tests.service.svc_helpers import REDIS_URL


@pytest.fixture
def redis_queue():  # type: ignore[no-untyped-def]
    name = f"test-gpu-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at " + REDIS_URL)
    yield name, client
    client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    for k in client.scan_iter(f"*{name}*"):
        client.delete(k)


def test_enqueue_sends_the_task_by_name_to_the_queue(redis_queue) -> None:  # type: ignore[no-untyped-def]
    name, client = redis_queue
    settings = Settings(broker_url=REDIS_URL, queue_name=name, task_expires_seconds=600)
    queue = build_job_queue(settings)
    assert isinstance(queue, CeleryJobQueue)
    queue.ping()
    assert queue.enqueue("job-123")
    raw = client.lpop(name)
    assert raw is not None
    message = json.loads(raw)
    assert message["headers"]["task"] == RUN_JOB_TASK
    assert message["headers"]["expires"] is not None
    assert json.loads(__import__("base64").b64decode(message["body"]))[0] == ["job-123"]


def test_enqueue_failure_is_reported_not_raised() -> None:
    queue = CeleryJobQueue(Settings(broker_url="redis://127.0.0.1:1/0", queue_name="nowhere"))
    assert queue.enqueue("job-1") is False
    with pytest.raises(Exception):
        queue.ping()


def test_disabled_queue_for_benchmarks() -> None:
    assert isinstance(build_job_queue(Settings(enqueue_enabled=False)), DisabledJobQueue)


def test_redis_rate_limiter_is_shared_between_processes() -> None:
    """Two limiter instances (two API processes) count against one window in Redis."""
    from api.ratelimit import RedisRateLimiter, build_rate_limiter

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at " + REDIS_URL)
    settings = Settings(broker_url=REDIS_URL, rate_limit_per_minute=3, rate_limit_backend="redis")
    first = build_rate_limiter(settings)
    second = RedisRateLimiter(3, REDIS_URL)
    assert isinstance(first, RedisRateLimiter)
    import time

    while time.time() % 60 > 58:  # keep the four hits inside one fixed window
        time.sleep(0.5)
    key_id = 10_000_000 + uuid.uuid4().int % 1_000_000
    try:
        assert [first.hit(key_id), second.hit(key_id), first.hit(key_id)] == [None, None, None]
        retry_after = second.hit(key_id)
        assert retry_after is not None and 1 <= retry_after <= 60
    finally:
        for k in client.scan_iter(f"hydra:rl:{key_id}:*"):
            client.delete(k)
    with pytest.raises(ValueError):
        build_rate_limiter(Settings(broker_url="memory://", rate_limit_per_minute=3, rate_limit_backend="redis"))
