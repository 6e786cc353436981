"""The worker for real: Celery worker processes on the Redis broker, Postgres, a local object store,
and the API in process. Each test submits a tiny job over HTTP and checks what a user would see."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.worker.worker_helpers import WITH_AUTOATTACK, events, job, submit, tiny_spec, wait_for, wait_status

pytestmark = pytest.mark.slow

VARIANT = "hydra_k0.1"
ARTIFACT = f"{VARIANT}.compressed.safetensors"
SLOW_BATCH_S = 0.4  # per-batch delay of the worker, so a test can act in the middle of a job


def _epochs(api: Any, job_id: str, stage: str | None = None) -> list[tuple[str, str, int]]:
    rows = [
        (e["payload"]["stage"], e["payload"]["variant"], e["payload"]["epoch"])
        for e in events(api, job_id, "epoch_finished")
    ]
    return [r for r in rows if stage is None or r[0] == stage]


def _statuses(api: Any, job_id: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in events(api, job_id, "status")]


def _sweeper(settings: Any, celery_client: Any) -> Any:
    from worker.reaper import sweep

    return lambda: sweep(settings, celery_client, unsent_after_s=1.0)


def test_a_job_runs_end_to_end_and_its_compressed_network_has_the_reported_accuracy(
    api: Any, start_worker: Any, tmp_path: Path
) -> None:
    import torch

    from core.data.datasets import build_datasets
    from core.io.export import load_compressed_model
    from core.spec import load_spec

    start_worker()
    spec = tiny_spec(evaluation=WITH_AUTOATTACK)
    job_id = submit(api, spec)
    row = wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 240)
    assert row["status"] == "succeeded", row
    assert row["attempt"] == 1 and row["fraction"] == 1.0 and row["error_reason"] is None
    assert [s["status"] for s in _statuses(api, job_id)] == ["queued", "running", "succeeded"]
    assert _epochs(api, job_id) == [("pretrain", "dense", 1), ("prune", VARIANT, 1), ("finetune", VARIANT, 1)]

    report = api.get(f"/v1/jobs/{job_id}/report").json()
    listing = {a["name"]: a for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
    assert {"report.json", "report.md", "comparison.png", "spec.json", ARTIFACT} <= set(listing)
    body = api.get(f"/v1/jobs/{job_id}/artifacts/{ARTIFACT}").content
    assert hashlib.sha256(body).hexdigest() == listing[ARTIFACT]["sha256"] and len(body) == listing[ARTIFACT]["size"]
    path = tmp_path / ARTIFACT
    path.write_bytes(body)

    parsed = load_spec(spec)
    _, test_ds, _ = build_datasets(parsed.dataset, parsed.seed)
    x = torch.stack([test_ds[i][0] for i in range(len(test_ds))])
    y = torch.as_tensor([int(test_ds[i][1]) for i in range(len(test_ds))])
    model = load_compressed_model(path).eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy == pytest.approx(report["variants"][VARIANT]["metrics"]["benign_acc"], abs=1e-6)
    # the worker's report carries every AutoAttack component beside our PGD, and the worst case
    metrics = report["variants"][VARIANT]["metrics"]
    attacks = ["pgd_acc", "apgd_ce_acc", "apgd_t_acc", "fab_t_acc", "square_acc", "robust_acc"]
    assert set(attacks) <= set(metrics), sorted(metrics)


def test_canceling_a_running_job_stops_it_within_a_batch_and_a_second(api: Any, start_worker: Any) -> None:
    start_worker(batch_delay_s=SLOW_BATCH_S)
    job_id = submit(api, tiny_spec(stages={"pretrain": {"epochs": 20, "lr": 0.05}}))
    wait_for(lambda: job(api, job_id)["fraction"] > 0, 120, "training to start")
    asked = time.monotonic()
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    row = wait_status(api, job_id, {"canceled", "succeeded", "failed"}, 30)
    assert row["status"] == "canceled"
    assert time.monotonic() - asked < SLOW_BATCH_S + 1.0 + 2.0  # a batch, the 1 s poll, and slack
    assert row["fraction"] < 0.5


def test_a_worker_killed_mid_job_is_replaced_and_the_job_resumes_from_its_checkpoint(
    api: Any, start_worker: Any, settings: Any, celery_client: Any
) -> None:
    first = start_worker(batch_delay_s=SLOW_BATCH_S)
    job_id = submit(api, tiny_spec(stages={"pretrain": {"epochs": 4, "lr": 0.05}}))
    wait_for(lambda: len(_epochs(api, job_id, "pretrain")) >= 2, 120, "two pretraining epochs")
    first.kill()  # SIGKILL, main process and pool child: no chance to clean up
    before = _epochs(api, job_id)

    start_worker()
    row = wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 180, reaper=_sweeper(settings, celery_client))
    assert row["status"] == "succeeded", row
    assert row["attempt"] == 2
    statuses = _statuses(api, job_id)
    assert [s["status"] for s in statuses] == ["queued", "running", "queued", "running", "succeeded"]
    assert statuses[2]["reason"] == "lease expired"
    resumed = [e["payload"] for e in events(api, job_id, "attempt_started")]
    assert resumed[-1] == {"attempt": 2, "resumed_from_checkpoint": True}
    pretrain = [epoch for _, _, epoch in _epochs(api, job_id, "pretrain")]
    assert pretrain == sorted(set(pretrain)) and pretrain[-1] == 4  # no epoch trained twice: not started over
    assert _epochs(api, job_id)[: len(before)] == before


def test_a_pool_child_killed_by_sigkill_gives_its_message_back_and_the_lease_keeps_it_single(
    api: Any, start_worker: Any, settings: Any, celery_client: Any
) -> None:
    """What the OOM killer does. acks_late + reject_on_worker_lost bring the message straight back;
    the claim is refused while the dead attempt's lease lasts; the reaper hands the job on."""
    worker = start_worker(batch_delay_s=SLOW_BATCH_S)
    job_id = submit(api, tiny_spec(stages={"pretrain": {"epochs": 3, "lr": 0.05}}))
    wait_for(lambda: len(_epochs(api, job_id, "pretrain")) >= 1, 120, "a pretraining epoch")
    children = worker.pool_children()
    assert len(children) == 1
    import os

    os.kill(children[0], signal.SIGKILL)

    def deliveries() -> int:
        return sum(1 for line in worker.log().splitlines() if "Task hydra.run_job[" in line and "received" in line)

    wait_for(lambda: deliveries() >= 2, 30, "the message to be delivered again")
    log_text = worker.log()
    assert "WorkerLostError" in log_text or "signal 9" in log_text
    row = wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 180, reaper=_sweeper(settings, celery_client))
    assert row["status"] == "succeeded" and row["attempt"] == 2
    running = [s for s in _statuses(api, job_id) if s["status"] == "running"]
    assert [s["attempt"] for s in running] == [1, 2]  # never two attempts at once, none skipped


