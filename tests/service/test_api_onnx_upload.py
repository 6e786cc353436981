"""An ONNX network through the service: POST /v1/models converts and checks it, a job names it as
``model.onnx: model:<id>``, and hostile or unfitting graphs are refused with the problem named."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from tests.service.svc_helpers import assert_error


def onnx_bytes(classes: int = 10, domain: str = "", external: bool = False) -> bytes:
    """Conv → Relu → Flatten → Gemm on 1x28x28 digits (the default data set), built with the onnx helper API."""
    rng = np.random.default_rng(0)
    conv_w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 4, 4)).astype(np.float32), "conv_w")
    fc_w = numpy_helper.from_array(rng.normal(0, 0.1, (classes, 4 * 13 * 13)).astype(np.float32), "fc_w")
    if external:
        conv_w.ClearField("raw_data")
        conv_w.data_location = TensorProto.EXTERNAL
        entry = conv_w.external_data.add()
        entry.key, entry.value = "location", "/etc/shadow"
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", strides=[2, 2], domain=domain),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        [conv_w, fc_w],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def upload(client: TestClient, key, data: bytes, **form: str):  # type: ignore[no-untyped-def]
    files = {"file": ("net.onnx", data, "application/octet-stream")}
    return client.post("/v1/models", headers=key.headers, files=files, data=form)


def test_an_onnx_upload_is_converted_recorded_and_usable_as_model_onnx(client: TestClient, key, make_key) -> None:  # type: ignore[no-untyped-def]
    data = onnx_bytes()
    response = upload(client, key, data, name="digits net")
    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["arch"], model["format"], model["name"]) == ("onnx", "onnx", "digits net")
    graph = model["arch_kwargs"]
    assert graph["input"] == {"name": "x", "shape": [1, 28, 28]} and graph["output"]["num_classes"] == 10
    assert graph["sha256"] == model["sha256"] == hashlib.sha256(data).hexdigest()
    assert graph["op_counts"] == {"Conv": 1, "Flatten": 1, "Gemm": 1, "Relu": 1} and graph["prunable_layers"] == 2

    job = client.post("/v1/jobs", json={"model": {"onnx": model["ref"]}}, headers=key.headers)
    assert job.status_code == 201, job.text
    spec = job.json()["spec"]
    assert spec["model"]["onnx"] == model["ref"] and spec["model"]["arch"] == "onnx"
    assert spec["stages"]["pretrain"] is None  # the uploaded weights are the starting point

    as_weights = {"model": {"arch": "cnn_small_mnist", "checkpoint": model["ref"]}}
    assert_error(
        client.post("/v1/jobs", json=as_weights, headers=key.headers), 422, "invalid_reference", "model.checkpoint"
    )
    local = {"model": {"onnx": "/etc/net.onnx"}}
    assert_error(client.post("/v1/jobs", json=local, headers=key.headers), 422, "invalid_reference", "model.onnx")
    intruder = make_key()
    stolen = client.post("/v1/jobs", json={"model": {"onnx": model["ref"]}}, headers=intruder.headers)
    assert_error(stolen, 422, "invalid_reference", "model.onnx")


def test_a_graph_that_does_not_fit_the_job_is_refused_at_submission(client: TestClient, key) -> None:  # type: ignore[no-untyped-def]
    three = upload(client, key, onnx_bytes(classes=3)).json()
    body = assert_error(
        client.post("/v1/jobs", json={"model": {"onnx": three["ref"]}}, headers=key.headers), 422, None, "model.onnx"
    )
    assert "3 outputs" in body["detail"] and "10 classes" in body["detail"]
    ten = upload(client, key, onnx_bytes()).json()
    bounded = {"model": {"onnx": ten["ref"]}, "objective": {"type": "crown_ibp", "eps": 0.1}}
    body = assert_error(
        client.post("/v1/jobs", json=bounded, headers=key.headers), 422, "unsupported_layer", "model.onnx"
    )
    assert "not supported by the bound code" in body["detail"]


@pytest.mark.parametrize(
    ("data", "form", "code", "field", "needle"),
    [
        (onnx_bytes(domain="evil.ops"), {}, "invalid_upload", "file", "evil.ops"),
        (onnx_bytes(external=True), {}, "invalid_upload", "file", "'/etc/shadow'"),
        (b"\x0a\xff\xff\xff\xff\x0f garbage", {"arch": "onnx"}, "invalid_upload", "file", "not an ONNX model"),
        (b"definitely not weights", {}, "invalid_upload", "arch", "arch is required"),
        (onnx_bytes(), {"arch": "onnx", "kwargs": '{"num_classes": 3}'}, "invalid_upload", "kwargs", "no kwargs"),
    ],
    ids=["custom op", "external data", "garbage", "weights without arch", "kwargs"],
)
def test_hostile_or_malformed_onnx_is_422_naming_the_problem_and_nothing_is_stored(
    client: TestClient, key, data: bytes, form: dict, code: str, field: str, needle: str
) -> None:  # type: ignore[no-untyped-def]
    body = assert_error(upload(client, key, data, **form), 422, code, field)
    assert needle in body["detail"]
    assert client.get("/v1/models", headers=key.headers).json()["count"] == 0


def grouped_onnx_bytes() -> bytes:
    """Conv → grouped Conv (groups=2) → GlobalAveragePool → Flatten → Gemm on 1x28x28: channel pruning
    cannot rebuild the grouped convolution."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "a_w"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "g_w"),
        numpy_helper.from_array(rng.normal(0, 0.3, (10, 4)).astype(np.float32), "fc_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "a_w"], ["a"], name="stem"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "g_w"], ["g"], name="grouped_conv", group=2),
        helper.make_node("GlobalAveragePool", ["g"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "grouped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_channel_granularity_is_judged_at_upload_and_refused_at_submission_naming_the_node(  # type: ignore[no-untyped-def]
    client: TestClient, key
) -> None:
    channel = {"methods": ["hydra"], "k": [0.5], "granularity": "channel"}
    plain = upload(client, key, onnx_bytes()).json()
    assert plain["arch_kwargs"]["channel_unsupported"] is None
    job = client.post("/v1/jobs", json={"model": {"onnx": plain["ref"]}, "pruning": channel}, headers=key.headers)
    assert job.status_code == 201, job.text

    grouped = upload(client, key, grouped_onnx_bytes()).json()
    assert "grouped_conv" in grouped["arch_kwargs"]["channel_unsupported"]
    spec = {"model": {"onnx": grouped["ref"]}, "pruning": channel}
    body = assert_error(client.post("/v1/jobs", json=spec, headers=key.headers), 422, None, "pruning.granularity")
    assert "grouped ones (net.grouped_conv, groups=2)" in body["detail"]
    spec["pruning"] = {**channel, "granularity": "unstructured"}
    assert client.post("/v1/jobs", json=spec, headers=key.headers).status_code == 201  # unstructured always works
