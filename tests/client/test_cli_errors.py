"""User errors at the command line: one line on stderr and exit status 2, for ``hydra-client``,
``hydra-compress``'s client commands and ``hydra-compress run`` alike: a malformed YAML or JSON file
(with its line and column), a missing file, and a misspelled key named with a suggestion (the API's
real 422, from its real error handlers, through the real client), the field named once. And the
client: ``HydraError`` for a missing spec file, and ``wait()`` quiet unless asked."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import hydra_client.cli as client_cli
from api.errors import install_error_handlers
from core.spec import JobSpec  # at module level: the route's annotation must resolve
from hydra_client import Client, HydraError, load_spec_file

SPECS = {
    "bad.yaml": ("name: x\nmodel: [a\n  b: c\n", "at line 3, column 4"),
    "bad.json": ('{"name": "x",\n "seed": }', "at line 2, column 10"),
}
TYPO = "name: t\nstages:\n  pretrain: {epohcs: 3, lr: 0.1}\n"
SUGGESTION = "unknown field `epohcs` in `stages.pretrain` — did you mean `epochs`?"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The CLI's ``Client`` talks to an app with the API's own error handlers and ``POST /v1/jobs``
    taking ``JobSpec`` as the service does (no database: nothing is stored); yields the bodies it accepted."""
    app = FastAPI()
    install_error_handlers(app)
    accepted: list[Any] = []

    @app.post("/v1/jobs")
    def submit(spec: JobSpec) -> dict[str, str]:
        accepted.append(spec)
        return {"id": "job-1", "status": "queued"}

    with TestClient(app) as test_client:

        def handler(request: httpx.Request) -> httpx.Response:  # the app, in process
            answer = test_client.request(
                request.method, request.url.path, content=request.content, headers=dict(request.headers)
            )
            return httpx.Response(answer.status_code, content=answer.content, headers=answer.headers)

        transport = httpx.MockTransport(handler)
        monkeypatch.setattr(client_cli, "Client", lambda url, key: Client(url, key, transport=transport, retries=0))
        yield accepted