def test_a_duplicate_delivery_of_a_running_job_does_not_train_it_twice(
    api: Any, start_worker: Any, settings: Any, celery_client: Any
) -> None:
    from worker.runner import run_attempt

    busy = start_worker(batch_delay_s=SLOW_BATCH_S)
    job_id = submit(api, tiny_spec(stages={"pretrain": {"epochs": 3, "lr": 0.05}}))
    wait_for(lambda: job(api, job_id)["fraction"] > 0, 120, "training to start")
    idle = start_worker()
    celery_client.send_task("hydra.run_job", args=[job_id], queue=settings.queue_name)
    wait_for(lambda: f"job {job_id} not claimed" in idle.log(), 60, "the idle worker to refuse the duplicate")
    assert run_attempt(settings, job_id) == "not_claimed"  # and the same in this process
    row = wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 180)
    assert row["status"] == "succeeded" and row["attempt"] == 1
    assert [s["status"] for s in _statuses(api, job_id)] == ["queued", "running", "succeeded"]
    pretrain = [epoch for _, _, epoch in _epochs(api, job_id, "pretrain")]
    assert pretrain == [1, 2, 3]
    assert f"job {job_id}: attempt 1 claimed" in busy.log()


def test_a_job_that_fails_records_a_readable_reason(api: Any, start_worker: Any) -> None:
    start_worker()
    job_id = submit(api, tiny_spec(stages={"pretrain": {"epochs": 2, "lr": 1e12, "momentum": 0.9}}))
    row = wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 120)
    assert row["status"] == "failed"
    assert "stages.pretrain.lr" in row["error_reason"] and "lower the lr" in row["error_reason"]
    error = events(api, job_id, "error")[-1]["payload"]
    assert error["error_code"] == "diverged"
    assert _statuses(api, job_id)[-1] == {"status": "failed", "attempt": 1, "error_reason": row["error_reason"]}


