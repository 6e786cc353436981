"""Schemathesis against the real app, on Postgres and on the embedded SQLite default.

Every operation of the OpenAPI document (which documents every JSON route the service serves, the
dashboard's editor helpers under ``/ui/api`` included; the test checks that no such route is left
out), every phase (examples, coverage, fuzzing and the stateful
phase, which chains the operations through the links schemathesis infers: a job it submitted is read,
streamed, cancelled...), with a fixed seed and a bounded number of examples so the run is repeatable
and fits the suite's time budget. The app runs in process through schemathesis's ASGI transport with
its lifespan (the Postgres async reader included) and a recording broker.

What must hold, with schemathesis's checks plus two of our own:
- no 5xx and no status code the document does not list;
- a request the document calls valid is accepted, and an invalid one refused with a 4xx. The one
  exception is what no schema can say (a reference to an upload that does not exist, file contents,
  an architecture that does not fit its dataset): a 422 with one of the error codes the operation's
  description lists (``api.openapi.SEMANTIC_422``), and nothing else;
- every error body is exactly ``{"error_code", "detail", "field"}``.

A failure prints each distinct problem once with a curl line to reproduce it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.svc_helpers import RecordingQueue, build_app, migrate

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.engine import Status, events, from_schema  # noqa: E402
from schemathesis.specs.openapi import checks as st_checks  # noqa: E402

from api.openapi import SEMANTIC_422  # noqa: E402
from service.db import keys, workers  # noqa: E402
from service.db.session import session_scope  # noqa: E402
from service.settings import Settings  # noqa: E402

# Fixed for the suite; HYDRA_FUZZ_SEED / HYDRA_FUZZ_EXAMPLES fuzz harder by hand (e.g. 500 examples).
SEED = int(os.environ.get("HYDRA_FUZZ_SEED", "20261202"))
MAX_EXAMPLES = int(os.environ.get("HYDRA_FUZZ_EXAMPLES", "10"))  # per operation; coverage adds its edge cases
ERROR_KEYS = {"error_code", "detail", "field"}
# schemathesis's default statuses for a refused schema-violating request, plus 413 (api/limits.py)
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
# Submissions and uploads build the network (on the meta device, on the CPU where a builder cannot run
# there); a torchvision one can take seconds on two shared cores. The fuzz keeps torchvision in its
# schema but sends at most this many of them.
TORCHVISION_SUBMISSIONS = 3


def _event_stream_compat() -> None:
    """schemathesis reads event streams with ``raw.read1``, which urllib3 1.26 lacks (``torchattacks``
    pins ``requests~=2.25``, hence urllib3 1.26). The ASGI transport has buffered the whole stream by
    then, so plain ``read`` returns the same bytes."""
    import schemathesis.transport.requests as transport

    if getattr(transport, "_hydra_compat", False):
        return

    def iter_event_stream(response: Any) -> Iterator[bytes]:
        raw = response.raw
        read = getattr(raw, "read1", None) or raw.read
        while chunk := read(64 * 1024, decode_content=True):
            yield chunk

    transport._iter_event_stream = iter_event_stream
    transport._hydra_compat = True


def _error_code(response: Any) -> str | None:
    try:
        body = response.json()
    except Exception:  # noqa: BLE001
        return None
    return body.get("error_code") if isinstance(body, dict) else None


@schemathesis.check
def service_positive_data_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's ``positive_data_acceptance``, except for the documented semantic 422s."""
    if response.status_code == 422:
        allowed = SEMANTIC_422.get((case.method.lower(), case.operation.path), ())
        if _error_code(response) in allowed:
            return True
    return st_checks.positive_data_acceptance(ctx, response, case)


@schemathesis.check
def standard_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx answers ``{"error_code", "detail", "field"}`` and nothing else."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    try:
        body = response.json()
    except Exception as exc:
        raise AssertionError(f"error {response.status_code} is not JSON: {response.content[:200]!r}") from exc
    if not isinstance(body, dict) or set(body) != ERROR_KEYS:
        raise AssertionError(f"error {response.status_code} has body {body!r}, not {sorted(ERROR_KEYS)}")
    if not isinstance(body["error_code"], str) or not isinstance(body["detail"], str):
        raise AssertionError(f"error {response.status_code}: error_code and detail must be strings: {body!r}")
    if body["field"] is not None and not isinstance(body["field"], str):
        raise AssertionError(f"error {response.status_code}: field must be a string or null: {body!r}")
    return None


def _budget_torchvision() -> Any:
    count = {"n": 0}

    @schemathesis.hook("map_body")
    def limit_torchvision(context: Any, body: Any) -> Any:
        if context.operation is None or not isinstance(body, dict):
            return body
        if context.operation.path == "/v1/jobs" and isinstance(body.get("model"), dict):
            holder, key = body["model"], "model"
        elif context.operation.path == "/v1/models":
            holder, key = body, None
        else:
            return body
        if str(holder.get("arch", "")).startswith("torchvision:"):
            count["n"] += 1
            if count["n"] > TORCHVISION_SUBMISSIONS:
                replaced = {**holder, "arch": "cnn_small_mnist"}
                return {**body, key: replaced} if key else replaced
        return body

    return limit_torchvision


