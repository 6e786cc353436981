"""The Fashion-MNIST pruning benchmark (issue 20): specs, runs, per-seed merge, one summary table.

Every job of one seed starts from the same pretrained network: the first job (``unstructured-uniform``)
pretrains it and exports it (``dense.dense.safetensors``); every other job loads that file
(``model.checkpoint``, ``stages.pretrain: null``), so the methods differ only in how they prune. Each
job is one ``hydra-compress run``; a seed's folders are merged over the seeds with
``scripts/merge_seed_runs.py`` (mean ± std, each seed's numbers); ``summary.md``/``summary.json``
collect every network of every job.

Jobs (``--profile full``, per seed):

* unstructured at ``k`` 0.1 / 0.05 / 0.01 (90 / 95 / 99% pruned), TRADES l_inf 0.1:
  ``unstructured-uniform`` (HYDRA as published and LWM), ``unstructured-global`` (HYDRA global),
  ``unstructured-learned`` (HYDRA learned, HARP-style rates), each ``-sharp`` again with
  ``pruning.score_sharpness`` (LWM trains no scores: it is in the uniform job only);
* channel at 50% / 25% of the MACs (``pruning.budget: macs``): ``channel-uniform`` (L1-filter = LWM at
  channel granularity, and channel-HYDRA, each at the uniform channel keep whose MACs are the target),
  ``channel-learned`` (+ ``-sharp``): HYDRA with learned per-group rates under the MAC budget.

Training budget, the same for every method (the profile's numbers are written into every spec and
the summary): ``full``: ``cnn_large_mnist``, a seeded 10,000-image training subset, batch 128, epochs
pretrain 20 / prune 10 / finetune 10, SGD lr 0.05 / 0.1 / 0.01 cosine; evaluation: benign on the whole
10,000-image test split, PGD-50 there too, PGD + AutoAttack (standard) on a seeded class-stratified
sample of 2,000 (``robust_acc`` = the per-example worst case over the suite, with its 95% interval).
``slice``: what 30 minutes of one CPU core afford (stated in the summary): ``cnn_small_mnist``,
6,000 training images, epochs 8 / 4 / 4, benign and PGD-20 (plus the smooth-ReLU PGD-20) on a seeded
class-stratified 2,000-image test sample, **no AutoAttack** (it alone took over 7 minutes per network
on 300 images on a shared core), 99% only.

    python bench/fashion_benchmark.py --out runs/fashion --seeds 0 1 2             # the whole table
    python bench/fashion_benchmark.py --out runs/fashion-slice --profile slice --seeds 0 \\
        --jobs unstructured-uniform unstructured-uniform-sharp unstructured-learned unstructured-learned-sharp
    python bench/fashion_benchmark.py --out runs/fashion --dry-run                  # write the specs only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE_JOB = "unstructured-uniform"
RHO = 0.1  # score_sharpness.rho (scope layer: 10% of each layer's score norm); not tuned

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "arch": "cnn_large_mnist",
        "max_train_samples": 10_000,
        "epochs": (20, 10, 10),
        "k_unstructured": [0.1, 0.05, 0.01],
        "k_macs": [0.5, 0.25],
        "evaluation": {
            "pgd_steps": 50,
            "max_samples": None,  # benign (and PGD-50) on the whole test split
            "autoattack": True,
            "autoattack_max_samples": 2000,
            "val_pgd_steps": 5,
            "val_max_samples": 512,
            "measure_latency": True,
        },
    },
    "slice": {
        "arch": "cnn_small_mnist",
        "max_train_samples": 6_000,
        "epochs": (8, 4, 4),
        "k_unstructured": [0.01],
        "k_macs": [0.25],
        "evaluation": {
            # AutoAttack (FAB-T, Square on the robust points) took > 7 min per network on a shared core
            # even on 300 images: the slice's robust number is PGD-20 + smooth-ReLU PGD-20 on 2,000
            "pgd_steps": 20,
            "max_samples": 2000,
            "autoattack": False,
            "val_pgd_steps": 3,
            "val_max_samples": 256,
            "measure_latency": False,
        },
    },
}


def job_pruning(name: str, profile: dict[str, Any]) -> dict[str, Any]:
    """The ``pruning`` section of one job, from its name (``<granularity>-<allocation>[-sharp]``)."""
    granularity, allocation, *rest = name.split("-")
    sharp = rest == ["sharp"]
    if granularity == "unstructured":
        methods = ["hydra", "lwm"] if allocation == "uniform" and not sharp else ["hydra"]
        pruning: dict[str, Any] = {"k": profile["k_unstructured"]}
    else:
        methods = ["hydra", "lwm"] if allocation == "uniform" else ["hydra"]
        pruning = {"k": profile["k_macs"], "budget": "macs"}
    pruning.update(methods=methods, allocation=allocation, granularity=granularity)
    if sharp:
        pruning["score_sharpness"] = {"rho": RHO, "scope": "layer"}
    return pruning


JOBS = [
    f"{g}-{a}{s}"
    for g, allocations in (("unstructured", ("uniform", "global", "learned")), ("channel", ("uniform", "learned")))
    for a in allocations
    for s in ("", "-sharp")
    if not (g == "channel" and a == "uniform" and s)  # channel-uniform: L1 and channel-HYDRA, no sharp job
]


def make_spec(name: str, seed: int, profile: dict[str, Any], base_dense: Path | None) -> dict[str, Any]:
    pretrain, prune, finetune = profile["epochs"]
    spec: dict[str, Any] = {
        "name": f"fashion-{name}",
        "seed": seed,
        "device": "auto",
        "model": {"arch": profile["arch"]},
        "dataset": {"name": "fashion_mnist", "batch_size": 128, "max_train_samples": profile["max_train_samples"]},
        "objective": {"type": "trades", "norm": "linf", "eps": 0.1, "step_size": 0.02, "steps": 10, "beta": 6.0},
        "pruning": job_pruning(name, profile),
        "stages": {
            "pretrain": {"epochs": pretrain, "lr": 0.05},
            "prune": {"epochs": prune, "lr": 0.1},
            "finetune": {"epochs": finetune, "lr": 0.01},
        },
        "evaluation": {**copy.deepcopy(profile["evaluation"]), "sample_seed": 0, "pgd_restarts": 1},
        "export": {"formats": ["compressed", "dense"] if name == BASE_JOB else ["compressed"]},
    }
    if name != BASE_JOB:
        assert base_dense is not None
        spec["model"].update(checkpoint=str(base_dense), checkpoint_format="safetensors")
        spec["stages"]["pretrain"] = None
    return spec


def run_job(spec_path: Path, out: Path, log: Path) -> float:
    """``hydra-compress run`` (resumed when a checkpoint is there); seconds taken."""
    if (out / "report.json").exists():
        return 0.0
    cmd = [sys.executable, "-m", "launch.cli", "run", str(spec_path), "--out", str(out)]
    if (out / "checkpoint.pt").exists():
        cmd.append("--resume")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.time()
    with log.open("a") as fh:
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return time.time() - t0


def summarise(folder: Path, job: str) -> list[dict[str, Any]]:
    """One row per network of a (merged) run folder: benign and robust accuracy (mean ± std over seeds)."""
    report = json.loads((folder / "report.json").read_text())
    robust = report["headline_robust_metric"]
    rows = []
    if report.get("aggregate"):
        for agg in report["aggregate"]:
            rows.append(
                {
                    "job": job,
                    "variant": agg["variant"],
                    "method": agg["method"],
                    "k": agg["k"],
                    "seeds": agg["seeds"],
                    "benign": agg.get("benign_acc"),
                    "robust": agg.get(robust),
                }
            )
    else:
        for row in report["comparison"]:
            one = {"mean": None, "std": 0.0, "n_seeds": 1}
            rows.append(
                {
                    "job": job,
                    "variant": row["variant"],
                    "method": row["method"],
                    "k": row["k"],
                    "seeds": [row.get("seed")],
                    "benign": {**one, "mean": row.get("benign_acc")},
                    "robust": {**one, "mean": row.get(robust)},
                    "ci95": row.get("ci95", {}).get(robust),
                }
            )
    return rows


def _fmt(v: dict[str, Any] | None) -> str:
    if not v or v.get("mean") is None:
        return "–"
    return f"{100 * v['mean']:.2f} ± {100 * v['std']:.2f}" if v.get("n_seeds", 1) > 1 else f"{100 * v['mean']:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=JOBS, help=f"default: all ({', '.join(JOBS)})")
    parser.add_argument("--dry-run", action="store_true", help="write the specs, run nothing")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    jobs = [BASE_JOB] + [j for j in args.jobs if j != BASE_JOB]  # the base job pretrains the shared network
    out = args.out.resolve()
    timings: dict[str, float] = {}
    for seed in args.seeds:
        base_dense = out / "runs" / BASE_JOB / f"s{seed}" / "dense.dense.safetensors"
        for job in jobs:
            spec_path = out / "specs" / f"s{seed}" / f"{job}.yaml"
            spec_path.parent.mkdir(parents=True, exist_ok=True)
            spec_path.write_text(yaml.safe_dump(make_spec(job, seed, profile, base_dense), sort_keys=False))
            if args.dry_run:
                continue
            run_out = out / "runs" / job / f"s{seed}"
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed}: {job}", flush=True)
            timings[f"{job}/s{seed}"] = run_job(spec_path, run_out, out / "log.txt")
    if args.dry_run:
        print(f"specs under {out / 'specs'}")
        return 0
    rows: list[dict[str, Any]] = []
    for job in jobs:
        folders = [out / "runs" / job / f"s{seed}" for seed in args.seeds]
        if len(folders) > 1:
            merged = out / "merged" / job
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "merge_seed_runs.py"),
                    *map(str, folders),
                    "--out",
                    str(merged),
                ],
                check=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            rows += summarise(merged, job)
        else:
            rows += summarise(folders[0], job)
    pretrain, prune, finetune = profile["epochs"]
    budget = (
        f"profile {args.profile}: {profile['arch']}, Fashion-MNIST, {profile['max_train_samples']} training images "
        f"(seeded subset), epochs pretrain {pretrain} / prune {prune} / finetune {finetune}, TRADES l_inf 0.1 "
        f"(10 steps of 0.02); evaluation {json.dumps(profile['evaluation'])}; seeds {args.seeds}; "
        f"score_sharpness rho {RHO} (scope layer)"
    )
    lines = [
        f"Budget: {budget}",
        "",
        "| job | network | k | benign % | robust % (worst case) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['job']} | {r['variant']} | {r['k']} | {_fmt(r['benign'])} | {_fmt(r['robust'])} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"budget": budget, "rows": rows, "seconds": timings}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
