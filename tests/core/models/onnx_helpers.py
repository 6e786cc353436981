"""What the ONNX tests and benchmarks share: a network exported as a user would, and the tiny job on it."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch


def export_onnx(
    net: torch.nn.Module, shape: tuple[int, ...] = (3, 32, 32), *, dynamo: bool = False, opset: int = 17
) -> bytes:
    """``net`` as ONNX bytes, exported by PyTorch like a user would: input ``img``, output ``scores``,
    a dynamic batch; the TorchScript exporter unless ``dynamo``."""
    net.eval()
    x = torch.rand(2, *shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                net,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=["img"],
                output_names=["scores"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                verbose=False,
            )
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(
            net,
            (x,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["img"],
            output_names=["scores"],
            dynamic_axes={"img": {0: "batch"}, "scores": {0: "batch"}},
        )
        return buffer.getvalue()


def onnx_job_spec(
    onnx_path: Path | str,
    data_path: Path | str,
    *,
    num_classes: int,
    objective: dict[str, Any],
    pruning: dict[str, Any],
    batch_size: int = 16,
    **patch: Any,
) -> dict[str, Any]:
    """A tiny job on the ONNX graph at ``onnx_path`` and the ``npz`` data at ``data_path``: one prune and
    one finetune epoch, one-step attacks on 8 samples, compressed and ONNX out; ``patch`` replaces
    top-level sections."""
    return {
        "device": "cpu",
        "model": {"onnx": str(onnx_path)},
        "dataset": {"name": "npz", "path": str(data_path), "num_classes": num_classes, "batch_size": batch_size},
        "objective": objective,
        "pruning": pruning,
        "stages": {"prune": {"epochs": 1, "lr": 0.1}, "finetune": {"epochs": 1, "lr": 0.01}},
        "evaluation": {
            "pgd_steps": 1,
            "val_pgd_steps": 1,
            "val_max_samples": 8,
            "max_samples": 8,
            "autoattack": False,
            "pgd_smooth_relu": False,
            "measure_latency": False,
        },
        "export": {"formats": ["compressed", "onnx"]},
        **patch,
    }
