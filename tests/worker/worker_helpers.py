"""Small helpers shared by the worker tests: the tiny job spec and polling the API."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

TINY_SPEC: dict[str, Any] = {
    "name": "worker-test",
    "seed": 1,
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "max_train_samples": 256, "max_test_samples": 64, "batch_size": 64},
    "objective": {"type": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
    "pruning": {"methods": ["hydra"], "k": [0.1]},
    "stages": {
        "pretrain": {"epochs": 1, "lr": 0.05},
        "prune": {"epochs": 1, "lr": 0.1},
        "finetune": {"epochs": 1, "lr": 0.01},
    },
    # AutoAttack off: these tests are about delivery (leases, faults, resume), and AutoAttack's four
    # components took 9 of a tiny job's 9.5 s on 2 cores. The end-to-end test turns it back on
    # (WITH_AUTOATTACK), so the service's path through AutoAttack keeps one worker test of its own.
    "evaluation": {
        "pgd_steps": 2,
        "val_pgd_steps": 1,
        "val_max_samples": 32,
        "measure_latency": False,
        "autoattack": False,
    },
    "export": {"formats": ["compressed"]},
}
WITH_AUTOATTACK: dict[str, Any] = {**TINY_SPEC["evaluation"], "autoattack": True, "autoattack_max_samples": 32}


def tiny_spec(**patch: Any) -> dict[str, Any]:
    """The tiny job spec with top-level sections patched (dicts are merged one level deep)."""
    import copy

    spec = copy.deepcopy(TINY_SPEC)
    for key, value in patch.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def submit(api: Any, spec: dict[str, Any]) -> str:
    response = api.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def job(api: Any, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def events(api: Any, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    response = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    return [e for e in rows if kind is None or e["kind"] == kind]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_status(
    api: Any, job_id: str, statuses: set[str], timeout: float, reaper: Callable[[], Any] | None = None
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        if reaper is not None:
            reaper()
        row = job(api, job_id)
        return row if row["status"] in statuses else None

    try:
        return wait_for(check, timeout, f"job {job_id} to be {statuses}", every=0.5)
    except AssertionError:
        raise AssertionError(f"job {job_id} is {job(api, job_id)} ; events: {events(api, job_id)}") from None
