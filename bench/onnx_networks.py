"""The table of networks tried through ``model.onnx``: import, a tiny unstructured run, the ONNX out.

For each network (torchvision resnet18 and mobilenet_v3_small, a small densenet, timm's test
efficientnet; 3x32x32 inputs, 3 classes, random weights): export with ``torch.onnx.export``
(TorchScript exporter, opset 17, dynamic batch, input ``img``, output ``scores``), then ``run_job`` on
40 random images (HYDRA at k = 0.1, one prune and one finetune epoch, PGD-1 training, CPU) and read
from the report: conversion parity, kept / prunable weights, the ONNX-out parity of every variant, and
whether the shipped graph keeps the user's names. One JSON line per network, then the table.

    python bench/onnx_networks.py            # a few minutes on one CPU core
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from core.pipeline.runner import run_job
from core.spec import load_spec
from tests.core.models.onnx_helpers import export_onnx, onnx_job_spec


def builders() -> dict:
    import timm
    import torchvision

    return {
        "resnet18": lambda: torchvision.models.resnet18(num_classes=3),
        "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=3),
        "densenet_small": lambda: torchvision.models.DenseNet(8, (2, 2, 2, 2), 16, num_classes=3),
        "timm_test_efficientnet": lambda: timm.create_model("test_efficientnet", num_classes=3),
    }


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        data = folder / "data.npz"
        np.savez(data, images=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), labels=np.arange(40) % 3)
        for name, build in builders().items():
            torch.manual_seed(0)
            path = folder / f"{name}.onnx"
            path.write_bytes(export_onnx(build()))
            spec = load_spec(
                onnx_job_spec(
                    path,
                    data,
                    num_classes=3,
                    objective={"type": "pgd", "eps": 0.03, "step_size": 0.01, "steps": 1},
                    pruning={"methods": ["hydra"], "k": [0.1]},
                )
            )
            start = time.perf_counter()
            report = run_job(spec, folder / name)
            variant = report["variants"]["hydra_k0.1"]
            shipped = onnx.load(str(folder / name / variant["artifacts"]["onnx"]["name"]))
            graph = report["source_graph"]
            row = {
                "network": name,
                "nodes": graph["nodes"],
                "ops": graph["op_counts"],
                "parameters": graph["parameters"],
                "prunable_layers": graph["prunable_layers"],
                "conversion_parity": graph["conversion_parity_max_abs_diff"],
                "kept": variant["sparsity"]["kept_params"],
                "prunable": variant["sparsity"]["prunable_params"],
                "onnx_out_parity": {
                    v: r["checks"]["onnx_parity"]["details"].get("max_abs_diff") for v, r in report["variants"].items()
                },
                "names_kept": [i.name for i in shipped.graph.input] == ["img"]
                and [o.name for o in shipped.graph.output] == ["scores"],
                "run_seconds": round(time.perf_counter() - start, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(
        "| network | nodes | parameters | prunable layers | conversion parity | kept / prunable | ONNX out parity (dense, hydra) | names kept |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        out = ", ".join(f"{v:.2g}" for v in r["onnx_out_parity"].values())
        print(
            f"| {r['network']} | {r['nodes']} | {r['parameters']:,} | {r['prunable_layers']} | {r['conversion_parity']:.2g} | "
            f"{r['kept']:,} / {r['prunable']:,} | {out} | {r['names_kept']} |"
        )


if __name__ == "__main__":
    main()
