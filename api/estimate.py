"""What a job spec will cost before it is submitted: forward+backward passes per stage times samples
("sample-passes"), turned into time from the training throughput measured on earlier jobs of the same
architecture (the events' timestamps: one epoch is the time between a stage's consecutive
``stage_started`` / ``epoch_finished`` events), when there is one.

The counts follow what the run does (core/pipeline/runner.py, core/objectives/, core/robust/suite/):
pretraining once, pruning and finetuning once per variant (method x k x seed), each epoch followed by
a validation on ``val_max_samples`` with ``val_pgd_steps`` of PGD; the final evaluation of every
network (dense included) with PGD (``pgd_steps`` x ``pgd_restarts``) and, when on, AutoAttack. The
per-sample passes of AutoAttack are an upper bound (its attacks stop on examples already broken).
"""

from __future__ import annotations

from typing import Any

# AutoAttack "standard": APGD-CE 100 iterations, APGD-T 9 targets x 100, FAB-T 9 x 100, Square 5,000
# queries (forward only, counted as 1/3 of a forward+backward pass); "plus" and "rand" are of that order.
AUTOATTACK_PASSES = 100 + 900 + 900 + 5000 / 3


def _n_train(spec: dict[str, Any], dataset_info: dict[str, Any]) -> tuple[int | None, int | None]:
    """Training and test samples: the caps of the spec, else the catalogue's split sizes."""
    data = spec.get("dataset") or {}
    n_train = dataset_info.get("n_train")
    n_test = dataset_info.get("n_test")
    if n_train is None and dataset_info.get("n_total"):
        test_fraction = float(data.get("test_fraction") or 0.2)
        n_test = round(dataset_info["n_total"] * test_fraction)
        n_train = dataset_info["n_total"] - n_test
    if data.get("max_train_samples"):
        n_train = min(n_train or data["max_train_samples"], data["max_train_samples"])
    if data.get("max_test_samples"):
        n_test = min(n_test or data["max_test_samples"], data["max_test_samples"])
    return n_train, n_test


def passes_per_sample(objective: dict[str, Any]) -> float:
    """Forward+backward passes one training sample costs under ``objective`` (its attack included)."""
    kind = objective.get("type")
    steps = int(objective.get("steps") or 0)
    if kind == "pgd":
        return steps + 1.0
    if kind == "trades":
        return steps + 2.0  # the attack, then the clean and the adversarial forward with one backward
    if kind == "smoothing":
        return 2.0 if objective.get("mode") == "stability" else 1.0
    if kind in ("crown_ibp", "mixtrain"):
        return 3.0  # interval and linear bounds: a few passes of the network's size
    return 1.0


def estimate(spec: dict[str, Any], dataset_info: dict[str, Any], throughput: float | None) -> dict[str, Any]:
    """The stages' sample-passes (and seconds with a measured ``throughput`` in sample-passes/s)."""
    n_train, n_test = _n_train(spec, dataset_info)
    notes: list[str] = []
    if n_train is None:
        notes.append("the dataset's size is known only once uploaded data is read; counted per 1,000 samples")
        n_train, n_test = 1000, 250
    n_test = n_test or 0
    pruning = spec.get("pruning") or {}
    seeds = len(spec.get("seeds") or []) or 1
    variants = len(pruning.get("methods") or []) * len(pruning.get("k") or []) * seeds
    evaluation = spec.get("evaluation") or {}
    val_samples = min(int(evaluation.get("val_max_samples") or n_test), n_test)
    val_passes = val_samples * (1 + int(evaluation.get("val_pgd_steps") or 0))
    stages_spec = spec.get("stages") or {}
    stages: list[dict[str, Any]] = []
    for stage, runs in (("pretrain", seeds), ("prune", variants), ("finetune", variants)):
        cfg = stages_spec.get(stage)
        if not cfg:
            continue
        per = passes_per_sample(cfg.get("objective") or spec.get("objective") or {})
        epochs = int(cfg.get("epochs") or 0)
        total = runs * epochs * (n_train * per + val_passes)
        stages.append(
            {
                "stage": stage,
                "runs": runs,
                "epochs": epochs,
                "samples": n_train,
                "passes_per_sample": per,
                "sample_passes": float(total),
            }
        )
    networks = variants + seeds  # every variant and the dense network of each seed
    eval_n = min(int(evaluation.get("max_samples") or n_test), n_test)
    per_eval = 1 + int(evaluation.get("pgd_steps") or 0) * int(evaluation.get("pgd_restarts") or 1)
    eval_total: float = networks * eval_n * per_eval
    if evaluation.get("autoattack"):
        aa_n = min(int(evaluation.get("autoattack_max_samples") or n_test), n_test)
        eval_total += networks * aa_n * AUTOATTACK_PASSES
        notes.append(f"AutoAttack on {aa_n} samples per network counted at its upper bound")
    stages.append(
        {
            "stage": "evaluate",
            "runs": networks,
            "epochs": 1,
            "samples": eval_n,
            "passes_per_sample": float(per_eval),
            "sample_passes": float(eval_total),
        }
    )
    total = sum(s["sample_passes"] for s in stages)
    if throughput:
        for s in stages:
            s["seconds"] = s["sample_passes"] / throughput
    return {
        "stages": stages,
        "total_sample_passes": total,
        "seconds": total / throughput if throughput else None,
        "notes": notes,
    }


def epoch_sample_passes(spec: dict[str, Any], dataset_info: dict[str, Any], stage: str) -> float | None:
    """Sample-passes of one training epoch of ``stage`` under ``spec`` (its validation included)."""
    n_train, n_test = _n_train(spec, dataset_info)
    if n_train is None:
        return None
    cfg = (spec.get("stages") or {}).get(stage) or {}
    per = passes_per_sample(cfg.get("objective") or spec.get("objective") or {})
    evaluation = spec.get("evaluation") or {}
    val_samples = min(int(evaluation.get("val_max_samples") or (n_test or 0)), n_test or 0)
    return n_train * per + val_samples * (1 + int(evaluation.get("val_pgd_steps") or 0))
