"""The user's own ONNX network through the whole service: upload, a job naming it, the worker's run,
and the downloaded ONNX run with onnxruntime under the user's names."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pytest

from tests.worker.worker_helpers import submit, tiny_spec, wait_status

pytestmark = pytest.mark.slow


def test_an_uploaded_onnx_network_is_pruned_by_the_worker_and_downloads_as_onnx(api: Any, start_worker: Any) -> None:
    import onnxruntime as ort
    import torch

    from core.models.zoo import create_model

    torch.manual_seed(3)
    net = create_model("cnn_small_mnist").eval()  # with its normalisation: the graph takes [0, 1] pixels
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.rand(2, 1, 28, 28),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["digits"],
            output_names=["class_scores"],
            dynamic_axes={"digits": {0: "n"}, "class_scores": {0: "n"}},
        )
    uploaded = api.post("/v1/models", files={"file": ("mine.onnx", buffer.getvalue())})
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["arch_kwargs"]["input"] == {"name": "digits", "shape": [1, 28, 28]}

    start_worker()
    spec = tiny_spec(name="worker-onnx")
    spec["model"] = {"onnx": uploaded.json()["ref"]}
    spec["stages"] = {k: v for k, v in spec["stages"].items() if k != "pretrain"}  # the default: none
    spec["export"] = {"formats": ["compressed", "onnx"]}
    job_id = submit(api, spec)
    row = wait_status(api, job_id, {"succeeded", "failed", "canceled"}, 300)
    assert row["status"] == "succeeded", row

    report = api.get(f"/v1/jobs/{job_id}/report").json()
    assert report["spec"]["model"]["onnx"] == uploaded.json()["ref"] and report["spec"]["stages"]["pretrain"] is None
    assert report["source_graph"]["sha256"] == uploaded.json()["sha256"]
    variant = report["variants"]["hydra_k0.1"]
    assert variant["checks"]["onnx_parity"]["details"]["ok"], variant["checks"]
    graph = api.get(f"/v1/jobs/{job_id}/artifacts/{variant['artifacts']['onnx']['name']}").content
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    scores = session.run(["class_scores"], {"digits": np.random.default_rng(0).random((5, 1, 28, 28), np.float32)})[0]
    assert scores.shape == (5, 10) and np.isfinite(scores).all()
    assert variant["sparsity"]["kept_params"] <= 0.11 * variant["sparsity"]["prunable_params"]
