"""An archive of class folders uploaded to POST /v1/datasets: converted to the npz dataset file, used by
a job, and every hostile archive refused with 422 naming the member."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.storage import build_store
from tests.archive_helpers import class_files, hostile_cases, tar_bytes, zip_bytes
from tests.service.svc_helpers import assert_error, build_app


def upload(client: TestClient, key, data: bytes, filename: str, **form: str):  # type: ignore[no-untyped-def]
    files = {"file": (filename, data, "application/octet-stream")}
    return client.post("/v1/datasets", headers=key.headers, files=files, data=form)


@pytest.mark.parametrize("filename, pack", [("pets.zip", zip_bytes), ("pets.tar", tar_bytes)])
def test_an_archive_of_class_folders_becomes_an_npz_dataset(  # type: ignore[no-untyped-def]
    client: TestClient, key, settings, filename: str, pack
) -> None:
    response = upload(client, key, pack(class_files()), filename, image_size="32", channels="3", name="pets")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["num_classes"], dataset["n_samples"], dataset["input_shape"]) == (2, 6, [3, 32, 32])
    stored = b"".join(build_store(settings).open_stream(f"tenants/{key.tenant_id}/datasets/{dataset['id']}/data.npz"))
    assert dataset["size"] == len(stored)
    with np.load(io.BytesIO(stored), allow_pickle=False) as npz:
        assert npz["class_names"].tolist() == ["cat", "dog"] and npz["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    spec = {"model": {"arch": "cnn_small_cifar"}, "dataset": {"name": "npz", "path": dataset["ref"]}}
    assert client.post("/v1/jobs", json=spec, headers=key.headers).status_code == 201


def test_archive_form_fields_are_checked(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    data = zip_bytes(class_files())
    assert_error(upload(client, key, data, "a.zip", channels="2"), 422, None, "channels")
    assert_error(upload(client, key, data, "a.zip", image_size="4"), 422, None, "image_size")
    body = assert_error(upload(client, key, data, "a.zip", image_size="16", num_classes="3"), 422, "invalid_upload")
    assert body["field"] == "num_classes" and "['cat', 'dog']" in body["detail"]
    body = assert_error(upload(client, key, data, "a.zip"), 422, "invalid_upload", "file")  # mixed sizes, no size
    assert "give image_size" in body["detail"]


@pytest.mark.parametrize("case, data, needle", hostile_cases(), ids=[c[0] for c in hostile_cases()])
def test_hostile_archives_are_422_naming_the_member(settings, queue, key, case: str, data: bytes, needle: str) -> None:  # type: ignore[no-untyped-def]
    small = settings.model_copy(update={"max_archive_files": 30})
    with TestClient(build_app(small, queue), raise_server_exceptions=False) as client:
        body = assert_error(upload(client, key, data, "x.zip", image_size="16"), 422, "invalid_upload", "file")
        assert needle in body["detail"], body["detail"]
        assert client.get("/v1/datasets", headers=key.headers).json()["count"] == 0
    assert not list((Path(small.work_dir) / "uploads").glob("*")), "temp files are removed"


def test_a_job_trains_on_an_uploaded_archive(client: TestClient, key, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from core.pipeline.runner import run_job
    from core.spec import load_spec

    files = {f"{c}{k}": v for c in ("train/", "val/") for k, v in class_files().items()}
    response = upload(client, key, tar_bytes(files, mode="w:gz"), "pets.tgz", image_size="32", channels="3")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["n_samples"] == 12
    local = tmp_path / "data.npz"
    local.write_bytes(
        b"".join(build_store(settings).open_stream(f"tenants/{key.tenant_id}/datasets/{dataset['id']}/data.npz"))
    )
    spec = load_spec(
        {
            "seed": 0,
            "device": "cpu",
            "model": {"arch": "cnn_small_cifar"},
            "dataset": {"name": "npz", "path": str(local), "batch_size": 6},
            "objective": {"type": "natural"},
            "pruning": {"methods": ["hydra"], "k": [0.5]},
            "stages": {"pretrain": {"epochs": 1, "lr": 0.05}, "prune": {"epochs": 1, "lr": 0.1}, "finetune": None},
            "evaluation": {"pgd_steps": 1, "val_pgd_steps": 1, "val_max_samples": 6, "measure_latency": False},
            "export": {"formats": ["compressed"]},
        }
    )
    report = run_job(spec, tmp_path / "run")
    assert report["dataset"]["n_train"] == 6 and report["dataset"]["n_test"] == 6, report["dataset"]
    assert "hydra_k0.5" in report["variants"]
