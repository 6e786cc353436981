"""Pruning combinations and channel-granularity architectures refused at submission, naming the field."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.svc_helpers import assert_error


def submit(client: TestClient, key, spec: dict):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", json=spec, headers=key.headers)


@pytest.mark.parametrize(
    "pruning, field",
    [
        ({"methods": ["lwm"], "allocation": "learned"}, "pruning.allocation"),
        ({"allocation": "global", "granularity": "channel"}, "pruning.allocation"),
        ({"granularity": "2:4"}, "pruning.granularity"),
    ],
)
def test_bad_pruning_combinations_are_422_naming_the_field(client: TestClient, key, queue, pruning, field) -> None:  # type: ignore[no-untyped-def]
    assert_error(submit(client, key, {"pruning": pruning}), 422, "validation_error", field)
    assert queue.sent == []


def test_channel_granularity_refuses_a_network_it_cannot_rebuild(client: TestClient, key, queue) -> None:  # type: ignore[no-untyped-def]
    spec = {"model": {"arch": "torchvision:regnet_x_400mf"}, "dataset": {"name": "cifar10"}}  # grouped convs
    channel = {**spec, "pruning": {"granularity": "channel"}}
    body = assert_error(submit(client, key, channel), 422, "channel_unsupported", "pruning.granularity")
    assert "grouped" in body["detail"] and queue.sent == []
    ok = submit(client, key, {"pruning": {"granularity": "channel", "k": [0.5]}})  # cnn_small_mnist: fine
    assert ok.status_code == 201, ok.text
