"""Uploading starting networks and datasets: accepted only if they load, refused with the reason named."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.service.svc_helpers import assert_error, build_app

ARCH = "cnn_small_mnist"


def create_model(**kwargs):  # type: ignore[no-untyped-def]
    from core.models.zoo import create_model as build

    return build(ARCH, **kwargs)


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def upload_model(client: TestClient, key, data: bytes, arch: str = ARCH, kwargs: str = "{}", **form: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/models",
        headers=key.headers,
        files={"file": ("weights.bin", data, "application/octet-stream")},
        data={"arch": arch, "kwargs": kwargs, **form},
    )


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def digits(n: int = 100) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        "labels": np.arange(n) % 10,
    }


def upload_dataset(client: TestClient, key, data: bytes, **form: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/datasets", headers=key.headers, files={"file": ("d.npz", data, "application/octet-stream")}, data=form
    )


# ----------------------------------------------------------------------------- models
def test_safetensors_upload_is_stored_and_usable_in_a_job(client: TestClient, key, make_key, settings) -> None:  # type: ignore[no-untyped-def]
    data = safetensors_bytes(create_model().state_dict())
    response = upload_model(client, key, data, name="my net")
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["ref"] == f"model:{model['id']}" and model["arch"] == ARCH and model["name"] == "my net"
    assert model["format"] == "safetensors" and model["size"] == len(data)
    assert model["sha256"] == hashlib.sha256(data).hexdigest()
    assert client.get("/v1/models", headers=key.headers).json()["count"] == 1
    assert client.get(f"/v1/models/{model['id']}", headers=key.headers).json()["id"] == model["id"]

    job = client.post("/v1/jobs", json={"model": {"arch": ARCH, "checkpoint": model["ref"]}}, headers=key.headers)
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["model"]["checkpoint"] == model["ref"]
    mismatch = {"model": {"arch": ARCH, "kwargs": {"num_classes": 7}, "checkpoint": model["ref"]}}
    assert_error(client.post("/v1/jobs", json=mismatch, headers=key.headers), 422, "invalid_reference", "model.kwargs")

    intruder = make_key()
    assert client.get("/v1/models", headers=intruder.headers).json() == {"data": [], "count": 0}
    assert_error(client.get(f"/v1/models/{model['id']}", headers=intruder.headers), 404, "not_found")
    stolen = client.post("/v1/jobs", json={"model": {"checkpoint": model["ref"]}}, headers=intruder.headers)
    assert_error(stolen, 422, "invalid_reference", "model.checkpoint")


def test_weights_only_torch_state_dict_is_accepted(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    response = upload_model(client, key, torch_bytes(create_model().state_dict()), format="state_dict")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "state_dict"


def test_nan_weights_are_refused_naming_the_tensor(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    state = create_model().state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and k.endswith("weight"))
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    body = assert_error(upload_model(client, key, safetensors_bytes(state)), 422, "invalid_upload", "file")
    assert name.removeprefix("net.") in body["detail"] and "NaN" in body["detail"]


def test_wrong_shapes_are_refused_naming_the_tensor(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    state = create_model(num_classes=7).state_dict()
    body = assert_error(upload_model(client, key, safetensors_bytes(state)), 422, "invalid_upload", "file")
    assert "shape" in body["detail"]
    # declaring the arguments it was trained with makes the same file acceptable
    assert upload_model(client, key, safetensors_bytes(state), kwargs='{"num_classes": 7}').status_code == 201


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (self.marker,))


def test_pickled_code_never_runs(client: TestClient, key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    data = torch_bytes({"net.0.weight": _Exploit(str(marker))})
    assert_error(upload_model(client, key, data), 422, "invalid_upload", "file")
    assert not marker.exists()


@pytest.mark.parametrize(
    "arch, kwargs, data, field",
    [
        ("no_such_net", "{}", None, "arch"),
        (ARCH, "{not json", None, "kwargs"),
        (ARCH, "[1]", None, "kwargs"),
        (ARCH, '{"no_such_argument": 1}', None, "kwargs"),
        (ARCH, "{}", b"definitely not weights", "file"),
        (ARCH, "{}", b"", "file"),
    ],
)
def test_bad_model_uploads_name_the_field(client: TestClient, key, arch, kwargs, data, field) -> None:  # type: ignore[no-untyped-def]
    payload = safetensors_bytes(create_model().state_dict()) if data is None else data
    response = upload_model(client, key, payload, arch=arch, kwargs=kwargs)
    assert_error(response, 422, None, field)


def test_missing_form_fields(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/models", headers=key.headers, data={"arch": ARCH})
    assert_error(response, 422, "validation_error", "file")
    response = client.post("/v1/models", headers=key.headers, files={"file": ("w", b"x")})
    assert_error(response, 422, "invalid_upload", "arch")  # without arch the file must be an ONNX network


def test_upload_size_limits_are_413(settings, queue, key) -> None:  # type: ignore[no-untyped-def]
    small = settings.model_copy(update={"max_upload_bytes": 1000})
    with TestClient(build_app(small, queue), raise_server_exceptions=False) as client:
        # within the multipart allowance but over the file limit: counted while receiving the file
        assert_error(upload_model(client, key, b"\0" * 5000), 413, "payload_too_large", "file")
        # far over: refused from Content-Length before the body is read
        assert_error(upload_model(client, key, b"\0" * 200_000), 413, "payload_too_large")
        assert_error(upload_dataset(client, key, b"\0" * 200_000), 413, "payload_too_large")


# ----------------------------------------------------------------------------- datasets
def test_npz_dataset_upload_and_use(client: TestClient, key, make_key) -> None:  # type: ignore[no-untyped-def]
    data = npz_bytes(**digits(100))
    response = upload_dataset(client, key, data, name="digits")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["ref"] == f"dataset:{dataset['id']}"
    assert (dataset["num_classes"], dataset["n_samples"], dataset["input_shape"]) == (10, 100, [1, 28, 28])
    assert dataset["sha256"] == hashlib.sha256(data).hexdigest() and dataset["name"] == "digits"
    assert client.get("/v1/datasets", headers=key.headers).json()["count"] == 1

    spec = {"dataset": {"name": "npz", "path": dataset["ref"]}}
    assert client.post("/v1/jobs", json=spec, headers=key.headers).status_code == 201
    intruder = make_key()
    assert_error(client.post("/v1/jobs", json=spec, headers=intruder.headers), 422, "invalid_reference", "dataset.path")
    assert_error(client.get(f"/v1/datasets/{dataset['id']}", headers=intruder.headers), 404, "not_found")


@pytest.mark.parametrize(
    "data, form, needle",
    [
        (npz_bytes(images=digits()["images"]), {}, "labels"),
        (npz_bytes(images=np.full((100, 28, 28), 3.0), labels=np.arange(100) % 10), {}, "[0, 1]"),
        (npz_bytes(**digits()), {"num_classes": "5"}, "class"),
        (b"PK\x03\x04 not really a zip", {}, ""),
        (b"just text", {}, ""),
    ],
)
def test_bad_datasets_are_refused(client: TestClient, key, data: bytes, form: dict, needle: str) -> None:  # type: ignore[no-untyped-def]
    body = assert_error(upload_dataset(client, key, data, **form), 422, "invalid_upload")
    assert body["field"] in ("file", "num_classes") and needle in body["detail"]


def test_pickled_object_arrays_are_refused(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    np.savez(buffer, images=np.array([{"a": 1}] * 4, dtype=object), labels=np.arange(4))
    assert_error(upload_dataset(client, key, buffer.getvalue()), 422, "invalid_upload", "file")


def test_catalogue(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    archs = client.get("/v1/catalogue/architectures", headers=key.headers).json()
    assert ARCH in [a["name"] for a in archs["data"]] and archs["count"] == len(archs["data"])
    datasets = {d["name"]: d["info"] for d in client.get("/v1/catalogue/datasets", headers=key.headers).json()["data"]}
    assert {"mnist5k", "npz"} <= set(datasets) and "imagefolder" not in datasets
    assert datasets["mnist5k"]["num_classes"] == 10
    objectives = {
        o["name"]: o["info"] for o in client.get("/v1/catalogue/objectives", headers=key.headers).json()["data"]
    }
    assert set(objectives) == {"natural", "pgd", "trades", "smoothing", "mixtrain", "crown_ibp"}
    assert objectives["pgd"]["defaults"]["eps"] == pytest.approx(8 / 255)
    assert objectives["trades"]["defaults"]["beta"] == 6.0 and objectives["smoothing"]["defaults"]["sigma"] == 0.25
    assert objectives["crown_ibp"]["needs_bound_support"] and "properties" in objectives["pgd"]["schema"]
    json.dumps(objectives)  # plain JSON all the way down


def test_openapi_documents_every_resource(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/artifacts/{name}",
        "/v1/models",
        "/v1/datasets",
        "/v1/catalogue/objectives",
        "/healthz",
        "/readyz",
    ):
        assert path in paths
    assert client.get("/docs").status_code == 200
