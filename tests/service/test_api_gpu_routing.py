"""Routing by GPU count at submission: a job needing N GPUs goes to the queue of a worker that has
them (HYDRA_GPU_QUEUES), or is refused with ``resources.gpus`` named; nothing is stored when refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.db import jobs
from service.db.session import session_scope
from service.routing import queue_for
from service.settings import Settings
from tests.service.svc_helpers import RecordingQueue, assert_error, build_app


@pytest.fixture
def routed_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"gpu_queues": "8:gpu8,2:gpu2"})


def test_queue_by_gpu_count(routed_settings: Settings) -> None:
    s = routed_settings
    assert queue_for(s, {}) == queue_for(s, {"resources": {"gpus": 1}}) == s.queue_name
    assert queue_for(s, {"resources": {"gpus": 2}}) == "gpu2"
    assert queue_for(s, {"resources": {"gpus": 4}}) == "gpu8"  # the smallest worker that holds the job
    assert queue_for(s, {"resources": {"gpus": 9}}) is None


def test_submission_routes_by_gpu_count(routed_settings: Settings, key) -> None:  # type: ignore[no-untyped-def]
    queue = RecordingQueue()
    with TestClient(build_app(routed_settings, queue), raise_server_exceptions=False) as client:
        for gpus, expected in ((0, routed_settings.queue_name), (4, "gpu8")):
            spec = {"resources": {"gpus": gpus, "precision": "bf16"}}
            response = client.post("/v1/jobs", json=spec, headers=key.headers)
            assert response.status_code == 201, response.text
            assert queue.queues[-1] == expected

        response = client.post("/v1/jobs", json={"resources": {"gpus": 16}}, headers=key.headers)
        assert_error(response, 422, "invalid_spec", "resources.gpus")
        assert "16 GPUs" in response.json()["detail"] and "2, 8" in response.json()["detail"]
    assert len(queue.sent) == 2
    with session_scope(routed_settings) as s:
        assert jobs.list_jobs(s, key.tenant_id, None, 50, 0)[1] == 2  # the refused job was not stored


def test_no_multi_gpu_queue_configured_refuses(client: TestClient, key, queue) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/jobs", json={"resources": {"gpus": 2}}, headers=key.headers)
    assert_error(response, 422, "invalid_spec", "resources.gpus")
    assert "no multi-GPU queue is configured" in response.json()["detail"]
    assert queue.sent == []


def test_fp16_on_cpu_refused_at_the_api(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/jobs", json={"device": "cpu", "resources": {"precision": "fp16"}}, headers=key.headers)
    assert_error(response, 422, "unsupported_precision", "resources.precision")
