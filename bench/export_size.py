"""How close the compressed artifact comes to the information bound, and how fast it encodes/decodes.

VGG16-BN (CIFAR, 15.3 M parameters) from random weights, masked with the scaled score init (the
magnitude mask) at k = 0.1, 0.05, 0.01 (90/95/99% sparsity). For each: compressed bytes, the bound
of ``core.io.export.information_bound_bytes``, their ratio (target <= 1.20), and the seconds to export
(encode + write) and to load (read + decode), best of ``--repeat``. ``--json`` ends the output with one JSON line:
``{"ratios": {"0.9": r, "0.95": r, "0.99": r}, ...}``.

    python bench/export_size.py [--arch vgg16_bn] [--json]
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

from core.io.export import export_compressed, information_bound_bytes, load_compressed
from core.models.zoo import create_model
from core.pruning.masked import convert_to_masked, init_scores, set_keep_fraction

KEEP = (0.1, 0.05, 0.01)


def measure(arch: str, k: float, folder: Path, repeat: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = convert_to_masked(create_model(arch, num_classes=10)).eval()
    init_scores(model, "scaled")
    set_keep_fraction(model, k)
    path = folder / f"{arch}-k{k}.safetensors"
    encode_s = decode_s = float("inf")
    for _ in range(repeat):  # best of `repeat`: the machine is shared, the minimum is the code's cost
        t0 = time.perf_counter()
        info = export_compressed(model, path, {"arch": arch, "kwargs": {"num_classes": 10}, "k": k})
        encode_s = min(encode_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        load_compressed(path)
        decode_s = min(decode_s, time.perf_counter() - t0)
    bound = information_bound_bytes(model)
    dense = sum(
        t.numel() * t.element_size()
        for key, t in model.net.state_dict().items()
        if not key.endswith((".scores", ".mask", ".keep"))
    )  # the unpruned float32 file
    return {
        "sparsity": round(1 - k, 4),
        "bytes": info["size"],
        "bound": bound,
        "ratio": info["size"] / bound,
        "dense_weight_bytes": dense,
        "encode_s": encode_s,
        "decode_s": decode_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16_bn")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of this many runs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in KEEP:
            row = measure(args.arch, k, Path(tmp), max(1, args.repeat))
            rows.append(row)
            print(
                f"{args.arch} sparsity {row['sparsity']:.2f}: {row['bytes']:>10,d} B  bound {row['bound']:>10,d} B  "
                f"ratio {row['ratio']:.4f}  ({row['bytes'] / row['dense_weight_bytes']:.2%} of dense)  "
                f"encode {row['encode_s']:.2f}s  decode {row['decode_s']:.2f}s"
            )
    if args.json:
        print(
            json.dumps(
                {
                    "ratios": {str(r["sparsity"]): round(r["ratio"], 4) for r in rows},
                    "bytes": {str(r["sparsity"]): r["bytes"] for r in rows},
                    "bound": {str(r["sparsity"]): r["bound"] for r in rows},
                    "encode_s": {str(r["sparsity"]): round(r["encode_s"], 3) for r in rows},
                    "decode_s": {str(r["sparsity"]): round(r["decode_s"], 3) for r in rows},
                    "arch": args.arch,
                }
            )
        )


if __name__ == "__main__":
    main()
