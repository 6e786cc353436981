"""The table of networks tried for channel pruning through ``model.onnx``, and the refusals.

For each network (3x32x32 inputs, 3 classes, random weights; exported with ``torch.onnx.export``,
TorchScript exporter, opset 17, dynamic batch, input ``img``, output ``scores``): the verdict recorded
at upload (``onnx_channel_refusal``: Torch-Pruning's groups on the converted module, random channels
masked, the rebuilt network must reproduce the masked one); when supported, ``run_job`` at channel
granularity (LWM = L1 filter pruning at k = 0.5, one prune and one finetune epoch, natural objective,
40 random images, CPU), then the shipped ONNX graph imported like an upload: its op counts,
parameters and MACs (``torch_pruning.utils.count_ops_and_params``, batch 1) against the original
graph's, and the ONNX-out parity the report records (onnxruntime vs the PyTorch variant). One JSON
line per network, then the table.

    python bench/onnx_channels.py            # a few minutes on one CPU core
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


import onnx_networks

from core.models.onnx_import import import_onnx
from core.models.onnx_network import create_onnx_model
from core.pipeline.measure import count_macs
from core.pipeline.preflight import onnx_channel_refusal
from core.pipeline.runner import run_job
from core.spec import load_spec
from tests.core.models.onnx_helpers import export_onnx, onnx_job_spec


class Grouped(nn.Module):
    """A grouped (not depthwise) convolution: refused."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Conv2d(8, 8, 3, padding=1, groups=2),
            nn.Linear(8, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def builders() -> dict:
    return {**onnx_networks.builders(), "grouped_conv": Grouped}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    x1 = torch.rand(1, 3, 32, 32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        data = folder / "data.npz"
        np.savez(data, images=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), labels=np.arange(40) % 3)
        for name, build in builders().items():
            torch.manual_seed(0)
            path = folder / f"{name}.onnx"
            path.write_bytes(export_onnx(build()))
            source = import_onnx(path.read_bytes())
            before = create_onnx_model(source)
            row: dict = {
                "network": name,
                "ops": source.op_counts,
                "params_before": sum(p.numel() for p in before.parameters()),
                "macs_before": count_macs(before, x1),
                "refusal": onnx_channel_refusal(before, source.input_shape),
            }
            if row["refusal"] is None:
                spec = load_spec(
                    onnx_job_spec(
                        path,
                        data,
                        num_classes=3,
                        objective={"type": "natural"},
                        pruning={"methods": ["lwm"], "k": [0.5], "granularity": "channel"},
                    )
                )
                start = time.perf_counter()
                report = run_job(spec, folder / name)
                variant = report["variants"]["lwm_k0.5"]
                shipped_path = folder / name / variant["artifacts"]["onnx"]["name"]
                shipped = onnx.load(str(shipped_path))
                after = create_onnx_model(import_onnx(shipped_path.read_bytes()))
                row |= {
                    "ops_after": dict(Counter(n.op_type for n in shipped.graph.node)),
                    "params_after": sum(p.numel() for p in after.parameters()),
                    "macs_after": count_macs(after, x1),
                    "onnx_out_parity": variant["checks"]["onnx_parity"]["details"].get("max_abs_diff"),
                    "names_kept": [i.name for i in shipped.graph.input] == ["img"]
                    and [o.name for o in shipped.graph.output] == ["scores"],
                    "run_seconds": round(time.perf_counter() - start, 1),
                }
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("| network | ops | params before → after | MACs before → after | ONNX out parity | names kept |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items(), key=lambda kv: -kv[1])[:6])
        if r["refusal"] is not None:
            print(
                f"| {r['network']} | {ops} | {r['params_before']:,} | {r['macs_before']:,} | refused: {r['refusal']} | |"
            )
            continue
        print(
            f"| {r['network']} | {ops} | {r['params_before']:,} → {r['params_after']:,} | "
            f"{r['macs_before']:,} → {r['macs_after']:,} ({r['macs_after'] / r['macs_before']:.2f}) | "
            f"{r['onnx_out_parity']:.2g} | {r['names_kept']} |"
        )


if __name__ == "__main__":
    main()