@pytest.mark.parametrize("pool", ["prefork", "solo"])  # production, and the embedded default
def test_sigterm_hands_the_job_back_and_another_worker_resumes_it(api: Any, start_worker: Any, pool: str) -> None:
    first = start_worker(batch_delay_s=SLOW_BATCH_S, pool=pool)
    job_id = submit(api, tiny_spec(stages={"pretrain": {"epochs": 4, "lr": 0.05}}))
    wait_for(lambda: len(_epochs(api, job_id, "pretrain")) >= 1, 120, "a pretraining epoch")
    asked = time.monotonic()
    assert first.terminate(timeout=60) == 0
    assert time.monotonic() - asked < 15  # stops at the next batch, not at the end of the job
    row = job(api, job_id)
    assert row["status"] == "queued" and row["error_reason"] is None
    handed_back = _statuses(api, job_id)[-1]
    assert handed_back["status"] == "queued" and "shutting down" in handed_back["reason"]
    done_before = _epochs(api, job_id, "pretrain")

    start_worker()  # the job was sent again when it was handed back: no reaper needed
    row = wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 180)
    assert row["status"] == "succeeded" and row["attempt"] == 2
    pretrain = _epochs(api, job_id, "pretrain")
    assert pretrain[: len(done_before)] == done_before and [e for _, _, e in pretrain] == [1, 2, 3, 4]


CERTIFIED = {
    # objective → (its spec, the headline metric the report must name, the certificate named beside it)
    "smoothing": ({"type": "smoothing", "sigma": 0.25}, "certified_acc@0.25", "Cohen"),
    "mixtrain": ({"type": "mixtrain", "eps": 0.05, "ramp_epochs": 1}, "verified_acc_crown_ibp", "CROWN-IBP"),
    "crown_ibp": ({"type": "crown_ibp", "eps": 0.05, "ramp_epochs": 1}, "verified_acc_crown_ibp", "CROWN-IBP"),
}


def test_each_verifiable_objective_runs_prune_and_finetune_through_the_worker(api: Any, start_worker: Any) -> None:
    start_worker()
    evaluation = {"smoothing": {"n0": 8, "n": 64}, "certify_max_samples": 16, "val_max_samples": 16}
    ids = {}
    for name, (objective, _, _) in CERTIFIED.items():
        spec = tiny_spec(name=f"worker-{name}", evaluation=evaluation)
        spec["objective"] = objective  # replaced whole: the tiny spec's PGD fields don't belong to it
        ids[name] = submit(api, spec)
    for name, job_id in ids.items():
        objective, headline, certificate = CERTIFIED[name]
        row = wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 240)
        assert row["status"] == "succeeded", (name, row)
        assert _epochs(api, job_id) == [("pretrain", "dense", 1), ("prune", VARIANT, 1), ("finetune", VARIANT, 1)]
        report = api.get(f"/v1/jobs/{job_id}/report").json()
        assert report["objective"]["type"] == name and report["headline_robust_metric"] == headline
        for variant in ("dense", VARIANT):
            metrics = report["variants"][variant]["metrics"]
            assert 0.0 <= metrics[headline] <= 1.0
            if name == "smoothing":  # same samples: certified at r > 0 never above the smoothed accuracy
                assert metrics[headline] <= metrics["smoothed_acc"]
        assert certificate in report["procedures"][headline], report["procedures"]


