"""What does running a network through its ONNX import cost, next to the original PyTorch module?

For each network (torchvision resnet18 and mobilenet_v3_small, a small densenet, timm's test
efficientnet; 3x32x32 inputs, 10 classes, random weights), in one process: export it with
``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic batch), import it with
``core.models.onnx_import.import_onnx`` (checks, conversion, parity against onnxruntime) and time an
eval-mode forward of the converted module against the original's, interleaved per iteration, median
of ``--repeats`` after warm-ups. Then one HYDRA prune step (masked at k = 0.01, only scores train, PGD
l_inf with ``--attack-steps`` steps, ``core.pipeline.training.train_step``) on the converted
resnet18 against the same step on the catalogue's ``torchvision:resnet18``.

Note: an eval-mode export folds BatchNorm into the convolutions, so the converted network has no BN
layers; the step ratio therefore also measures that difference, which is what a user's upload is.

    python bench/import_overhead.py --json           # targets: forward ratio <= 1.10, step ratio <= 1.10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.onnx_import import import_onnx
from core.models.onnx_network import create_onnx_model
from core.models.zoo import create_model
from core.objectives.pgd import PGDTraining
from core.pipeline.training import train_step
from core.pruning.masked import convert_to_masked, set_keep_fraction, set_stage
from tests.core.models.onnx_helpers import export_onnx


def networks() -> dict[str, Callable[[], torch.nn.Module]]:
    import timm
    import torchvision

    return {
        "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
        "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        "densenet_small": lambda: torchvision.models.DenseNet(8, (2, 2, 2, 2), 16, num_classes=10),
        "timm_test_efficientnet": lambda: timm.create_model("test_efficientnet", num_classes=10),
    }


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    order = list(fns)
    for i in range(repeats):
        for name in order[i % len(order) :] + order[: i % len(order)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--attack-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch_size, 3, 32, 32)
    result: dict[str, Any] = {"forward": {}, "device": "cpu", "threads": args.threads}
    for name, build in networks().items():
        torch.manual_seed(0)
        net = build().eval()
        data = export_onnx(net)
        start = time.perf_counter()
        imported = import_onnx(data)
        seconds = time.perf_counter() - start
        converted = imported.module.eval()
        with torch.no_grad():
            calls = {"original": lambda n=net: n(x), "converted": lambda c=converted: c(x)}
            med = interleaved(calls, args.repeats)
        result["forward"][name] = {
            "nodes": sum(imported.op_counts.values()),
            "ops": dict(sorted(imported.op_counts.items())),
            "parameters": imported.parameters,
            "prunable_layers": len(imported.prunable),
            "parity_max_abs_diff": imported.parity_max_abs_diff,
            "import_seconds": round(seconds, 3),
            "onnx_bytes": len(data),
            "original_s": med["original"],
            "converted_s": med["converted"],
            "ratio": med["converted"] / med["original"],
        }
    # one prune step: converted resnet18 against the catalogue's torchvision:resnet18
    torch.manual_seed(0)
    zoo = convert_to_masked(create_model("torchvision:resnet18", num_classes=10, normalization="none"))
    imported = import_onnx(export_onnx(create_model("torchvision:resnet18", num_classes=10, normalization="none").net))
    onnx_net = convert_to_masked(create_onnx_model(imported))
    y = torch.randint(0, 10, (args.batch_size,))
    objective = PGDTraining(PGDTraining.Spec(eps=8 / 255, step_size=2 / 255, steps=args.attack_steps))
    steps: dict[str, Callable[[], Any]] = {}
    for label, model in (("zoo", zoo), ("converted", onnx_net)):
        set_keep_fraction(model, 0.01)
        set_stage(model, "prune")
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        steps[label] = lambda m=model, o=opt: train_step(m, objective, o, x, y, refresh=True)
    med = interleaved(steps, args.steps, warmup=1)
    result["prune_step"] = {
        "zoo_s": med["zoo"],
        "converted_s": med["converted"],
        "ratio": med["converted"] / med["zoo"],
        "batch_size": args.batch_size,
        "attack_steps": args.attack_steps,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, row in result["forward"].items():
            print(f"{name:24s} forward ratio {row['ratio']:.3f}  parity {row['parity_max_abs_diff']:.2g}")
        print(f"prune step ratio (converted / zoo resnet18): {result['prune_step']['ratio']:.3f}")
    return result


if __name__ == "__main__":
    main()
