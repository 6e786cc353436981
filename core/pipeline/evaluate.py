"""Evaluation: benign accuracy, empirical robust accuracy as the per-example worst case over our PGD
and the reference AutoAttack, certified accuracy for the verifiable objectives, and sparsity measured
from the exported weights.

Every number leaves here with the exact procedure that produced it (``procedures``), the sample it
was measured on (``samples``: size and count per class; every capped evaluation is a seeded,
class-stratified sample, see ``core.data.sampling``) and its 95% Clopper-Pearson interval (``intervals``,
``counts``), so a report never shows a robust accuracy without saying which attack, on what, and how
sure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from core.config import EPS_8_255
from core.data.datasets import test_loader
from core.data.sampling import dataset_labels, describe_sample, stratified_order, stratified_subset
from core.errors import RunCanceled
from core.objectives import build_objective
from core.pipeline.stats import INTERVAL_METHOD, clopper_pearson
from core.robust.attacks import pgd
from core.robust.suite import ATTACKS, MASKING_MARGIN, autoattack_flags, clean_flags, masking_check, pgd_flags
from core.spec import JobSpec


def attack_settings(spec: JobSpec) -> dict[str, Any]:
    """The l_p ball the job is evaluated on: the evaluation's own, else the objective's, else 8/255 l_inf."""
    ball = spec.objective.ball()
    ev = spec.evaluation
    eps = ev.eps or (ball.eps if ball else EPS_8_255)
    norm = ev.norm or (ball.norm if ball else "linf")
    step = ev.pgd_step_size or (ball.step_size if ball and ball.step_size else eps / 4)
    return {"norm": norm, "eps": float(eps), "step_size": float(step)}


def sample_seed(spec: JobSpec) -> int:
    """The seed of every evaluation sample of the job (one for all of a multi-seed job's seeds)."""
    return spec.evaluation.sample_seed if spec.evaluation.sample_seed is not None else spec.seed


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
    """Per-epoch monitoring: benign and PGD accuracy (``val_pgd_steps``, one random start) on a seeded
    class-stratified sample of ``val_max_samples`` test examples. Monitoring only; the report uses the
    last epoch, not the best."""
    ev = spec.evaluation
    attack = {**attack_settings(spec), "steps": ev.val_pgd_steps, "restarts": 1, "random_start": True}
    ds = stratified_subset(test_ds, ev.val_max_samples, sample_seed(spec))
    clean, rob = accuracy(model, ds, device, spec.dataset.test_batch_size, attack)
    return {"val_acc": clean, "val_pgd_acc": float(rob or 0.0)}


def _tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))  # type: ignore[arg-type]
    return torch.stack(xs), torch.as_tensor(ys)


