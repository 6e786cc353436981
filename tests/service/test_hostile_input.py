"""Hostile input to the API (issue 16 items 1, 3 and 6): each is refused with a 422 naming the field,
before it costs the service anything, and none is a 500.

- a YAML alias bomb (would expand past 1 GB) sent to the dashboard's spec parser: refused in well under
  a second, with the process's peak memory barely moving;
- structures nested thousands deep (a job's ``model.kwargs``, an upload's ``kwargs`` form part, JSON
  and YAML editor text) and a 5,000-digit integer;
- absurd values: an attack radius beyond the input range, a keep fraction that keeps no weight of a
  layer, more data-loading processes than the workers' cores, a device they lack, a download they
  cannot make.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service.svc_helpers import RecordingQueue, assert_error, build_app

QUICK_SPEC = {"stages": {"pretrain": {"epochs": 1, "lr": 0.1}}}


def alias_bomb(levels: int = 9, fanout: int = 10) -> str:
    """``levels`` anchors, each a list of ``fanout`` aliases of the one before: fanout**levels leaves of
    "lol" once expanded (10**9 here: several GB as Python objects, ~6 GB as JSON text)."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * fanout)}]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def _status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/self/status")


def peak_rss_growth_mb(call):  # type: ignore[no-untyped-def]
    """(result of ``call()``, growth of this process's peak RSS during it in MB). The peak (VmHWM) is
    reset first through /proc/self/clear_refs, so a short spike counts too; where it cannot be reset,
    the growth of the peak above its old value is measured (which only under-reads if the old peak
    was higher)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = _status_kb("VmRSS")
    result = call()
    return result, (_status_kb("VmHWM") - before) / 1024


@pytest.fixture
def strict_client(tmp_path: Path, settings: Settings) -> TestClient:
    """The API on the default worker limits, made explicit: CPU only, 2 data-loading processes, no downloads."""
    limited = settings.model_copy(
        update={"worker_devices": "cpu", "max_dataloader_workers": 2, "dataset_download": False}
    )
    return TestClient(build_app(limited, RecordingQueue()), raise_server_exceptions=False)


# ----------------------------------------------------------------------------- item 1: YAML aliases
def test_an_alias_bomb_is_refused_before_it_expands(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    bomb = alias_bomb()
    assert len(bomb) < 1000
    client.post("/ui/api/spec-parse", json={"text": "a: 1"}, headers=key.headers)  # warm the route up
    started = time.monotonic()
    response, growth = peak_rss_growth_mb(
        lambda: client.post("/ui/api/spec-parse", json={"text": bomb, "format": "yaml"}, headers=key.headers)
    )
    elapsed = time.monotonic() - started
    body = assert_error(response, 422, "yaml_alias_refused", "text")
    assert "line 2" in body["detail"] and "*a0" in body["detail"], body
    assert elapsed < 1.0, elapsed
    assert growth < 50, f"peak RSS grew {growth:.1f} MB"


def test_any_alias_is_refused_even_a_harmless_one(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    text = "pruning: &p\n  k: [0.1]\nstages:\n  prune: *p\n"
    assert_error(client.post("/ui/api/spec-parse", json={"text": text}, headers=key.headers), 422, "yaml_alias_refused")
    merge = "base: &b {epochs: 1, lr: 0.1}\nstages:\n  pretrain:\n    <<: *b\n"
    assert_error(
        client.post("/ui/api/spec-parse", json={"text": merge}, headers=key.headers), 422, "yaml_alias_refused"
    )
    # an anchor alone is harmless and parses as before
    parsed = client.post("/ui/api/spec-parse", json={"text": "seed: &s 3\n"}, headers=key.headers)
    assert parsed.status_code == 200 and parsed.json()["spec"] == {"seed": 3}, parsed.text


# ----------------------------------------------------------------------------- item 3: nesting
@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("json", "[" * 5000 + "]" * 5000),
        ("yaml", "a: " + "[" * 5000 + "]" * 5000),
        ("yaml", "a:\n" + "".join("  " * (i + 1) + f"b{i}:\n" for i in range(100)) + "  " * 101 + "x\n"),
    ],
    ids=["json-5000", "yaml-flow-5000", "yaml-block-100"],
)
def test_deep_editor_text_is_422_not_500(client: TestClient, key, fmt: str, text: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/ui/api/spec-parse", json={"text": text, "format": fmt}, headers=key.headers)
    body = assert_error(response, 422, "nesting_too_deep")
    assert body["field"].startswith("text"), body


def test_deep_job_kwargs_are_422_naming_the_field(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    deep = '{"a": ' * 1000 + "1" + "}" * 1000  # json.dumps itself cannot write this (RecursionError)
    spec = json.dumps({**QUICK_SPEC, "model": {"arch": "cnn_small_mnist", "kwargs": "KWARGS"}}).replace(
        '"KWARGS"', deep
    )
    response = client.post("/v1/jobs", content=spec, headers={**key.headers, "content-type": "application/json"})
    body = assert_error(response, 422, "nesting_too_deep")
    assert body["field"].startswith("model.kwargs.a.a"), body
    # the same without a content type (FastAPI parses it as JSON too)
    raw = client.post("/v1/jobs", content=spec, headers=key.headers)
    assert_error(raw, 422, "nesting_too_deep")


def test_deep_upload_kwargs_are_422_naming_the_field(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    deep = '{"a": ' * 1000 + "1" + "}" * 1000
    response = client.post(
        "/v1/models",
        data={"arch": "cnn_small_mnist", "kwargs": deep},
        files={"file": ("w.safetensors", b"\0" * 16)},
        headers=key.headers,
    )
    body = assert_error(response, 422, "nesting_too_deep")
    assert body["field"].startswith("kwargs.a.a"), body


def test_a_recursion_error_anywhere_is_a_422_not_a_500(settings: Settings) -> None:
    app: FastAPI = build_app(settings, RecordingQueue())

    @app.get("/recurse")
    def recurse() -> None:
        def down(n: int) -> int:
            return down(n + 1) + 1

        down(0)

    with TestClient(app, raise_server_exceptions=False) as c:
        assert_error(c.get("/recurse"), 422, "nesting_too_deep")


# ----------------------------------------------------------------------------- item 6: absurd values
def test_a_5000_digit_integer_is_422_naming_the_field(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    body = '{"seed": ' + "9" * 5000 + ', "stages": {"pretrain": {"epochs": 1, "lr": 0.1}}}'
    response = client.post("/v1/jobs", content=body, headers={**key.headers, "content-type": "application/json"})
    assert_error(response, 422, "number_too_long", "seed")
    nested = '{"pruning": {"k": [0.5, ' + "1" * 5000 + "]}}"
    response = client.post("/v1/jobs", content=nested, headers={**key.headers, "content-type": "application/json"})
    assert_error(response, 422, "number_too_long", "pruning.k.1")
    # a long float is a float (Python parses it); only integers have the digit limit
    text = json.dumps({"text": "seed: " + "9" * 5000})
    parsed = client.post(
        "/ui/api/spec-parse", content=text, headers={**key.headers, "content-type": "application/json"}
    )
    assert_error(parsed, 422, "number_too_long", "text")


@pytest.mark.parametrize(
    ("override", "code", "field", "words"),
    [
        ({"objective": {"type": "pgd", "eps": 1e9}}, "invalid_eps", "objective.eps", "exceeds 1"),
        ({"objective": {"type": "trades", "norm": "l2", "eps": 29.0}}, "invalid_eps", "objective.eps", "sqrt(1x28x28)"),
        ({"evaluation": {"eps": 2.0}}, "invalid_eps", "evaluation.eps", "linf"),
        (
            {"objective": {"type": "crown_ibp", "eps": 5.0}},
            "validation_error",
            "objective.eps",
            "less than or equal to 1",
        ),
        ({"pruning": {"k": [1e-300]}}, "invalid_k", "pruning.k", "keeps no weight of layer"),
        ({"dataset": {"num_workers": 64}}, "validation_error", "dataset.num_workers", "at most 2"),
        ({"device": "cuda:999"}, "validation_error", "device", "no device 'cuda:999'"),
        ({"device": "cuda"}, "validation_error", "device", "auto, cpu"),
        ({"dataset": {"download": True}}, "validation_error", "dataset.download", "do not download"),
    ],
)
def test_absurd_values_are_refused_at_submission(  # type: ignore[no-untyped-def]
    strict_client: TestClient, key, override: dict, code: str, field: str, words: str
) -> None:
    spec = {**QUICK_SPEC, **override}
    with strict_client as c:
        body = assert_error(c.post("/v1/jobs", json=spec, headers=key.headers), 422, code, field)
    assert words in body["detail"], body


def test_the_limits_follow_the_settings_and_the_schema_says_them(settings: Settings, key) -> None:  # type: ignore[no-untyped-def]
    gpu = settings.model_copy(update={"worker_devices": "cpu,cuda:0", "max_dataloader_workers": 4})
    queue = RecordingQueue()
    with TestClient(build_app(gpu, queue), raise_server_exceptions=False) as c:
        for device in ("cuda", "cuda:0"):
            ok = c.post(
                "/v1/jobs", json={**QUICK_SPEC, "device": device, "dataset": {"num_workers": 4}}, headers=key.headers
            )
            assert ok.status_code == 201, ok.text
        assert_error(
            c.post("/v1/jobs", json={**QUICK_SPEC, "device": "cuda:1"}, headers=key.headers), 422, field="device"
        )
        schema = c.get("/openapi.json").json()["components"]["schemas"]
    assert schema["JobSpec"]["properties"]["device"]["enum"] == ["auto", "cpu", "cuda", "cuda:0"]
    assert schema["DatasetSpec"]["properties"]["num_workers"]["maximum"] == 4
    assert schema["DatasetSpec"]["properties"]["download"]["enum"] == [False]
    assert len(queue.sent) == 2


def test_the_dashboard_helpers_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/ui/api/spec-parse"] and "get" in paths["/ui/api/spec-template"]
    assert "yaml_alias_refused" in paths["/ui/api/spec-parse"]["post"]["description"]


def test_json_bodies_to_the_upload_routes_are_not_buffered_by_the_depth_check() -> None:
    from api.body_checks import is_json_body

    json_type = [(b"content-type", b"application/json")]
    assert is_json_body({"method": "POST", "path": "/v1/jobs", "headers": json_type})
    assert is_json_body({"method": "POST", "path": "/ui/api/spec-parse", "headers": []})  # FastAPI tries JSON
    assert not is_json_body({"method": "POST", "path": "/v1/jobs", "headers": [(b"content-type", b"text/plain")]})
    assert not is_json_body({"method": "GET", "path": "/v1/jobs", "headers": json_type})
    for path in ("/v1/models", "/v1/datasets/"):  # a 200 MB cap: never held in memory here
        assert not is_json_body({"method": "POST", "path": path, "headers": json_type})
