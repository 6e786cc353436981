"""What an upload may cost the API: memory bounded whatever the file declares, and bounded concurrency.

- The issue's deflate bomb (~264 kB on disk declaring 256 MiB of images) goes through
  ``POST /v1/datasets`` of an in-process app while the process's peak RSS (VmHWM, reset first) is
  watched: it grows by a few MB, not by twice the declared size as it did when the arrays were loaded.
- Uploads held in progress (their check blocked on an event): one more from the same key is 429
  ``too_many_uploads``, one from another key past the process's limit is 503 ``uploads_busy``, both
  with ``Retry-After`` and the setting they hit named, answered without the body being read; the
  held uploads then finish and are stored, the refused ones stored nothing, and a later one works.
- A wrong key is 401 at the door, before the body is read.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.core.data.test_npz_check import write_zeros_npz
from tests.service.svc_helpers import assert_error, build_app

MB = 1024 * 1024


def _npz(n: int = 40) -> bytes:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    np.savez(out, images=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), labels=np.arange(n) % 10)
    return out.getvalue()


def _post(client: TestClient, key: Any, data: bytes, **form: str) -> Any:
    return client.post(
        "/v1/datasets", headers=key.headers, files={"file": ("d.npz", data, "application/octet-stream")}, data=form
    )


def _kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
    except OSError as err:  # pragma: no cover - a kernel without it; the core test measures in a child
        pytest.skip(f"cannot reset the peak RSS here ({err}); tests/core/data/test_npz_check.py measures in a child")


def test_a_deflate_bomb_costs_the_api_a_few_megabytes(settings, queue, key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bomb = tmp_path / "bomb.npz"
    n = write_zeros_npz(bomb, 256 * MB)
    data = bomb.read_bytes()
    assert len(data) < MB
    with TestClient(build_app(settings, queue), raise_server_exceptions=False) as client:
        assert _post(client, key, _npz()).status_code == 201  # warm: imports, first-use caches
        _reset_peak_rss()
        before = _kb("VmRSS:")
        started = time.perf_counter()
        response = _post(client, key, data, num_classes="10")
        seconds = time.perf_counter() - started
        growth_mb = (_kb("VmHWM:") - before) / 1024
    assert response.status_code == 201, response.text
    assert response.json()["n_samples"] == n and response.json()["input_shape"] == [1, 28, 28]
    # the loader this replaced grew by ~530 MB here (bench/upload_check_memory.py); the check streams
    assert growth_mb < 64, f"peak RSS grew by {growth_mb:.1f} MB checking the bomb"
    assert seconds < 60


@pytest.fixture
def held_checks(monkeypatch):  # type: ignore[no-untyped-def]
    """Dataset checks that wait for ``release`` once they have started (``started`` counts them)."""
    import api.routes.datasets as datasets_route

    release = threading.Event()
    started = threading.Semaphore(0)
    real = datasets_route.validate_npz

    def held(path: str, num_classes: int | None) -> dict[str, Any]:
        started.release()
        assert release.wait(30), "the test never released the held upload"
        return real(path, num_classes)

    monkeypatch.setattr(datasets_route, "validate_npz", held)
    yield started, release
    release.set()


def test_concurrent_uploads_are_bounded_per_key_and_overall(settings, queue, make_key, held_checks) -> None:  # type: ignore[no-untyped-def]
    started, release = held_checks
    limited = settings.model_copy(update={"max_concurrent_uploads_per_key": 1, "max_concurrent_uploads": 2})
    first, second, third = make_key(), make_key(), make_key()
    results: dict[str, Any] = {}
    with TestClient(build_app(limited, queue), raise_server_exceptions=False) as client:

        def upload(name: str, key: Any) -> None:
            results[name] = _post(client, key, _npz())

        threads = [threading.Thread(target=upload, args=(name, k)) for name, k in (("a", first), ("b", second))]
        for thread in threads:
            thread.start()
        for _ in threads:  # both are being checked: both slots are taken
            assert started.acquire(timeout=30)

        again = _post(client, first, _npz())
        body = assert_error(again, 429, "too_many_uploads", None)
        assert "max_concurrent_uploads_per_key = 1" in body["detail"]
        assert int(again.headers["Retry-After"]) > 0

        busy = _post(client, third, _npz())
        body = assert_error(busy, 503, "uploads_busy", None)
        assert "max_concurrent_uploads = 2" in body["detail"]
        assert int(busy.headers["Retry-After"]) > 0

        release.set()
        for thread in threads:
            thread.join(30)
        assert results["a"].status_code == 201 and results["b"].status_code == 201, results
        # the refused ones stored nothing; the slots are free again for everyone
        assert client.get("/v1/datasets", headers=third.headers).json()["count"] == 0
        assert client.get("/v1/datasets", headers=first.headers).json()["count"] == 1
        assert _post(client, third, _npz()).status_code == 201
        assert _post(client, first, _npz()).status_code == 201
        assert client.get("/v1/datasets", headers=first.headers).json()["count"] == 2


def test_a_refused_check_frees_its_slot(settings, queue, key) -> None:  # type: ignore[no-untyped-def]
    limited = settings.model_copy(update={"max_concurrent_uploads_per_key": 1, "max_concurrent_uploads": 1})
    with TestClient(build_app(limited, queue), raise_server_exceptions=False) as client:
        for _ in range(3):
            assert_error(_post(client, key, b"not a zip"), 422, "invalid_upload", "file")
        assert _post(client, key, _npz()).status_code == 201


def test_a_wrong_key_is_refused_before_the_body_is_read(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic abc"}):
        response = client.post("/v1/models", headers=headers, files={"file": ("w.pt", b"x" * 1000)}, data={"arch": "x"})
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