def _sample_indices(test_ds: Dataset, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices into ``test_ds`` of the stratified sample of ``limit`` (all when None)."""
    n = len(test_ds)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(stratified_order(dataset_labels(test_ds), seed)[:limit])


class _Tally:
    """Metrics with their procedures, counts and 95% intervals."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.procedures: dict[str, str] = {}
        self.counts: dict[str, list[int]] = {}
        self.intervals: dict[str, list[float]] = {}

    def add(self, key: str, correct: int, n: int, procedure: str) -> None:
        self.metrics[key] = correct / n if n else 0.0
        self.counts[key] = [int(correct), int(n)]
        self.intervals[key] = list(clopper_pearson(int(correct), int(n)))
        self.procedures[key] = procedure

    def add_flags(self, key: str, flags: torch.Tensor, procedure: str) -> None:
        self.add(key, int(flags.sum()), int(flags.numel()), procedure)


def evaluate_variant(
    model: nn.Module,
    test_ds: Dataset,
    spec: JobSpec,
    device: torch.device,
    num_classes: int | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Final evaluation of one network: metrics, the procedure, sample and interval of each.

    ``should_cancel`` (the run's callback) is asked before each attack and the certification, so a
    cancel or shutdown during an evaluation that takes many minutes (AutoAttack) stops it there with
    :class:`RunCanceled` instead of after it."""

    def stop_if_canceled(what: str) -> None:
        if should_cancel is not None and should_cancel():
            raise RunCanceled(f"canceled during the final evaluation, before {what}")

    ev = spec.evaluation
    a = attack_settings(spec)
    seed = sample_seed(spec)
    bs = spec.dataset.test_batch_size
    full = len(test_ds)  # type: ignore[arg-type]
    big = _sample_indices(test_ds, ev.max_samples, seed)
    ds = Subset(test_ds, big.tolist()) if len(big) < full else test_ds
    x, y = _tensors(ds)
    x, y = x.to(device), y.to(device)
    samples = {"final": describe_sample(ds, full, seed)}
    on = f"on the 'final' sample ({len(big)} test samples)"
    was_training = model.training
    model.eval()
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
    tally = _Tally()
    clean = clean_flags(model, x, y, bs)
    tally.add_flags("benign_acc", clean, f"top-1 accuracy {on}")
    checks: dict[str, Any] = {}
    objective = build_objective(spec.objective)
    if objective.attacked:
        ball = f"{a['norm']} eps={a['eps']:.4g}"
        stop_if_canceled("PGD")
        torch.manual_seed(seed)
        pgd_settings = {
            "norm": a["norm"],
            "eps": a["eps"],
            "step_size": a["step_size"],
            "steps": ev.pgd_steps,
            "restarts": ev.pgd_restarts,
            "batch_size": bs,
        }
        flags_pgd = pgd_flags(model, x, y, **pgd_settings)
        tally.add_flags(
            ATTACKS.get("pgd").metric,
            flags_pgd,
            (
                f"PGD-{ev.pgd_steps} (ours; {ball}, step={a['step_size']:.4g}, {ev.pgd_restarts} random "
                f"start(s), cross-entropy, per-example worst case) {on}"
            ),
        )
        worst = clean & flags_pgd
        robust_on, robust_attacks = on, [f"PGD-{ev.pgd_steps}"]
        if ev.pgd_smooth_relu:
            stop_if_canceled("the smooth-ReLU PGD")
            flags_smooth = pgd_flags(model, x, y, **pgd_settings, relu_tau=ev.pgd_smooth_tau)
            tally.add_flags(
                ATTACKS.get("pgd_smooth").metric,
                flags_smooth,
                (
                    f"PGD-{ev.pgd_steps} as pgd_acc but through the smooth ReLU backward (sigmoid(x/{ev.pgd_smooth_tau:g}), a "
                    f"BPDA-style surrogate that sees past inactive ReLUs; forward unchanged) {on}"
                ),
            )
            worst &= flags_smooth
            robust_attacks.append(f"PGD-{ev.pgd_steps} smooth-ReLU")
        if ev.autoattack:
            stop_if_canceled("AutoAttack")
            small = _sample_indices(test_ds, min(ev.autoattack_max_samples or full, len(big)), seed)
            pos = torch.as_tensor(np.searchsorted(big, small), device=x.device)
            sub_ds = Subset(test_ds, small.tolist()) if len(small) < full else test_ds
            samples["robust"] = describe_sample(sub_ds, full, seed)
            robust_on = (
                f"on the 'robust' sample ({len(small)} test samples, nested in the 'final' one)"
                if len(small) < len(big)
                else on
            )
            aa, description = autoattack_flags(
                model,
                x[pos],
                y[pos],
                clean[pos],
                norm=a["norm"],
                eps=a["eps"],
                num_classes=num_classes,
                seed=seed,
                batch_size=bs,
                version=ev.autoattack_version,
            )
            worst = worst[pos]
            per_attack = {"pgd": float(flags_pgd[pos].float().mean())}
            if ev.pgd_smooth_relu:
                per_attack["pgd_smooth"] = float(flags_smooth[pos].float().mean())
            aa_all = clean[pos].clone()
            for attack, f in aa.items():
                key = ATTACKS.get(attack).metric
                tally.add_flags(key, f, f"{attack.upper()} alone, from {description}; {ball} {robust_on}")
                per_attack[attack] = float(f.float().mean())
                aa_all &= f
                worst &= f
                robust_attacks.append(attack.upper())
            tally.add_flags(
                "autoattack_acc", aa_all, f"{description}; {ball}, per-example worst case over its attacks {robust_on}"
            )
            checks["gradient_masking"] = masking_check(per_attack)
        tally.add_flags(
            "robust_acc",
            worst,
            (
                f"per-example worst case over {', '.join(robust_attacks)} ({ball}): an example counts only if it "
                f"is classified correctly clean and under every attack, {robust_on}"
            ),
        )
    result: dict[str, Any] = {
        "samples": samples,
        "checks": checks,
        "n_test": len(big),
        "interval_method": INTERVAL_METHOD,
    }
    if objective.certifies:
        stop_if_canceled("the certification")
        cert_idx = _sample_indices(test_ds, ev.certify_max_samples, seed)
        cert_ds = Subset(test_ds, cert_idx.tolist()) if len(cert_idx) < full else test_ds
        samples["certified"] = describe_sample(cert_ds, full, seed)
        xc, yc = _tensors(cert_ds)
        cert = objective.certify(model, xc.to(device), yc.to(device), ev, seed)
        assert cert is not None
        procedures = cert.pop("procedures", {}) if isinstance(cert.get("procedures"), dict) else {}
        n_cert = len(cert_idx)
        for key, value in cert.items():
            if not isinstance(value, (int, float)):
                continue
            if key in procedures:  # a fraction of the certified sample: count and interval
                tally.add(key, int(round(float(value) * n_cert)), n_cert, f"{procedures[key]} (the 'certified' sample)")
            else:
                tally.metrics[key] = float(value)
        _soundness_check(tally.metrics, checks)
        result["certification"] = cert
    model.train(was_training)
    result.update(metrics=tally.metrics, procedures=tally.procedures, counts=tally.counts, intervals=tally.intervals)
    return result


def _soundness_check(metrics: dict[str, float], checks: dict[str, Any]) -> None:
    """A certificate can never exceed what an attack leaves standing (on comparable samples)."""
    empirical = metrics.get("robust_acc")
    verified = {k: v for k, v in metrics.items() if k.startswith("verified_acc")}
    if empirical is None or not verified:
        return
    worst = max(verified, key=verified.__getitem__)
    checks["certificate_below_attack"] = {
        "ok": bool(verified[worst] <= empirical + MASKING_MARGIN),
        "verified": verified[worst],
        "empirical_robust": empirical,
        "metric": worst,
        "rule": "a verified accuracy above the empirical robust accuracy (beyond sampling noise) would "
        "mean an unsound bound or a broken attack",
    }


def sparsity_from_export(path: Path, masked_names: list[str]) -> dict[str, Any]:
    """Per-layer and total sparsity counted from the tensors stored in a compressed artifact,
    not from the spec: what a user downloads is what is measured."""
    from core.io.export import load_compressed

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


def sparsity_from_channel_export(path: Path, full_sizes: dict[str, int]) -> dict[str, Any]:
    """:func:`sparsity_from_export` for a channel artifact: the stored (rebuilt, smaller) conv/linear
    weights counted against the full-width layers ``full_sizes`` (masked layer name -> weights), so a
    removed channel counts as pruned; ``stored_params`` is what the smaller file holds."""
    from core.io.export_channel import read_channel_pruned

    tensors, _meta, _widths, _shape = read_channel_pruned(path)
    layers: dict[str, dict[str, float]] = {}
    zeros = total = stored = 0
    for key, tensor in tensors.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        if layer is None or layer not in full_sizes:
            continue
        n = full_sizes[layer]
        nnz = int(torch.count_nonzero(tensor))
        name = layer.removeprefix("net.")  # as sparsity_from_export names them
        layers[name] = {"n": n, "nnz": nnz, "sparsity": 1 - nnz / n, "stored": tensor.numel()}
        zeros += n - nnz
        total += n
        stored += tensor.numel()
    return {
        "total": zeros / max(1, total),
        "prunable_params": total,
        "kept_params": total - zeros,
        "stored_params": stored,
        "layers": layers,
    }