def run_schemathesis(app: Any, token: str) -> dict[str, Any]:
    """Run every phase against ``app``; return the failures, the operations exercised and counts."""
    _event_stream_compat()
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {token}"},
            "generation": {"max-examples": MAX_EXAMPLES},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": max(12, MAX_EXAMPLES)},
            },
            "request-timeout": 5,
            "max-stream-events": 2,
            "checks": {
                "positive_data_acceptance": {"enabled": False},
                # a body over the size cap is refused before it is read (413): a rejection like any 4xx
                "negative_data_rejection": {"expected-statuses": NEGATIVE_STATUSES},
            },
            # the live stream of a queued job never ends by itself: read one event, or for one second
            "operations": [{"include-path": "/v1/jobs/{job_id}/events", "request-timeout": 1, "max-stream-events": 1}],
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    failures: dict[tuple[str, str, str], str] = {}
    errors: list[str] = []
    exercised: set[str] = set()
    statuses: Counter[int] = Counter()
    phases: dict[str, float] = {}
    slowest: Counter[str] = Counter()
    cases = 0
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            cases += len(recorder.cases)
            slowest[f"{event.phase.value}: {recorder.label}"] += event.elapsed_time
            for node in recorder.cases.values():
                exercised.add(f"{node.value.method.upper()} {node.value.operation.path}")
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    statuses[interaction.response.status_code] += 1
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status != Status.FAILURE or check.failure_info is None:
                        continue
                    case = recorder.cases[case_id].value
                    key = (check.name, f"{case.method.upper()} {case.operation.path}", check.failure_info.failure.title)
                    if key not in failures:
                        failures[key] = f"{check.failure_info.failure.message}\n    {check.failure_info.code_sample}"
        elif isinstance(event, events.PhaseFinished):
            phases[event.phase.name.value] = round(time.monotonic() - started, 1)
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.info.format()}"[:3000])
        elif isinstance(event, events.FatalError):
            errors.append(f"fatal: {event.exception!r}")
    declared = {
        f"{method.upper()} {path}"
        for path, ops in schema.raw_schema["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    }
    return {
        "failures": failures,
        "errors": errors,
        "exercised": exercised,
        "declared": declared,
        "statuses": statuses,
        "cases": cases,
        "seconds": time.monotonic() - started,
        "phases": phases,
        "slowest": [(k, round(v, 1)) for k, v in slowest.most_common(4)],
    }


def _report(result: dict[str, Any], backend: str) -> str:
    lines = [
        f"schemathesis on {backend}: {result['cases']} cases in {result['seconds']:.0f}s, seed {SEED}, "
        f"statuses {dict(sorted(result['statuses'].items()))}, phases done at (s) {result['phases']}, "
        f"slowest {result['slowest']}"
    ]
    for (check, operation, title), detail in sorted(result["failures"].items()):
        lines.append(f"- [{check}] {operation}: {title}\n    {detail}")
    lines += [f"- error: {e}" for e in result["errors"]]
    return "\n".join(lines)


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


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_schemathesis_finds_nothing(backend: str, request: pytest.FixtureRequest) -> None:
    settings: Settings = request.getfixturevalue("settings" if backend == "postgres" else "sqlite_settings")
    app = build_app(settings, RecordingQueue())
    with session_scope(settings) as session:
        _, token = keys.create_api_key(session, f"fuzz-{uuid.uuid4().hex[:8]}", "fuzz")
        # a live worker, so /readyz is ready and any 5xx it answers is a real fault (its 503 without a
        # worker heartbeat is tested in tests/service/test_api_auth.py)
        workers.beat(session, "fuzz-worker@fuzz-host", "fuzz-host", 1)
    hook = _budget_torchvision()
    try:
        result = run_schemathesis(app, token)
    finally:
        schemathesis.hooks.unregister(hook)
        from schemathesis.python import asgi

        asgi.shutdown_lifespans()
    report = _report(result, backend)
    print(report)
    assert not result["failures"] and not result["errors"], report
    assert result["declared"] <= result["exercised"], (
        f"not exercised: {sorted(result['declared'] - result['exercised'])}"
    )
    assert not [code for code in result["statuses"] if code >= 500], report


def _segments_match(called: list[str], documented: list[str]) -> bool:
    return len(called) == len(documented) and all(
        a == b or a == "*" or b.startswith("{") for a, b in zip(called, documented)
    )


def test_every_json_route_the_dashboard_calls_is_documented_and_so_fuzzed(sqlite_settings: Settings) -> None:
    """The fuzz covers the document; the dashboard's script is the one client of the ``/ui/api`` helpers,
    so every path it calls (``api("/ui/api/spec-parse", ...)``) must be in the document too."""
    import re

    script = (Path(__file__).resolve().parents[2] / "api" / "static" / "hydra.js").read_text()
    called = {
        re.sub(r"\$\{[^}]*\}", "*", path).split("?")[0].split("${")[0]
        for path in re.findall(r"""\bapi\([`"]([^`"]+)[`"]""", script)
    }
    assert {"/ui/api/spec-parse", "/ui/api/spec-template", "/v1/jobs"} <= called, called
    documented = [p.split("/") for p in build_app(sqlite_settings, RecordingQueue()).openapi()["paths"]]
    missing = [p for p in called if not any(_segments_match(p.split("/"), d) for d in documented)]
    assert not missing, f"the dashboard calls routes the OpenAPI document (and so the fuzz) leaves out: {missing}"
