"""The Python client and the ``hydra-compress`` client commands against the real embedded service
(``hydra-service serve``: API, a solo Celery worker, SQLite), with JSON logs on: a tiny job submitted
and followed from the CLI, everything else read back with ``Client``, errors, cancel, uploads, and
finally the service's own log lines (JSON, with job/attempt/tenant; no key ever)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from hydra_client import Client, HydraError
from tests.client.embedded_service import LONG_SPEC, TINY_SPEC, EmbeddedService

pytestmark = pytest.mark.slow
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def hydra_compress(*args: str, env: dict[str, str] | None = None) -> Any:
    from launch.cli import app  # the console script: core's commands and the client's

    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def cli_job(service: EmbeddedService, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """The tiny job, submitted and followed to its end by ``hydra-compress submit --wait`` (URL and key
    from the environment)."""
    spec = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    result = hydra_compress(
        "submit",
        str(spec),
        "--wait",
        "--idempotency-key",
        "cli-1",
        env={"HYDRA_URL": service.url, "HYDRA_API_KEY": service.key},
    )
    job_id = result.stdout.splitlines()[0] if result.stdout else ""
    return result, job_id


@pytest.fixture(scope="module")
def client(service: EmbeddedService) -> Client:
    with Client(service.url, service.key) as c:
        yield c


def test_cli_submit_wait_prints_the_id_progress_and_the_table(
    cli_job: tuple[Any, str], service: EmbeddedService
) -> None:
    result, job_id = cli_job
    assert result.exit_code == 0, (result.output, service.logs()[-4000:])
    assert UUID.match(job_id), result.stdout
    out = result.output
    for expected in (
        "-- pretrain dense (1 epochs)",
        "pretrain dense",
        "epoch 1/1",
        "evaluate hydra_k0.1",
        "status: succeeded",
        f"job {job_id} succeeded",
    ):
        assert expected in out, out
    table = result.stdout
    assert re.search(r"^network\s+sparsity %\s+benign_acc %", table, re.M), table
    for variant in ("dense", "hydra_k0.1", "lwm_k0.1"):
        assert re.search(rf"^{re.escape(variant)}\s+\d+\.\d\d", table, re.M), table
    assert "pgd_acc: PGD-2" in table
    assert "\r" not in out  # not a terminal: lines, no bar redraws


def test_client_reads_the_job_report_events_and_downloads(
    client: Client, cli_job: tuple[Any, str], tmp_path: Path
) -> None:
    _, job_id = cli_job
    job = client.get(job_id)
    assert job["status"] == "succeeded" and job["fraction"] == 1.0
    replay = client.submit(TINY_SPEC, idempotency_key="cli-1")  # the CLI's submission, replayed: same job
    assert replay["id"] == job_id
    assert job_id in {j["id"] for j in client.list(status="succeeded")}
    report = client.report(job_id)
    assert [r["variant"] for r in report["comparison"]] == ["dense", "hydra_k0.1", "lwm_k0.1"]
    listing = {a["name"]: a for a in client.artifacts(job_id)}
    name = "hydra_k0.1.compressed.safetensors"
    path = client.download(job_id, name, tmp_path)
    assert path == tmp_path / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == listing[name]["sha256"]
    renamed = client.download(job_id, "report.json", tmp_path / "r.json")
    assert json.loads(renamed.read_text())["comparison"] == report["comparison"]
    history = list(client.events(job_id, follow=False))
    kinds = {e.kind for e in history}
    assert {"status", "stage_started", "epoch_finished", "evaluation_finished"} <= kinds
    live = list(client.events(job_id))  # the SSE stream of a finished job: everything, then it ends
    assert [e.id for e in live] == [e.id for e in history]
    later = list(client.events(job_id, after=history[-3].id))
    assert [e.id for e in later] == [e.id for e in history[-2:]]
    out = io.StringIO()
    assert client.wait(job_id, progress=True, file=out)["status"] == "succeeded"


def test_errors_name_their_code_and_field(
    client: Client, service: EmbeddedService, other_key: str, cli_job: tuple[Any, str]
) -> None:
    _, job_id = cli_job
    with pytest.raises(HydraError) as info:
        client.submit({**TINY_SPEC, "pruning": {"methods": ["hydra"], "k": [2.0]}})
    assert info.value.error_code == "validation_error" and info.value.field == "pruning.k"
    assert info.value.status_code == 422
    with pytest.raises(HydraError) as info:
        Client(service.url, "not-a-key").list()
    assert info.value.error_code == "unauthorized" and info.value.status_code == 401
    other = Client(service.url, other_key)
    for call in (
        lambda: other.get(job_id),
        lambda: other.report(job_id),
        lambda: other.cancel(job_id),
        lambda: other.download(job_id, "report.json", service.root),
    ):
        with pytest.raises(HydraError) as info:
            call()
        assert info.value.error_code == "not_found"  # another tenant's job does not exist for this key
    assert other.list() == []
    with pytest.raises(HydraError) as info:
        client.download(job_id, "nope.bin")
    assert info.value.error_code == "not_found" and info.value.field == "name"


def test_cancel_and_the_exit_status_of_a_canceled_job(client: Client, service: EmbeddedService) -> None:
    job = client.submit(LONG_SPEC)
    with pytest.raises(HydraError) as info:
        client.report(job["id"])
    assert info.value.error_code == "job_not_succeeded"
    env = {"HYDRA_URL": service.url, "HYDRA_API_KEY": service.key}
    result = hydra_compress("cancel", job["id"], "--wait", env=env)
    assert result.exit_code == 0 and f"{job['id']}  canceled" in result.stdout, result.output
    result = hydra_compress("wait", job["id"], env=env)
    assert result.exit_code == 3 and "canceled" in result.output
    result = hydra_compress("status", job["id"], env=env)
    assert result.exit_code == 0 and " canceled" in result.stdout
    # deleted by its 8-character prefix, once; the second delete is refused as not found
    result = hydra_compress("delete", job["id"][:8], env=env)
    assert result.exit_code == 0 and f"{job['id'][:8]}  deleted" in result.stdout, result.output
    result = hydra_compress("delete", job["id"], env=env)
    assert result.exit_code == 2 and "not_found" in result.output
    with pytest.raises(HydraError) as info:
        client.get(job["id"])
    assert info.value.error_code == "not_found"


def test_uploads_are_referenced_by_a_job(client: Client, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from core.models.zoo import create_model

    rng = np.random.default_rng(0)
    data = tmp_path / "digits.npz"
    np.savez(data, images=rng.integers(0, 255, (64, 1, 28, 28), dtype=np.uint8), labels=np.arange(64) % 10)
    dataset = client.upload_dataset(data, name="digits")
    assert dataset["ref"].startswith("dataset:") and dataset["n_samples"] == 64
    torch.manual_seed(0)
    weights = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("cnn_small_mnist").state_dict().items()}, str(weights))
    model = client.upload_model(weights, "cnn_small_mnist", name="start")
    assert model["ref"].startswith("model:") and model["arch"] == "cnn_small_mnist"
    assert {m["id"] for m in client.models()} == {model["id"]}
    assert {d["id"] for d in client.datasets()} == {dataset["id"]}
    spec = {
        **LONG_SPEC,
        "model": {"arch": "cnn_small_mnist", "checkpoint": model["ref"]},
        "dataset": {"name": "npz", "path": dataset["ref"], "batch_size": 32},
    }
    job = client.submit(spec)
    assert job["spec"]["model"]["checkpoint"] == model["ref"]
    with pytest.raises(HydraError) as info:  # in use by a job not yet finished
        client.delete_model(model["id"])
    assert info.value.error_code == "conflict" and job["id"] in info.value.detail
    client.cancel(job["id"])
    assert client.wait(job["id"], progress=False, timeout=120)["status"] == "canceled"
    client.delete_model(model["id"])
    client.delete_dataset(dataset["id"])
    assert client.models() == [] and client.datasets() == []
    with pytest.raises(HydraError) as info:
        client.upload_model(weights, "no_such_arch")
    assert info.value.status_code == 422 and info.value.field


def test_cli_status_report_list_download(service: EmbeddedService, cli_job: tuple[Any, str], tmp_path: Path) -> None:
    _, job_id = cli_job
    opts = ["--url", service.url, "--key", service.key]
    result = hydra_compress("status", job_id, *opts)
    assert result.exit_code == 0 and f"{job_id}  succeeded" in result.stdout and "100%" in result.stdout
    assert "evaluate" not in result.stdout  # the finished state, not the last stage it ran
    for variant in ("dense", "hydra_k0.1", "lwm_k0.1"):  # every network's headline
        assert re.search(rf"^  {re.escape(variant)} +sparsity .*benign .*robust_acc", result.stdout, re.M), (
            result.stdout
        )
    assert json.loads(hydra_compress("status", job_id, "--json", *opts).stdout)["id"] == job_id
    assert "hydra_k0.1" in hydra_compress("report", job_id, *opts).stdout
    assert job_id in hydra_compress("list", *opts).stdout
    result = hydra_compress("download", job_id, "--out", str(tmp_path), *opts)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dense.compressed.safetensors",
        "hydra_k0.1.compressed.safetensors",
        "lwm_k0.1.compressed.safetensors",
    ]
    assert result.stdout.count(" ok") == 3
    result = hydra_compress("download", job_id, "nope.bin", *opts)
    assert result.exit_code == 2 and "[not_found] name:" in result.output
    result = hydra_compress("submit", str(tmp_path / "missing.yaml"), *opts)
    assert result.exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY_SPEC, "stages": {"prune": {"epochs": 1, "lr": -1}}}))
    result = hydra_compress("submit", str(bad), "--wait", *opts)
    assert result.exit_code == 2 and "stages.prune.lr" in result.output and result.stdout == ""


def test_service_logs_are_json_with_job_attempt_tenant_and_no_key(
    service: EmbeddedService, other_key: str, cli_job: tuple[Any, str]
) -> None:
    import httpx

    _, job_id = cli_job
    # keys where a careless service would log them: a query string, a wrong key, a good key of another tenant
    httpx.get(f"{service.url}/healthz", params={"api_key": other_key})
    httpx.get(f"{service.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {other_key}x"})
    httpx.get(f"{service.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {other_key}"})
    api_lines = service.serve_log.read_text().splitlines()
    worker_lines = service.worker_log.read_text().splitlines()
    records = []
    for line in api_lines + worker_lines:
        if line.startswith("{"):
            records.append(json.loads(line))
        # the only plain lines: Celery's banner in the worker log (the server's own lines are all JSON:
        # tests/ops/test_serve_json_logs.py)
    for record in records:
        assert {"ts", "level", "logger", "process", "job_id", "attempt", "tenant", "message"} <= set(record)
    about_job = [r for r in records if job_id in r["message"]]
    assert about_job and all(r["job_id"] == job_id for r in about_job)
    claimed = [
        r for r in records if r["logger"] == "worker.runner" and "claimed" in r["message"] and r["job_id"] == job_id
    ]
    assert (
        claimed and claimed[0]["attempt"] == 1 and claimed[0]["tenant"] == "local" and claimed[0]["process"] == "worker"
    )
    access = [r for r in records if r["logger"] == "uvicorn.access" and f"/v1/jobs/{job_id} " in r["message"]]
    assert any(r["tenant"] == "someone-else" for r in access) and any(r["tenant"] is None for r in access)
    # with JSON logs on, the launcher names the key's file instead of printing the key
    everything = "\n".join(api_lines + worker_lines)
    assert service.key not in everything and other_key not in everything
    assert "api_key=[redacted]" in everything


def test_an_image_archive_is_uploaded_by_the_client(client: Client, tmp_path: Path) -> None:
    from tests.archive_helpers import class_files, zip_bytes

    archive = tmp_path / "pets.zip"
    archive.write_bytes(zip_bytes(class_files()))
    dataset = client.upload_dataset(archive, name="pets", image_size=12, channels=1)
    assert (dataset["num_classes"], dataset["n_samples"], dataset["input_shape"]) == (2, 6, [1, 12, 12])
    with pytest.raises(HydraError) as refused:
        client.upload_dataset(archive)  # mixed sizes and no image_size: the member is named
    assert refused.value.field == "file" and "cat/1.png" in refused.value.detail
