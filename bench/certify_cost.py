"""What certification costs relative to a plain forward pass, on cnn_large_cifar at batch 64.

- ``ibp_over_forward``: one IBP bound pass of the margin specification (folded into the last layer)
  over the time of one forward pass (target <= 2.5: IBP is two passes, centre and radius).
- ``crown_over_forward``: one CROWN-IBP pass (IBP, then CROWN backward with K-1 = 9 specification rows)
  over one forward pass (about K-1 transposed passes: expected well above IBP).
- ``smoothing_over_forward``: noisy samples per second through ``Smooth``'s sampling loop (in-place
  noise, argmax, class counts) over images per second of a plain forward pass, both at batch 64
  (target >= 0.9: the loop should cost little beyond the forward passes).

All in one process, ``torch.set_num_threads(2)``, inference mode. The tasks run interleaved, one
round after another; each ratio is the median over rounds of the ratio *within* a round (tasks
timed seconds apart), which holds up on a machine shared with other jobs. Times of the fastest
round are printed beside them.
Usage: ``python bench/certify_cost.py [--json] [--repeats N]``; with ``--json`` the last line is the
JSON object of the three ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.certify.bounds import crown_ibp_bounds, ibp_bounds, margin_spec
from core.certify.smoothing import Smooth
from core.models.zoo import create_model

BATCH = 64
EPS = 0.007
SIGMA = 0.25


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the ratios")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--smoothing-batches", type=int, default=4, help="batches of 64 per smoothing timing")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = create_model("cnn_large_cifar").eval()
    x = torch.rand(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    C = margin_spec(y, 10)
    smooth = Smooth(model, num_classes=10, sigma=SIGMA, generator=torch.Generator().manual_seed(0))
    n_noisy = BATCH * args.smoothing_batches

    tasks = {
        "forward": lambda: model(x),
        "ibp": lambda: ibp_bounds(model, x, EPS, C),
        "forward_b": lambda: model(x),  # each ratio's two timings are taken back to back
        "crown_ibp": lambda: crown_ibp_bounds(model, x, EPS, C),
        "forward_x": lambda: [model(x) for _ in range(args.smoothing_batches)],
        "smoothing": lambda: smooth._sample_noise(x[0], n_noisy, BATCH),
    }
    times: dict[str, list[float]] = {name: [] for name in tasks}
    with torch.inference_mode():
        for fn in tasks.values():  # warm-up
            fn()
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every task alike
            for name, fn in tasks.items():
                times[name].append(_timed(fn))
    best = {name: min(ts) for name, ts in times.items()}

    def paired(num: str, den: str) -> float:
        return round(statistics.median(a / b for a, b in zip(times[num], times[den])), 3)

    result = {
        "ibp_over_forward": paired("ibp", "forward"),
        "crown_over_forward": paired("crown_ibp", "forward_b"),
        # same number of images in both: (n / t_smoothing) / (n / t_forward) = t_forward / t_smoothing
        "smoothing_over_forward": paired("forward_x", "smoothing"),
    }
    detail = {
        "forward_ms": round(1e3 * min(best["forward"], best["forward_b"]), 2),
        "ibp_ms": round(1e3 * best["ibp"], 2),
        "crown_ibp_ms": round(1e3 * best["crown_ibp"], 2),
        "forward_images_per_s": round(BATCH * args.smoothing_batches / best["forward_x"], 1),
        "smoothing_samples_per_s": round(n_noisy / best["smoothing"], 1),
        "batch": BATCH,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps(detail))
        print(json.dumps(result))
    else:
        for key, value in {**detail, **result}.items():
            print(f"{key:>26}: {value}")
    return result


if __name__ == "__main__":
    main()