def hydra_client_cmd(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = client_cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def hydra_compress_cmd(*args: str) -> tuple[int, str, str]:
    from launch.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


RUNNERS: dict[str, Callable[..., tuple[int, str, str]]] = {
    "hydra-client": hydra_client_cmd,
    "hydra-compress": hydra_compress_cmd,
}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("cli", RUNNERS)
@pytest.mark.parametrize("name", SPECS)
def test_a_malformed_spec_is_one_line_with_its_line_and_column(cli: str, name: str, tmp_path: Path, api: Any) -> None:
    text, where = SPECS[name]
    path = tmp_path / name
    path.write_text(text)
    code, out, err = RUNNERS[cli]("submit", str(path), "--key", "k")
    line = one_line(err)
    assert code == 2 and out == ""
    assert line.startswith("error [invalid_spec]") and str(path) in line and where in line, line
    assert api == []  # refused before anything was sent


@pytest.mark.parametrize("cli", RUNNERS)
def test_a_missing_spec_file_is_one_line(cli: str, tmp_path: Path, api: Any) -> None:
    code, _, err = RUNNERS[cli]("submit", str(tmp_path / "nope.yaml"), "--key", "k")
    assert code == 2
    assert one_line(err) == f"error [spec_unreadable] {tmp_path / 'nope.yaml'}: no such file"


@pytest.mark.parametrize("cli", RUNNERS)
def test_a_misspelled_key_is_named_with_a_suggestion_once(cli: str, tmp_path: Path, api: Any) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(TYPO)
    code, out, err = RUNNERS[cli]("submit", str(path), "--key", "k")
    assert code == 2 and out == ""
    assert one_line(err) == f"error [validation_error] {SUGGESTION}"
    assert "Field required" not in err


@pytest.mark.parametrize("cli", RUNNERS)
def test_a_field_error_names_the_field_once(cli: str, tmp_path: Path, api: Any) -> None:
    path = tmp_path / "k.yaml"
    path.write_text("pruning:\n  k: [2.0]\n")
    code, _, err = RUNNERS[cli]("submit", str(path), "--key", "k")
    line = one_line(err)
    assert code == 2 and line.startswith("error [validation_error] pruning.k: ") and "Value error" not in line
    assert line.count("pruning.k") == 1, line


@pytest.mark.parametrize("cli", RUNNERS)
def test_usage_errors_are_one_line_and_exit_2(cli: str) -> None:
    code, _, err = RUNNERS[cli]("status")
    assert code == 2 and "JOB_ID" in one_line(err)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("typo.yaml", TYPO, f"error [invalid_spec] {SUGGESTION}"),
        ("bad.yaml", SPECS["bad.yaml"][0], "(line 3, column 4)"),
        ("bad.json", SPECS["bad.json"][0], "line 2 column 10"),
        (
            "k.yaml",
            "pruning:\n  k: [2.0]\n",
            "error [invalid_spec] pruning.k: k (fraction of weights kept) must be in (0, 1], got 2.0",
        ),
        ("missing.yaml", None, "no such file"),
    ],
)
def test_hydra_compress_run_refuses_bad_input_in_one_line(
    tmp_path: Path, name: str, text: str | None, expected: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    code, out, err = hydra_compress_cmd("run", str(path), "--out", str(tmp_path / "run"))
    line = one_line(err)
    assert code == 2 and expected in line, line
    assert "Field required" not in line and not (tmp_path / "run").exists()


def test_the_client_raises_hydra_error_for_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(HydraError) as info:
        load_spec_file(tmp_path / "nope.yaml")
    assert info.value.error_code == "spec_unreadable" and "no such file" in str(info.value)
    with pytest.raises(HydraError) as info:
        Client("http://127.0.0.1:9", "k").submit(tmp_path)  # a folder
    assert info.value.error_code == "spec_unreadable"


def test_the_client_names_a_field_once() -> None:
    err = HydraError("validation_error", "pruning.k: k must be in (0, 1]", "pruning.k", 422)
    assert str(err) == "[validation_error] pruning.k: k must be in (0, 1] (HTTP 422)"
    assert HydraError("not_found", "no artifact x", "name").message == "name: no artifact x"


def _job_service(statuses: list[str], events: list[dict[str, Any]]) -> tuple[Client, list[str]]:
    rows = iter(statuses)
    calls: list[str] = []
    last = {"status": statuses[-1]}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/events"):
            body = "".join(f"id: {e['id']}\nevent: {e['kind']}\ndata: {json.dumps(e)}\n\n" for e in events)
            return httpx.Response(
                200, text=body + "event: end\ndata: {}\n\n", headers={"content-type": "text/event-stream"}
            )
        last["status"] = next(rows, last["status"])
        return httpx.Response(200, json={"id": "j", "status": last["status"], "fraction": 1.0})

    return Client("http://svc", "k", transport=httpx.MockTransport(handler), retries=0), calls


EVENTS = [{"id": 1, "kind": "stage_started", "payload": {"stage": "prune", "variant": "v", "epochs": 2}}]


def test_wait_is_quiet_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    client, calls = _job_service(["running", "running", "succeeded"], EVENTS)
    assert client.wait("j", poll_interval=0.01)["status"] == "succeeded"
    assert capsys.readouterr() == ("", "")
    assert not any(c.endswith("/events") for c in calls)  # no event stream opened at all


def test_wait_does_not_replay_a_finished_job_unless_asked() -> None:
    client, calls = _job_service(["succeeded"], EVENTS)
    out = io.StringIO()
    assert client.wait("j", progress=True, file=out)["status"] == "succeeded"
    assert out.getvalue() == "" and not any(c.endswith("/events") for c in calls)
    client, _ = _job_service(["succeeded"], EVENTS)
    client.wait("j", progress=True, history=True, file=out, poll_interval=0.01)
    assert out.getvalue() == "-- prune v (2 epochs)\n"


def test_upload_commands_refuse_a_missing_file_in_one_line(tmp_path, capsys):
    """upload-model / upload-dataset: a missing file is a user error (one line, exit 2), like a spec."""
    from hydra_client.cli import main

    for argv in (
        ["upload-model", str(tmp_path / "absent.onnx"), "--key", "k", "--url", "http://127.0.0.1:9"],
        ["upload-dataset", str(tmp_path / "absent.zip"), "--key", "k", "--url", "http://127.0.0.1:9"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "file_unreadable" in err[0] and "no such file" in err[0], err
    assert main(["upload-model", str(tmp_path / "x.pt"), "--arch", "vgg16_bn", "--kwargs", "[1]", "--key", "k"]) == 2
    assert "--kwargs must be a JSON object" in capsys.readouterr().err
