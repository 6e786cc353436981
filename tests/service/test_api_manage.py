"""Finding, comparing, labelling, estimating and deleting jobs and uploads over HTTP (Postgres).

Jobs are written straight into the database (a final status, a report, artifacts in the store):
what these routes do with them does not depend on a worker having run.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.db import jobs, uploads
from service.db.base import Job, JobEvent, utcnow
from service.db.session import session_scope
from service.storage import build_store
from tests.service.svc_helpers import assert_error


def report(name: str, rows: list[tuple[str, float, float, float]]) -> dict[str, Any]:
    """A report.json with one comparison row per (variant, sparsity, benign, robust)."""
    return {
        "name": name,
        "headline_robust_metric": "robust_acc",
        "comparison": [
            {
                "variant": v,
                "method": "dense" if v == "dense" else v.split("_")[0],
                "k": None if v == "dense" else float(v.split("_k")[1]),
                "sparsity": s,
                "benign_acc": b,
                "robust_acc": r,
                "ci95": {"benign_acc": [b - 0.01, b + 0.01]},
            }
            for v, s, b, r in rows
        ],
        "dataset": {"name": "mnist5k", "n_train": 4000, "n_test": 1000},
    }


def make_job(
    settings, key, name: str = "job", status: str = "succeeded", spec: dict | None = None, **values: Any
) -> str:  # type: ignore[no-untyped-def]
    spec = {"name": name, "model": {"arch": "cnn_small_mnist"}, "dataset": {"name": "mnist5k"}, **(spec or {})}
    with session_scope(settings) as s:
        job, _ = jobs.create_job(s, key.tenant_id, spec)
        s.execute(update(Job).where(Job.id == job.id).values(status=status, **values))
        s.commit()
        return job.id


def add_artifacts(settings, job_id: str, names: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    store = build_store(settings)
    keys = []
    with session_scope(settings) as s:
        for name in names:
            key = f"jobs/{job_id}/artifacts/{name}"
            store.put_bytes(key, b"x" * 10)
            jobs.add_artifact(s, job_id, name, key, 10, "0" * 64)
            keys.append(key)
    store.put_bytes(f"jobs/{job_id}/checkpoints/checkpoint.pt", b"ckpt")
    return keys + [f"jobs/{job_id}/checkpoints/checkpoint.pt"]


# ----------------------------------------------------------------------------- delete
def test_delete_job_removes_row_events_artifacts_and_store_objects(client: TestClient, key, settings) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job(settings, key)
    keys = add_artifacts(settings, job_id, ["report.json", "dense.compressed.safetensors"])
    store = build_store(settings)
    assert all(store.exists(k) for k in keys)

    response = client.delete(f"/v1/jobs/{job_id}", headers=key.headers)
    assert response.status_code == 204, response.text
    assert not any(store.exists(k) for k in keys)
    with session_scope(settings) as s:
        assert jobs.get_job(s, None, job_id) is None
        assert jobs.list_artifacts(s, job_id) == []
        assert s.query(JobEvent).filter(JobEvent.job_id == job_id).count() == 0
    assert_error(client.get(f"/v1/jobs/{job_id}", headers=key.headers), 404, "not_found")
    # idempotent: the second delete answers 404 (gone, as if it never existed), and changes nothing
    assert_error(client.delete(f"/v1/jobs/{job_id}", headers=key.headers), 404, "not_found", "job_id")


def test_delete_is_tenant_scoped(client: TestClient, key, make_key, settings) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job(settings, key)
    keys = add_artifacts(settings, job_id, ["report.json"])
    other = make_key()
    assert_error(client.delete(f"/v1/jobs/{job_id}", headers=other.headers), 404, "not_found")
    assert_error(client.delete(f"/v1/jobs/{job_id}/artifacts/report.json", headers=other.headers), 404)
    assert client.get(f"/v1/jobs/{job_id}", headers=key.headers).status_code == 200
    assert build_store(settings).exists(keys[0])


@pytest.mark.parametrize("status", ["queued", "running"])
def test_a_job_not_stopped_cannot_be_deleted(client: TestClient, key, settings, status: str) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job(settings, key, status=status)
    keys = add_artifacts(settings, job_id, ["report.json"])
    body = assert_error(client.delete(f"/v1/jobs/{job_id}", headers=key.headers), 409, "conflict", "job_id")
    assert status in body["detail"] and "cancel" in body["detail"]
    assert_error(client.delete(f"/v1/jobs/{job_id}/artifacts/report.json", headers=key.headers), 409, "conflict")
    assert client.get(f"/v1/jobs/{job_id}", headers=key.headers).json()["status"] == status
    assert all(build_store(settings).exists(k) for k in keys)


def test_delete_one_artifact(client: TestClient, key, settings) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job(settings, key, status="failed")
    keys = add_artifacts(settings, job_id, ["a.onnx", "b.onnx"])
    assert client.delete(f"/v1/jobs/{job_id}/artifacts/a.onnx", headers=key.headers).status_code == 204
    names = [a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts", headers=key.headers).json()["data"]]
    assert names == ["b.onnx"]
    store = build_store(settings)
    assert not store.exists(keys[0]) and store.exists(keys[1])
    assert_error(client.delete(f"/v1/jobs/{job_id}/artifacts/a.onnx", headers=key.headers), 404, "not_found", "name")


def _upload_rows(settings, key) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    store = build_store(settings)
    model_id, dataset_id = str(uuid.uuid4()), str(uuid.uuid4())
    with session_scope(settings) as s:
        store.put_bytes(f"tenants/{key.tenant_id}/models/{model_id}", b"m")
        uploads.create_model(
            s,
            model_id=model_id,
            tenant_id=key.tenant_id,
            name="m",
            arch="cnn_small_mnist",
            arch_kwargs={},
            format="safetensors",
            storage_key=f"tenants/{key.tenant_id}/models/{model_id}",
            size=1,
            sha256="0" * 64,
        )
        store.put_bytes(f"tenants/{key.tenant_id}/datasets/{dataset_id}", b"d")
        uploads.create_dataset(
            s,
            dataset_id=dataset_id,
            tenant_id=key.tenant_id,
            name="d",
            storage_key=f"tenants/{key.tenant_id}/datasets/{dataset_id}",
            num_classes=10,
            n_samples=100,
            input_shape=[1, 28, 28],
            size=1,
            sha256="0" * 64,
        )
    return model_id, dataset_id


def test_uploads_used_by_a_live_job_are_refused_then_deleted(client: TestClient, key, make_key, settings) -> None:  # type: ignore[no-untyped-def]
    model_id, dataset_id = _upload_rows(settings, key)
    spec = {
        "model": {"arch": "cnn_small_mnist", "checkpoint": f"model:{model_id}"},
        "dataset": {"name": "npz", "path": f"dataset:{dataset_id}"},
    }
    live = make_job(settings, key, status="running", spec=spec)
    make_job(settings, key, status="succeeded", spec=spec)  # a finished job does not keep an upload
    assert_error(client.delete(f"/v1/models/{model_id}", headers=make_key().headers), 404, "not_found")
    for kind, upload_id in (("models", model_id), ("datasets", dataset_id)):
        body = assert_error(client.delete(f"/v1/{kind}/{upload_id}", headers=key.headers), 409, "conflict")
        assert live in body["detail"], body
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == live).values(status="canceled"))
        s.commit()
    store = build_store(settings)
    for kind, upload_id in (("models", model_id), ("datasets", dataset_id)):
        assert client.delete(f"/v1/{kind}/{upload_id}", headers=key.headers).status_code == 204
        assert_error(client.get(f"/v1/{kind}/{upload_id}", headers=key.headers), 404)
        assert not store.exists(f"tenants/{key.tenant_id}/{kind}/{upload_id}")
        assert_error(client.delete(f"/v1/{kind}/{upload_id}", headers=key.headers), 404, "not_found")


# ----------------------------------------------------------------------------- prefixes
def test_job_id_prefixes(client: TestClient, key, make_key, settings) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job(settings, key, name="prefixed")
    prefix = job_id[:8]
    assert client.get(f"/v1/jobs/{prefix}", headers=key.headers).json()["id"] == job_id
    assert client.get(f"/v1/jobs/{prefix}/events", headers=key.headers).status_code == 200
    assert client.get(f"/v1/jobs/{prefix}/artifacts", headers=key.headers).status_code == 200
    assert client.get(f"/v1/jobs/{job_id[:12].upper()}", headers=key.headers).json()["id"] == job_id
    body = assert_error(client.get(f"/v1/jobs/{job_id[:7]}", headers=key.headers), 404, "not_found", "job_id")
    assert "at least 8" in body["detail"]
    assert_error(client.get(f"/v1/jobs/{prefix}", headers=make_key().headers), 404)  # another tenant's
    # two jobs sharing a prefix: ambiguous
    twin = prefix + str(uuid.uuid4())[8:]
    with session_scope(settings) as s:
        s.add(
            Job(
                id=twin,
                tenant_id=key.tenant_id,
                name="twin",
                spec={},
                status="failed",
                fraction=0.0,
                attempt=0,
                max_attempts=1,
                cancel_requested=False,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        s.commit()
    body = assert_error(client.get(f"/v1/jobs/{prefix}", headers=key.headers), 409, "conflict", "job_id")
    assert job_id in body["detail"] and twin in body["detail"]
    assert client.get(f"/v1/jobs/{job_id}", headers=key.headers).json()["id"] == job_id  # full ids still work


# ----------------------------------------------------------------------------- list
def test_list_search_sort_paging_tags_and_note(client: TestClient, key, settings) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    ids = {}
    for i, (name, status) in enumerate([("beta-run", "failed"), ("alpha-run", "succeeded"), ("gamma", "queued")]):
        ids[name] = make_job(settings, key, name=name, status=status, created_at=now + timedelta(seconds=i))
    h = key.headers
    page = client.get("/v1/jobs?limit=2", headers=h).json()
    assert page["count"] == 3 and [j["name"] for j in page["data"]] == ["gamma", "alpha-run"]
    page = client.get("/v1/jobs?limit=2&offset=2", headers=h).json()
    assert page["count"] == 3 and [j["name"] for j in page["data"]] == ["beta-run"]
    names = lambda q: [j["name"] for j in client.get(f"/v1/jobs?{q}", headers=h).json()["data"]]  # noqa: E731
    assert names("sort=name&order=asc") == ["alpha-run", "beta-run", "gamma"]
    assert names("sort=status&order=asc") == ["beta-run", "gamma", "alpha-run"]
    assert names("q=RUN&sort=created&order=asc") == ["beta-run", "alpha-run"]
    assert names("q=%25") == []  # a LIKE wildcard is searched for literally
    assert client.get("/v1/jobs?q=run", headers=h).json()["count"] == 2
    assert_error(client.get("/v1/jobs?sort=size", headers=h), 422, field="sort")

    patched = client.patch(
        f"/v1/jobs/{ids['gamma'][:8]}", json={"tags": ["baseline", "mnist"], "note": "first try"}, headers=h
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["tags"] == ["baseline", "mnist"] and patched.json()["note"] == "first try"
    client.patch(f"/v1/jobs/{ids['beta-run']}", json={"tags": ["mnist"]}, headers=h)
    assert names("tag=mnist&sort=name&order=asc") == ["beta-run", "gamma"]
    assert client.get("/v1/jobs?tag=baseline", headers=h).json()["count"] == 1
    # a note alone leaves the tags; an empty note clears it
    cleared = client.patch(f"/v1/jobs/{ids['gamma']}", json={"note": ""}, headers=h)
    assert cleared.status_code == 200 and cleared.json()["note"] is None
    job = client.get(f"/v1/jobs/{ids['gamma']}", headers=h).json()
    assert job["tags"] == ["baseline", "mnist"] and job["note"] is None
    assert_error(client.patch(f"/v1/jobs/{ids['gamma']}", json={"tags": ["has space"]}, headers=h), 422, field="tags.0")
    assert_error(client.patch(f"/v1/jobs/{ids['gamma']}", json={"colour": "red"}, headers=h), 422, field="colour")


def test_list_and_status_show_the_finished_state_and_every_headline(client: TestClient, key, settings) -> None:  # type: ignore[no-untyped-def]
    rep = report("r", [("dense", 0.0, 0.99, 0.90), ("hydra_k0.1", 0.9, 0.97, 0.85), ("lwm_k0.1", 0.9, 0.95, 0.70)])
    job_id = make_job(settings, key, stage="evaluate", variant="lwm_k0.1", report=rep)
    job = client.get(f"/v1/jobs/{job_id}", headers=key.headers).json()
    assert job["phase"] == "succeeded" and "report" not in job
    assert [(h["variant"], h["robust_acc"]) for h in job["headlines"]] == [
        ("dense", 0.90),
        ("hydra_k0.1", 0.85),
        ("lwm_k0.1", 0.70),
    ]
    assert job["headlines"][1]["robust_metric"] == "robust_acc" and job["headlines"][1]["sparsity"] == 0.9
    listed = client.get("/v1/jobs", headers=key.headers).json()["data"][0]
    assert listed["phase"] == "succeeded" and len(listed["headlines"]) == 3
    running = make_job(settings, key, status="running", stage="prune", variant="hydra_k0.1")
    assert client.get(f"/v1/jobs/{running}", headers=key.headers).json()["phase"] == "prune hydra_k0.1"


# ----------------------------------------------------------------------------- compare
def test_compare_jobs_in_one_table(client: TestClient, key, make_key, settings) -> None:  # type: ignore[no-untyped-def]
    a = make_job(
        settings, key, name="a", report=report("a", [("dense", 0.0, 0.99, 0.9), ("hydra_k0.1", 0.9, 0.97, 0.8)])
    )
    b = make_job(
        settings, key, name="b", report=report("b", [("dense", 0.0, 0.98, 0.88), ("lwm_k0.05", 0.95, 0.9, 0.6)])
    )
    c = make_job(settings, key, name="c", status="running")
    body = client.get(f"/v1/jobs/compare?ids={a},{b[:8]},{c}", headers=key.headers)
    assert body.status_code == 200, body.text
    data = body.json()
    assert [j["id"] for j in data["jobs"]] == [a, b, c]
    assert data["jobs"][2]["note"] == "no report: the job is running"
    assert [(r["job_name"], r["variant"], r["robust_acc"]) for r in data["rows"]] == [
        ("a", "dense", 0.9),
        ("a", "hydra_k0.1", 0.8),
        ("b", "dense", 0.88),
        ("b", "lwm_k0.05", 0.6),
    ]
    assert data["metrics"] == ["benign_acc", "robust_acc"]
    assert_error(client.get(f"/v1/jobs/compare?ids={a}", headers=make_key().headers), 404, "not_found", "job_id")
    assert_error(client.get("/v1/jobs/compare?ids=,", headers=key.headers), 422, field="ids")


# ----------------------------------------------------------------------------- estimate
def test_estimate_counts_passes_and_uses_measured_throughput(client: TestClient, key, settings) -> None:  # type: ignore[no-untyped-def]
    arch = "cnn_small_mnist"
    spec = {
        "model": {"arch": arch},
        "dataset": {"name": "mnist5k", "max_train_samples": 1000, "max_test_samples": 200},
        "objective": {"type": "pgd", "steps": 4},
        "pruning": {"methods": ["hydra"], "k": [0.1, 0.05]},
        "stages": {"pretrain": {"epochs": 2, "lr": 0.1}, "prune": {"epochs": 1, "lr": 0.1}, "finetune": None},
        "evaluation": {"pgd_steps": 9, "val_pgd_steps": 1, "val_max_samples": 100, "autoattack": False},
    }
    # No other test's jobs may measure this: a throughput is shared across tenants, so read what is there.
    first = client.post("/v1/jobs/estimate", json=spec, headers=key.headers)
    assert first.status_code == 200, first.text
    est = first.json()
    stages = {s["stage"]: s for s in est["stages"]}
    # pretrain: 1 run x 2 epochs x (1000 samples x (4 steps + 1) + 100 val x (1 + 1)) = 10,400
    assert stages["pretrain"]["sample_passes"] == 2 * (1000 * 5 + 200)
    # prune: 2 variants x 1 epoch x (5,000 + 200)
    assert stages["prune"]["runs"] == 2 and stages["prune"]["sample_passes"] == 2 * (1000 * 5 + 200)
    assert "finetune" not in stages
    # evaluate: 3 networks x 200 samples x (1 + 9)
    assert stages["evaluate"]["sample_passes"] == 3 * 200 * 10
    assert est["total_sample_passes"] == 10_400 + 10_400 + 6_000

    # a measured job: two pretrain epochs of 2 s each under this very spec -> 5,200 / 2 s = 2,600 passes/s
    t0 = utcnow() - timedelta(hours=1)
    measured = make_job(
        settings,
        key,
        spec=spec,
        report={"dataset": {"n_train": 1000, "n_test": 200}},
        created_at=utcnow() + timedelta(days=3650),
    )
    with session_scope(settings) as s:
        for i, kind in enumerate(["stage_started", "epoch_finished", "epoch_finished"]):
            payload = {"stage": "pretrain", "variant": "dense", "epoch": i}
            s.add(JobEvent(job_id=measured, kind=kind, payload=payload, created_at=t0 + timedelta(seconds=2 * i)))
        s.commit()
    est = client.post("/v1/jobs/estimate", json=spec, headers=key.headers).json()
    assert est["throughput"] == pytest.approx(2600.0)
    assert est["seconds"] == pytest.approx(26_800 / 2600.0)
    assert "median of 2 training epochs" in est["throughput_source"]


def test_estimate_without_measurements_says_so(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    # no test job ever runs wrn_28_10, so nothing was measured for it
    spec = {"model": {"arch": "wrn_28_10"}, "dataset": {"name": "cifar10"}, "objective": {"type": "natural"}}
    response = client.post("/v1/jobs/estimate", json=spec, headers=key.headers)
    assert response.status_code == 200, response.text
    est = response.json()
    assert est["throughput"] is None and est["seconds"] is None
    assert est["throughput_source"] == "no throughput measured yet for wrn_28_10: only the counts are given"
    # the catalogue's CIFAR-10 defaults: 100 pretrain epochs x 50,000 images x 1 pass + validation
    pretrain = next(s for s in est["stages"] if s["stage"] == "pretrain")
    assert pretrain["samples"] == 50_000 and pretrain["passes_per_sample"] == 1.0
    assert pretrain["sample_passes"] == 100 * (50_000 + 512 * 11)
    assert any("AutoAttack on 1000 samples" in n for n in est["notes"])


# ----------------------------------------------------------------------------- request hygiene
def test_a_yaml_body_is_named_as_the_problem(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    yaml_text = "name: x\npruning: {k: [0.1]}\n"
    body = assert_error(
        client.post("/v1/jobs", content=yaml_text, headers={**key.headers, "Content-Type": "application/yaml"}),
        415,
        "unsupported_media_type",
        "Content-Type",
    )
    assert "application/yaml" in body["detail"] and "JSON" in body["detail"]
    body = assert_error(
        client.post("/v1/jobs", content=yaml_text, headers={**key.headers, "Content-Type": "application/json"}),
        422,
        "invalid_json",
    )


def test_every_response_carries_a_content_security_policy(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    for path in ("/v1/jobs", "/openapi.json", "/healthz", "/ui/jobs", "/docs", "/redoc", "/v1/no-such-thing"):
        csp = client.get(path, headers=key.headers).headers.get("content-security-policy", "")
        assert "default-src" in csp and "http" not in csp, (path, csp)
        assert "'unsafe-inline'" not in csp.split("script-src")[-1].split(";")[0], (path, csp)
    redoc = client.get("/redoc")
    src = redoc.text.split('<script src="')[1].split('"')[0]
    js = client.get(src)
    assert js.status_code == 200 and b"cdn.redoc.ly" not in js.content and len(js.content) > 100_000
    assert "http" not in redoc.text.replace("http-equiv", "")


def test_estimate_refuses_what_submission_refuses(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    # a lax conversion (1 for true) and a file path instead of an upload: refused as POST /v1/jobs refuses them
    assert_error(
        client.post("/v1/jobs/estimate", json={"evaluation": {"measure_latency": 1}}, headers=key.headers),
        422,
        field="evaluation.measure_latency",
    )
    assert_error(
        client.post("/v1/jobs/estimate", json={"dataset": {"name": "npz", "path": "/etc/passwd"}}, headers=key.headers),
        422,
        "invalid_reference",
        "dataset.path",
    )


def test_a_literal_path_is_not_a_job_id_for_allow(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    response = client.options("/v1/jobs/compare", headers=key.headers)
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
    assert (
        client.options(f"/v1/jobs/{uuid.uuid4()}", headers=key.headers).headers["allow"] == "DELETE, GET, HEAD, PATCH"
    )


def test_list_refuses_a_nul_in_the_search(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    # Postgres text cannot hold NUL: refused as a 422 naming the parameter, never a 500
    assert_error(client.get("/v1/jobs", params={"q": "a\x00b"}, headers=key.headers), 422, field="q")
    assert_error(client.get("/v1/jobs", params={"tag": "a b"}, headers=key.headers), 422, field="tag")


def test_stored_reports_of_either_format_give_flat_rows_with_every_metric():
    """The list's headlines and the compare table read a stored report through load_report: format /2
    (migrated) and /3 (metrics nested per row) give the same flat columns."""
    import json
    from pathlib import Path

    from api.schemas import flat_comparison
    from core.pipeline.report_build import load_report

    v2 = json.loads((Path(__file__).resolve().parents[1] / "data" / "reports" / "v2_global_latency.json").read_text())
    v3 = load_report(v2).model_dump(mode="json")
    assert v3["format"].endswith("/3") and "metrics" in v3["comparison"][0]
    metric2, rows2 = flat_comparison(v2)
    metric3, rows3 = flat_comparison(v3)
    assert metric2 == metric3 == v2["headline_robust_metric"]
    assert rows2 == rows3 and [r["variant"] for r in rows3] == [r["variant"] for r in v2["comparison"]]
    for row, old in zip(rows3, v2["comparison"]):
        assert row["benign_acc"] == old["benign_acc"] and row[metric3] == old[metric3]


# ----------------------------------------------------------------------------- bundle
def test_a_networks_files_download_as_one_zip_with_their_sha256(client: TestClient, key, settings) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    import io
    import zipfile

    job_id = make_job(settings, key, "zipped")
    store = build_store(settings)
    files = {
        "dense.compressed.safetensors": b"dense" * 100,
        "hydra_k0.01.compressed.safetensors": b"sparse" * 50,
        "hydra_k0.01.onnx": b"graph" * 30,
        "report.json": b"{}",
    }
    with session_scope(settings) as s:
        for name, data in files.items():
            storage_key = f"jobs/{job_id}/artifacts/{name}"
            store.put_bytes(storage_key, data)
            jobs.add_artifact(s, job_id, name, storage_key, len(data), hashlib.sha256(data).hexdigest())
    answer = client.get(f"/v1/jobs/{job_id[:8]}/bundle", params={"variant": "hydra_k0.01"}, headers=key.headers)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    bundle = zipfile.ZipFile(io.BytesIO(answer.content))
    assert sorted(bundle.namelist()) == ["SHA256SUMS", "hydra_k0.01.compressed.safetensors", "hydra_k0.01.onnx"]
    for name in ("hydra_k0.01.compressed.safetensors", "hydra_k0.01.onnx"):
        assert bundle.read(name) == files[name]
        assert f"{hashlib.sha256(files[name]).hexdigest()}  {name}" in bundle.read("SHA256SUMS").decode()
    everything = client.get(f"/v1/jobs/{job_id}/bundle", headers=key.headers)
    assert len(zipfile.ZipFile(io.BytesIO(everything.content)).namelist()) == len(files) + 1
    missing = client.get(f"/v1/jobs/{job_id}/bundle", params={"variant": "lwm_k0.5"}, headers=key.headers)
    assert_error(missing, 404, "not_found", "variant")
    other = client.get(f"/v1/jobs/{job_id}/bundle", headers={"Authorization": "Bearer nope"})
    assert other.status_code == 401
