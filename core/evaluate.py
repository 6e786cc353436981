"""Evaluation: benign accuracy, empirical robust accuracy under PGD, optional AutoAttack, certified
accuracy for the verifiable objectives, and sparsity measured from the exported weights.

Every number leaves here with the exact procedure that produced it (``attacks``/``certificates``
entries), so a report never shows a robust accuracy without saying which attack or certificate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from core.attacks import pgd
from core.data import test_loader
from core.errors import CoreError
from core.spec import JobSpec

CERTIFIED_OBJECTIVES = ("smoothing", "mixtrain", "crown_ibp")


def attack_settings(spec: JobSpec) -> dict[str, Any]:
    """The l_p ball the job is evaluated on: the evaluation's own, else the objective's, else 8/255 l_inf."""
    obj = spec.objective
    ev = spec.evaluation
    eps = ev.eps or getattr(obj, "eps", None) or 8 / 255
    norm = ev.norm or getattr(obj, "norm", None) or "linf"
    step = ev.pgd_step_size or getattr(obj, "step_size", None) or eps / 4
    return {"norm": norm, "eps": float(eps), "step_size": float(step)}


def _subset(ds: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(ds):  # type: ignore[arg-type]
        return ds
    return Subset(ds, range(limit))


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def accuracy(
    model: nn.Module,
    ds: Dataset,
    device: torch.device,
    batch_size: int,
    attack: dict[str, Any] | None = None,
) -> tuple[float, float | None]:
    """Benign accuracy and, when ``attack`` is given, accuracy on PGD examples (per-example worst
    over restarts). Model in eval mode throughout."""
    was_training = model.training
    model.eval()
    clean = robust = total = 0
    for x, y in test_loader(ds, batch_size):
        x, y = x.to(device), y.to(device)
        clean += int((_predict(model, x) == y).sum())
        if attack is not None:
            x_adv = pgd(model, x, y, loss="ce", **attack)
            robust += int((_predict(model, x_adv) == y).sum())
        total += len(y)
    model.train(was_training)
    n = max(1, total)
    return clean / n, (robust / n if attack is not None else None)


def validate(model: nn.Module, test_ds: Dataset, spec: JobSpec, device: torch.device) -> dict[str, float]:
    """Per-epoch monitoring: benign and PGD accuracy (``val_pgd_steps``, one random start) on the first
    ``val_max_samples`` test examples. Monitoring only; the report uses the last epoch, not the best."""
    ev = spec.evaluation
    attack = {**attack_settings(spec), "steps": ev.val_pgd_steps, "restarts": 1, "random_start": True}
    ds = _subset(test_ds, ev.val_max_samples)
    clean, rob = accuracy(model, ds, device, spec.dataset.test_batch_size, attack)
    return {"val_acc": clean, "val_pgd_acc": float(rob or 0.0)}


def _autoattack(model: nn.Module, ds: Dataset, spec: JobSpec, device: torch.device, num_classes: int) -> tuple[float, str]:
    """Robust accuracy under AutoAttack (torchattacks) and the name of exactly what ran.

    Standard AutoAttack's targeted APGD and FAB use the DLR loss, which is defined only for four or
    more classes; with fewer, the attacks that remain well defined run instead (APGD-CE, 100 steps,
    and Square, 5,000 queries, as in the standard suite), and the report says so."""
    try:
        import torchattacks
    except ImportError as exc:  # an optional extra
        raise CoreError(
            "autoattack_unavailable", "evaluation.autoattack", "install the 'attacks' extra (torchattacks)"
        ) from exc
    a = attack_settings(spec)
    norm = "Linf" if a["norm"] == "linf" else "L2"
    if num_classes >= 4:
        atk = torchattacks.AutoAttack(model, norm=norm, eps=a["eps"], version="standard", n_classes=num_classes,
                                      seed=spec.seed)
        name = "AutoAttack standard (torchattacks: APGD-CE, APGD-T, FAB-T, Square)"
    else:
        atk = torchattacks.MultiAttack([
            torchattacks.APGD(model, norm=norm, eps=a["eps"], steps=100, loss="ce", seed=spec.seed),
            torchattacks.Square(model, norm=norm, eps=a["eps"], n_queries=5000, seed=spec.seed),
        ])
        name = (f"AutoAttack's APGD-CE (100 steps) + Square (5000 queries) (torchattacks; the DLR-based "
                f"APGD-T and FAB-T need >= 4 classes, this task has {num_classes})")
    correct = total = 0
    for x, y in test_loader(ds, spec.dataset.test_batch_size):
        x, y = x.to(device), y.to(device)
        correct += int((_predict(model, atk(x, y)) == y).sum())
        total += len(y)
    return correct / max(1, total), name


def _tensors(ds: Dataset, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    sub = _subset(ds, limit)
    xs, ys = zip(*(sub[i] for i in range(len(sub))))  # type: ignore[arg-type]
    return torch.stack(xs), torch.as_tensor(ys)


def evaluate_variant(model: nn.Module, test_ds: Dataset, spec: JobSpec, device: torch.device) -> dict[str, Any]:
    """Final evaluation of one network: metrics plus the description of each procedure."""
    ev = spec.evaluation
    a = attack_settings(spec)
    attack = {**a, "steps": ev.pgd_steps, "restarts": ev.pgd_restarts, "random_start": True}
    ds = _subset(test_ds, ev.max_samples)
    clean, rob = accuracy(model, ds, device, spec.dataset.test_batch_size, attack)
    n = len(ds)  # type: ignore[arg-type]
    metrics: dict[str, float] = {"benign_acc": clean, "pgd_acc": float(rob or 0.0)}
    procedures: dict[str, str] = {
        "benign_acc": f"top-1 accuracy on {n} test samples",
        "pgd_acc": (
            f"PGD-{ev.pgd_steps} ({a['norm']}, eps={a['eps']:.4g}, step={a['step_size']:.4g}, "
            f"{ev.pgd_restarts} random start(s), cross-entropy, per-example worst case) on {n} test samples"
        ),
    }
    if ev.autoattack:
        num_classes = int(model(torch.zeros(1, *ds[0][0].shape, device=device)).shape[1])
        metrics["autoattack_acc"], name = _autoattack(model, ds, spec, device, num_classes)
        procedures["autoattack_acc"] = f"{name}, {a['norm']} eps={a['eps']:.4g}, per-example worst case, on {n} test samples"
    if spec.objective.type in CERTIFIED_OBJECTIVES:
        from core.objectives_certified import evaluate_certified

        x, y = _tensors(test_ds, ev.certify_max_samples)
        cert = evaluate_certified(model, spec.objective, (x.to(device), y.to(device)), ev)
        procedures.update(cert.pop("procedures", {}) if isinstance(cert.get("procedures"), dict) else {})
        metrics.update({k: v for k, v in cert.items() if isinstance(v, (int, float))})
        return {"metrics": metrics, "procedures": procedures, "certification": cert, "n_test": n}
    return {"metrics": metrics, "procedures": procedures, "n_test": n}


def sparsity_from_export(path: Path, masked_names: list[str]) -> dict[str, Any]:
    """Per-layer and total sparsity counted from the tensors stored in a compressed artifact,
    not from the spec: what a user downloads is what is measured."""
    from core.export import load_compressed

    state, _meta = load_compressed(path)
    wanted = set(masked_names)
    layers: dict[str, dict[str, float]] = {}
    zeros = total = 0
    for key, tensor in state.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        if layer is None or (layer not in wanted and f"net.{layer}" not in wanted):
            continue
        n = tensor.numel()
        nnz = int(torch.count_nonzero(tensor))
        layers[layer] = {"n": n, "nnz": nnz, "sparsity": 1 - nnz / n}
        zeros += n - nnz
        total += n
    return {"total": zeros / max(1, total), "prunable_params": total, "kept_params": total - zeros, "layers": layers}
