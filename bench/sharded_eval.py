"""Wall time of a job's final evaluation on 1 process and sharded over N data-parallel ranks (gloo on the
CPU, NCCL with ``--device cuda``), as a ratio measured in one run, and whether every number is the same.

A short TRADES pretrain of ``cnn_small_mnist`` on ``mnist5k`` (one process, not timed) gives one network;
then the same evaluation-only job (that network as its starting weights, no training stage) runs with
``resources.processes`` 1 and N (``resources.gpus`` on CUDA), so both evaluate the very same weights;
the figure is each run's ``evaluate`` stage from the report's timings and its per-attack times.
Every metric of the two reports must be equal (the sharded evaluation is bit-identical to one process,
``tests/core/pipeline/test_sharded_evaluation.py``); the script says so or lists the differences.

    python bench/sharded_eval.py --ranks 2 --samples 1000 --pgd-steps 20            # CPU, gloo
    python bench/sharded_eval.py --ranks 2 --samples 1000 --autoattack-samples 200  # + AutoAttack

The 1-process run uses ``--threads`` CPU threads (default 1) and the ranks share them out, at least one
each (``core.pipeline.distributed``): with the default, the ratio is the data-parallel scaling of the
evaluation with one core per rank.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.pipeline.runner import run_job
from core.spec import load_spec


def _spec(args: argparse.Namespace, ranks: int, weights: Path | None) -> dict[str, Any]:
    resources: dict[str, Any] = {"gpus": ranks} if args.device == "cuda" else {"processes": ranks}
    model: dict[str, Any] = {"arch": "cnn_small_mnist"}
    pretrain: dict[str, Any] | None = {"epochs": 1, "lr": 0.05}
    if weights is not None:
        model.update(checkpoint=str(weights))  # format: auto (our compressed file)
        pretrain = None
    return {
        "seed": 0,
        "device": args.device,
        "model": model,
        "dataset": {"name": "mnist5k", "max_train_samples": 512, "batch_size": 64, "test_batch_size": 100},
        "objective": {"type": "trades", "eps": 0.1, "step_size": 0.02, "steps": 2, "beta": 6.0},
        "pruning": {"methods": ["hydra"], "k": [0.1]},
        "stages": {"pretrain": pretrain, "prune": None, "finetune": None},
        "evaluation": {
            "max_samples": args.samples,
            "pgd_steps": args.pgd_steps,
            "pgd_restarts": 1,
            "pgd_smooth_relu": False,
            "autoattack": args.autoattack_samples > 0,
            "autoattack_max_samples": max(args.autoattack_samples, 1),
            "measure_latency": False,
        },
        "export": {"formats": ["compressed"]},
        "resources": resources,
    }


def _run(args: argparse.Namespace, ranks: int, weights: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = run_job(load_spec(_spec(args, ranks, weights)), Path(out))
        wall = time.perf_counter() - t0
    dense = next(iter(report["variants"].values()))
    timings = dense["timings"]
    return {
        "ranks": ranks,
        "job_s": round(wall, 2),
        "evaluate_s": round(timings["stages"].get("evaluate", float("nan")), 2),
        "attacks_s": {k: round(v, 2) for k, v in timings["attacks"].items()},
        "metrics": dense["metrics"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000, help="test samples of benign accuracy and PGD")
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--autoattack-samples", type=int, default=0, help="0: no AutoAttack")
    parser.add_argument("--threads", type=int, default=1, help="the caller's CPU threads (shared by the ranks)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as trained:
        run_job(load_spec(_spec(args, 1, None)), Path(trained))
        weights = Path(trained) / "dense.compressed.safetensors"
        one = _run(args, 1, weights)
        many = _run(args, args.ranks, weights)
    differ = {k: (v, many["metrics"].get(k)) for k, v in one["metrics"].items() if many["metrics"].get(k) != v}
    result = {
        "device": args.device,
        "torch": torch.__version__,
        "one_process": one,
        "sharded": many,
        "evaluate_speedup": round(one["evaluate_s"] / many["evaluate_s"], 3) if many["evaluate_s"] else None,
        "metrics_identical": not differ,
        "metrics_differing": differ,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(
        f"final evaluation on {args.device}: {args.samples} samples, PGD-{args.pgd_steps}, "
        f"AutoAttack on {args.autoattack_samples}"
    )
    for run in (one, many):
        attacks = ", ".join(f"{k} {v:.2f}s" for k, v in run["attacks_s"].items())
        print(
            f"  {run['ranks']} rank(s): evaluate {run['evaluate_s']:.2f} s ({attacks}); whole job {run['job_s']:.2f} s"
        )
    print(f"  speed-up of the evaluation: {result['evaluate_speedup']}x; every metric identical: {not differ}")
    for key, (a, b) in differ.items():
        print(f"    {key}: {a} vs {b}")


if __name__ == "__main__":
    main()