def test_a_job_from_an_uploaded_network_and_dataset_skips_pretraining_and_names_the_uploads(
    api: Any, start_worker: Any, tmp_path: Path
) -> None:
    """The user's own starting network and data: the job prunes and fine-tunes exactly that network
    (its dense evaluation is the uploaded network's accuracy), and everything the user downloads names
    the uploads as they were referenced, never by the worker's local copies."""
    import io
    import json

    import numpy as np
    import torch
    from safetensors.torch import save

    from core.data.datasets import _mnist5k_arrays, build_datasets
    from core.models.zoo import create_model
    from core.spec import load_spec

    torch.manual_seed(5)
    net = create_model("cnn_small_mnist")
    images, labels = _mnist5k_arrays()
    buffer = io.BytesIO()
    pick = np.arange(0, len(labels), 15)[:320]  # the file is sorted by digit: take every class
    np.savez(buffer, images=images[pick, 0], labels=labels[pick])
    npz = buffer.getvalue()
    weights = save({k: v.contiguous() for k, v in net.state_dict().items()})
    model = api.post("/v1/models", files={"file": ("net.safetensors", weights)}, data={"arch": "cnn_small_mnist"})
    dataset = api.post("/v1/datasets", files={"file": ("digits.npz", npz)})
    assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
    refs = {"model": model.json()["ref"], "dataset": dataset.json()["ref"]}

    start_worker()
    spec = tiny_spec(name="worker-uploads", stages={"pretrain": None})
    spec["model"] = {"arch": "cnn_small_mnist", "checkpoint": refs["model"]}
    spec["dataset"] = {"name": "npz", "path": refs["dataset"], "batch_size": 64}
    job_id = submit(api, spec)
    row = wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 240)
    assert row["status"] == "succeeded", row
    assert _epochs(api, job_id) == [("prune", VARIANT, 1), ("finetune", VARIANT, 1)]

    report = api.get(f"/v1/jobs/{job_id}/report").json()
    recorded = [
        report["spec"],
        json.loads(api.get(f"/v1/jobs/{job_id}/artifacts/spec.json").content),
        json.loads(api.get(f"/v1/jobs/{job_id}/artifacts/report.json").content)["spec"],
    ]
    for shown in recorded:
        assert (shown["model"]["checkpoint"], shown["dataset"]["path"]) == (refs["model"], refs["dataset"])

    local = tmp_path / "digits.npz"
    local.write_bytes(npz)
    parsed = load_spec({**spec, "dataset": {**spec["dataset"], "path": str(local)}})
    _, test_ds, _ = build_datasets(parsed.dataset, parsed.seed)
    x = torch.stack([test_ds[i][0] for i in range(len(test_ds))])
    y = torch.as_tensor([int(test_ds[i][1]) for i in range(len(test_ds))])
    with torch.no_grad():
        accuracy = (net.eval()(x).argmax(1) == y).float().mean().item()
    assert accuracy == pytest.approx(report["variants"]["dense"]["metrics"]["benign_acc"], abs=1e-6)


def test_a_channel_job_and_a_learned_allocation_job_run_through_the_worker(
    api: Any, start_worker: Any, tmp_path: Path
) -> None:
    """Issue 9 through the service: the channel job's smaller network and the learned job's exact
    budget are what the user downloads."""
    import torch

    from core.data.datasets import build_datasets
    from core.io.export import load_compressed
    from core.io.export_channel import load_channel_pruned
    from core.pruning.masked import kept_count
    from core.spec import load_spec

    start_worker()
    evaluation = {"measure_latency": False, "measure_batch_sizes": [1, 4]}
    specs = {
        "channel": tiny_spec(
            name="worker-channel", pruning={"k": [0.5], "granularity": "channel"}, evaluation=evaluation
        ),
        "learned": tiny_spec(name="worker-learned", pruning={"allocation": "learned"}, evaluation=evaluation),
    }
    ids = {name: submit(api, spec) for name, spec in specs.items()}
    rows = {name: wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 240) for name, job_id in ids.items()}
    assert all(row["status"] == "succeeded" for row in rows.values()), rows

    # channel: the evaluated, downloaded network is the physically smaller one
    job_id = ids["channel"]
    report = api.get(f"/v1/jobs/{job_id}/report").json()
    name = "hydra_k0.5.channel.safetensors"
    listing = {a["name"]: a for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
    assert name in listing and report["variants"]["hydra_k0.5"]["evaluated"].endswith(name)
    body = api.get(f"/v1/jobs/{job_id}/artifacts/{name}").content
    assert hashlib.sha256(body).hexdigest() == listing[name]["sha256"]
    (tmp_path / name).write_bytes(body)
    small = load_channel_pruned(tmp_path / name)
    assert report["variants"]["hydra_k0.5"]["inference"]["params"]["ratio"] < 0.5
    parsed = load_spec(specs["channel"])
    _, test_ds, _ = build_datasets(parsed.dataset, parsed.seed)
    x = torch.stack([test_ds[i][0] for i in range(len(test_ds))])
    y = torch.as_tensor([int(test_ds[i][1]) for i in range(len(test_ds))])
    with torch.no_grad():
        accuracy = (small(x).argmax(1) == y).float().mean().item()
    assert accuracy == pytest.approx(report["variants"]["hydra_k0.5"]["metrics"]["benign_acc"], abs=1e-6)

    # learned: the downloaded compressed network keeps the global budget
    job_id = ids["learned"]
    body = api.get(f"/v1/jobs/{job_id}/artifacts/{ARTIFACT}").content
    (tmp_path / ARTIFACT).write_bytes(body)
    state, _ = load_compressed(tmp_path / ARTIFACT)
    weights = [v for k, v in state.items() if k.endswith(".weight") and v.dim() > 1]
    total = sum(v.numel() for v in weights)
    assert abs(sum(int(v.count_nonzero()) for v in weights) - kept_count(total, 0.1)) <= 0.001 * total
    listing = {a["name"] for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
    assert "layer_rates.png" in listing
