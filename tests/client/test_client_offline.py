"""The client's parts that need no service: it imports without torch, parses Server-Sent Events,
raises one error type, prints tables, and its CLI is wired into ``hydra-compress``."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from hydra_client import Client, HydraError, comparison_table, event_line
from hydra_client.client import parse_sse


def test_importing_the_client_and_its_cli_imports_no_torch_nor_service_code() -> None:
    code = (
        "import sys, hydra_client, hydra_client.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'core', 'api', 'service', 'worker', 'fastapi', 'sqlalchemy', 'celery'})\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parse_sse() -> None:
    lines = [
        "retry: 2000",
        "",
        ": keep-alive",
        "",
        "id: 3",
        "event: status",
        'data: {"id":3}',
        "",
        "event: end",
        "data: {",
        "data: }",
        "",
    ]
    assert list(parse_sse(iter(lines))) == [("status", '{"id":3}', "3"), ("end", "{\n}", None)]


def mock_client(handler) -> Client:  # type: ignore[no-untyped-def]
    return Client("http://svc", "secret-key", transport=httpx.MockTransport(handler), retries=2)


def test_errors_carry_the_service_body_and_retries_honour_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hydra_client.client.time.sleep", lambda s: None)
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        assert request.headers["Authorization"] == "Bearer secret-key"
        if request.url.path == "/v1/jobs" and request.method == "POST":
            return httpx.Response(
                422, json={"error_code": "validation_error", "detail": "pruning.k: too big", "field": "pruning.k"}
            )
        if len(calls) < 3:
            return httpx.Response(
                429,
                headers={"Retry-After": "1"},
                json={"error_code": "rate_limited", "detail": "slow down", "field": None},
            )
        return httpx.Response(200, json={"id": "j", "status": "queued"})

    client = mock_client(handler)
    with pytest.raises(HydraError) as info:
        client.submit({"pruning": {"k": [2]}})
    err = info.value
    assert (err.error_code, err.field, err.status_code) == ("validation_error", "pruning.k", 422)
    assert "pruning.k" in str(err) and pickle.loads(pickle.dumps(err)).field == "pruning.k"
    calls.clear()
    assert client.get("j")["status"] == "queued" and len(calls) == 3  # two 429s, then the answer
    assert "secret-key" not in repr(client)


def test_connection_errors_are_hydra_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(HydraError) as info:
        mock_client(handler).get("j")
    assert info.value.error_code == "connection_error" and info.value.status_code is None


def test_download_refuses_a_file_that_does_not_match_its_listing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/artifacts"):
            return httpx.Response(200, json={"data": [{"name": "a.bin", "size": 3, "sha256": "0" * 64}], "count": 1})
        return httpx.Response(200, content=b"abc")

    with pytest.raises(HydraError) as info:
        mock_client(handler).download("j", "a.bin", tmp_path)
    assert info.value.error_code == "checksum_mismatch"
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one


REPORT = {
    "format": "hydra-compress-report/3",
    "headline_robust_metric": "robust_acc",
    "procedures": {"benign_acc": "top-1", "pgd_acc": "PGD-2", "robust_acc": "worst case"},
    "flags": [{"variant": "hydra_k0.01", "check": "attack_warnings", "message": "apgd_t: 3 points with zero gradient"}],
    "comparison": [
        {
            "variant": "dense",
            "base": "dense",
            "method": "dense",
            "k": 1.0,
            "seed": None,
            "sparsity": 0.0,
            "metrics": {"benign_acc": 0.98, "pgd_acc": 0.9, "robust_acc": 0.89},
            "ci95": {"benign_acc": [0.95, 0.99]},
            "bytes": {"compressed": 666696},
        },
        {
            "variant": "hydra_k0.01",
            "base": "hydra_k0.01",
            "method": "hydra",
            "k": 0.01,
            "seed": None,
            "sparsity": 0.99,
            "metrics": {"benign_acc": 0.8, "pgd_acc": 0.63, "robust_acc": 0.6},
            "ci95": {"benign_acc": [0.75, 0.845]},
            "bytes": {"compressed": 10500},
        },
    ],
}


def test_comparison_table_and_event_lines() -> None:
    table = comparison_table(REPORT)
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["network", "sparsity", "%", "benign_acc", "%", "[95%"]
    assert lines[3].split() == ["hydra_k0.01", "99.00", "80.00", "[75.00,", "84.50]", "63.00", "60.00", "10500"]
    assert "- hydra_k0.01: attack_warnings: apgd_t: 3 points with zero gradient" in table
    assert "robust_acc: worst case" in table and "* headline robust number: robust_acc" in table
    epoch = {
        "payload": {
            "stage": "prune",
            "variant": "hydra_k0.01",
            "epoch": 2,
            "epochs": 5,
            "metrics": {"loss": 0.5, "train_acc": 0.9},
        }
    }
    assert event_line("epoch_finished", epoch) == "prune    hydra_k0.01    epoch 2/5  loss=0.5000 train_acc=0.9000"
    assert (
        event_line("status", {"payload": {"status": "failed", "attempt": 2, "error_reason": "boom"}})
        == "status: failed attempt 2: boom"
    )
    assert event_line("checkpoint_saved", {"payload": {}}) is None


def test_wait_off_a_terminal_writes_lines_not_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = iter(
        [{"id": "j", "status": "running", "fraction": 0.5, "stage": "prune", "variant": "v", "epoch": 1, "epochs": 2}]
        + [{"id": "j", "status": "succeeded", "fraction": 1.0}] * 10
    )
    stream = (
        'retry: 2000\n\nid: 1\nevent: stage_started\ndata: {"id":1,"kind":"stage_started","payload":'
        '{"stage":"prune","variant":"v","epochs":2}}\n\nevent: end\ndata: {"status":"succeeded"}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=stream.encode(), headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=next(rows))

    out = io.StringIO()
    row = mock_client(handler).wait("j", progress=True, poll_interval=0.01, file=out)
    assert row["status"] == "succeeded"
    assert out.getvalue() == "-- prune v (2 epochs)\n"  # one line per stage/epoch; no bar redraws in a file


def test_hydra_compress_has_the_core_and_the_client_commands() -> None:
    from launch.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("run", "catalogue", "inspect", "submit", "wait", "status", "list", "report", "download", "cancel"):
        assert f" {name} " in result.output, name
    result = CliRunner().invoke(app, ["status", "some-id", "--url", "http://127.0.0.1:9"], env={"HYDRA_API_KEY": ""})
    assert result.exit_code == 2 and "API key" in result.output


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        (
            "bomb.yaml",
            "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
            + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)),
            "aliases",
        ),
        ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000, "nesting deeper"),
        ("deep.json", "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("huge.yaml", "seed: " + "9" * 5000, "integer of 5000"),
        ("huge.json", '{"seed": ' + "9" * 5000 + "}", "digits"),
    ],
)
def test_a_hostile_spec_file_is_refused_before_it_is_expanded(tmp_path, name: str, text: str, words: str) -> None:  # type: ignore[no-untyped-def]
    import time

    from hydra_client import load_spec_file

    path = tmp_path / name
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(HydraError) as info:
        load_spec_file(path)
    assert time.monotonic() - started < 1.0
    assert info.value.error_code == "invalid_spec" and words in info.value.detail, info.value
