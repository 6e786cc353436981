"""Does channel pruning make the network faster? Dense latency / pruned latency, one process.

VGG16-BN and ResNet18 (CIFAR shapes, 3x32x32, random weights — speed does not depend on them) are
channel-pruned at keep 0.5 and 0.25 per group (``core.pruning.structured``: scaled channel scores, top-k per
coupled group, physical rebuild with Torch-Pruning) and timed against the dense network at batch 1
and 64: plain PyTorch on the CPU (``torch.inference_mode``) and onnxruntime on the CPU (the exported
ONNX files). Every network is timed interleaved with the others, median of ``--repeats`` samples after
warmup, with the same thread count everywhere (``--threads``, default 1: a shared machine). Ratios are
dense seconds / pruned seconds. Targets: every 0.25 ratio >= 3.0 and every 0.5 ratio >= 1.7.

    python bench/inference_speed.py [--json] [--threads 1] [--repeats 7]

``--json`` ends the output with one line:
``{"vgg16_bn": {"0.5": {"torch_b1": r, "torch_b64": r, "ort_b1": r, "ort_b64": r}, "0.25": {...}}, "resnet18": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from core.io.export_onnx import export_onnx
from core.models.zoo import create_model
from core.pipeline.measure import (
    count_macs,
    count_params,
    median_seconds,
    ort_forward,
    ort_session,
    torch_forward,
    torch_threads,
)
from core.pruning.masked import convert_to_masked
from core.pruning.structured import ChannelPruning, rebuild_pruned

ARCHS = ("vgg16_bn", "resnet18")
KEEP = ("0.5", "0.25")
BATCHES = (1, 64)
SHAPE = (3, 32, 32)


def pruned(arch: str, dense: torch.nn.Module, k: float) -> torch.nn.Module:
    """The channel-pruned, rebuilt network at keep ``k`` (scaled channel scores of ``dense``)."""
    model = convert_to_masked(create_model(arch, num_classes=10)).eval()
    model.load_state_dict(dense.state_dict(), strict=False)  # weights; scores/mask/keep stay fresh
    x = torch.rand(2, *SHAPE)
    cp = ChannelPruning(model, x)
    cp.init_scores(model, "scaled")
    cp.set_keep(k)
    cp.refresh(model)
    cp.finalize(model)
    small, _ = rebuild_pruned(model, x)
    return small.eval()


def bench_arch(arch: str, folder: Path, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    dense = create_model(arch, num_classes=10).eval()
    nets = {"dense": dense}
    t0 = time.perf_counter()
    for k in KEEP:
        nets[k] = pruned(arch, dense, float(k))
    x1 = torch.rand(1, *SHAPE)
    for name, net in nets.items():
        print(
            f"{arch} {name:>5}: {count_params(net) / 1e6:7.3f} M params, {count_macs(net, x1) / 1e6:8.1f} M MACs",
            flush=True,
        )
    paths = {}
    for name, net in nets.items():
        paths[name] = folder / f"{arch}-{name}.onnx"
        export_onnx(net, paths[name], x1)
    print(f"{arch}: pruned, rebuilt and exported in {time.perf_counter() - t0:.1f} s", flush=True)
    out: dict[str, dict[str, float]] = {k: {} for k in KEEP}
    with torch_threads(threads):
        for b in BATCHES:
            times = median_seconds(
                {n: torch_forward(net, b, SHAPE) for n, net in nets.items()},
                repeats=repeats,
                warmup=2,
                min_sample_s=0.05,
            )
            for k in KEEP:
                out[k][f"torch_b{b}"] = round(times["dense"] / times[k], 3)
            print(f"{arch} torch b{b}: " + ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in times.items()), flush=True)
        sessions = {n: ort_session(str(p), threads) for n, p in paths.items()}
        for b in BATCHES:
            times = median_seconds(
                {n: ort_forward(s, b, SHAPE) for n, s in sessions.items()}, repeats=repeats, warmup=2, min_sample_s=0.05
            )
            for k in KEEP:
                out[k][f"ort_b{b}"] = round(times["dense"] / times[k], 3)
            print(f"{arch} ort   b{b}: " + ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in times.items()), flush=True)
    return {k: {key: out[k][key] for key in ("torch_b1", "torch_b64", "ort_b1", "ort_b64")} for k in KEEP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    parser.add_argument("--repeats", type=int, default=7, help="timed samples per network (median)")
    parser.add_argument("--arch", action="append", choices=ARCHS, help="only these architectures")
    args = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or ARCHS:
            result[arch] = bench_arch(arch, Path(tmp), args.threads, args.repeats)
    for arch, per_k in result.items():
        for k, ratios in per_k.items():
            target = 3.0 if k == "0.25" else 1.7
            verdict = "ok" if min(ratios.values()) >= target else "BELOW TARGET"
            print(
                f"{arch} keep {k}: "
                + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items())
                + f"  (target >= {target}: {verdict})"
            )
    if args.json:
        print(json.dumps(result, sort_keys=False))


if __name__ == "__main__":
    main()
