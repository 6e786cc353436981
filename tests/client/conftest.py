"""Fixtures for the client tests: the real embedded service (``hydra-service serve`` in an empty
folder: SQLite, local objects, SQL broker, a solo worker), with a second tenant's key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.embedded_service import EmbeddedService


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedService]:
    svc = EmbeddedService(tmp_path_factory.mktemp("client-service")).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def other_key(service: EmbeddedService) -> str:
    return service.create_key("someone-else")
