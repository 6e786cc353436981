"""The one place a report is built: the runner's per-variant results (plain dicts, as the checkpoint
keeps them) become :class:`~core.pipeline.report_model.VariantResult` and the
:class:`~core.pipeline.report_model.Report` (validated on the way), with every check of every network;
and a stored report of the previous format is brought to the current one (:func:`load_report`).

Imports no torch (the API loads stored reports through :func:`load_report`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from core.pipeline.report_model import (
    REPORT_FORMAT,
    AggregateRow,
    Check,
    ComparisonRow,
    Flag,
    Report,
    SeedSummary,
    VariantResult,
)
from core.vocab import DENSE

FORMAT_V2 = "hydra-compress-report/2"
CHANCE_MARGIN = 0.05  # benign accuracy within 5 points of 1/num_classes reads as "learned nothing"
DIVERGENCE_FACTOR = 10.0  # an epoch's training loss above 10x the first epoch's reads as diverged
# Raw keys a variant result carries that are not fields of VariantResult: folded into typed fields.
_FOLDED = {"attack_output"}

CHECK_RULES = {
    "gradient_masking": "a gradient-free attack beating the best gradient attack by more than 2 points",
    "certificate_below_attack": "a verified accuracy above the attacked accuracy (beyond sampling noise)",
    "onnx_parity": "onnxruntime logits that disagree with PyTorch's beyond the tolerance (the ONNX file is "
    "then not shipped)",
    "chance_accuracy": f"benign accuracy at most 1/num_classes + {100 * CHANCE_MARGIN:.0f} points (chance level)",
    "robust_above_benign": "an attacked accuracy above the benign accuracy of the same network (the smoothed "
    "classifier's certified_acc@r excepted: it is another classifier)",
    "training_diverged": f"an epoch's training loss non-finite or above {DIVERGENCE_FACTOR:g}x the first epoch's",
    "attack_warnings": "an attack library warned while it ran (e.g. AutoAttack's points with zero gradient)",
}


def _raw_checks(raw: Mapping[str, Any]) -> dict[str, Check]:
    """The checks the evaluation and export already computed, in the common :class:`Check` form."""
    checks: dict[str, Check] = {}
    for name, c in (raw.get("checks") or {}).items():
        if isinstance(c, Check):
            checks[name] = c
            continue
        if "flagged" in c and "message" in c:  # already in this form (a /3 result)
            checks[name] = Check.model_validate(c)
            continue
        details = {k: v for k, v in c.items() if k != "rule"}
        rule = c.get("rule") or CHECK_RULES.get(name, name)
        if name == "gradient_masking":
            flagged = bool(c.get("possible_gradient_masking"))
            message = (
                f"{c.get('best_gradient_free_attack')} beats the best gradient attack ({c.get('best_gradient_attack')}) "
                f"by {100 * float(c.get('gap', 0.0)):.1f} points; trust robust_acc (the worst case), not PGD alone"
                if flagged
                else c.get("reason") or "no gradient-free attack beats the gradient attacks"
            )
        elif name == "certificate_below_attack":
            flagged = not c.get("ok", True)
            message = (
                f"{c.get('metric')} {100 * float(c.get('verified', 0)):.1f}% > robust_acc "
                f"{100 * float(c.get('empirical_robust', 0)):.1f}%"
                if flagged
                else "the certificate stays below the attacked accuracy"
            )
        elif name == "onnx_parity":
            flagged = not c.get("ok", True)
            message = (
                f"ONNX export not shipped: {c.get('error') or 'logits disagree'}"
                if flagged
                else f"onnxruntime gives PyTorch's logits within {float(c.get('max_abs_diff', 0)):.2g} "
                f"(allowed {float(c.get('atol', 0)):g})"
            )
        else:
            flagged = not c.get("ok", True)
            message = str(c.get("message") or c.get("error") or ("flagged" if flagged else "passed"))
        checks[name] = Check(flagged=flagged, message=message, rule=rule, details=details)
    return checks


def _chance_check(metrics: Mapping[str, float], num_classes: int | None) -> Check | None:
    benign = metrics.get("benign_acc")
    if benign is None or not num_classes:
        return None
    chance = 1 / num_classes
    flagged = benign <= chance + CHANCE_MARGIN
    message = (
        f"benign accuracy {100 * benign:.1f}% is at chance ({100 * chance:.1f}% for {num_classes} classes): "
        "the network learned nothing; its robust numbers mean nothing"
        if flagged
        else f"benign accuracy {100 * benign:.1f}% is above chance ({100 * chance:.1f}%)"
    )
    details = {"benign_acc": benign, "chance": chance, "margin": CHANCE_MARGIN}
    return Check(flagged=flagged, message=message, rule=CHECK_RULES["chance_accuracy"], details=details)


def _robust_above_benign(metrics: Mapping[str, float]) -> Check | None:
    benign = metrics.get("benign_acc")
    if benign is None or len(metrics) < 2:
        return None
    above = {
        k: v
        for k, v in metrics.items()
        if k != "benign_acc" and not k.startswith("certified_acc") and v > benign + 1e-9
    }
    message = (
        ", ".join(f"{k} {100 * v:.1f}%" for k, v in above.items()) + f" above benign {100 * benign:.1f}%: "
        "a broken attack or a mis-sampled evaluation"
        if above
        else "no attacked accuracy above the benign one"
    )
    return Check(flagged=bool(above), message=message, rule=CHECK_RULES["robust_above_benign"], details=above)


def _diverged(training_loss: Mapping[str, list[float]]) -> Check | None:
    if not training_loss:
        return None
    bad = {}
    for stage, losses in training_loss.items():
        first = losses[0] if losses else None
        for epoch, loss in enumerate(losses, 1):
            if not math.isfinite(loss) or (
                first is not None and math.isfinite(first) and loss > DIVERGENCE_FACTOR * first
            ):
                bad[stage] = {"epoch": epoch, "loss": loss if math.isfinite(loss) else str(loss), "first": first}
                break
    message = (
        "; ".join(f"{s}: epoch {b['epoch']} loss {b['loss']} (first {b['first']:.4g})" for s, b in bad.items())
        + " (lower the learning rate)"
        if bad
        else "every epoch's training loss stayed within bounds"
    )
    return Check(flagged=bool(bad), message=message, rule=CHECK_RULES["training_diverged"], details=bad)


def _attack_warnings(output: Mapping[str, list[str]]) -> Check | None:
    said = {attack: lines for attack, lines in output.items() if lines}
    if not said:
        return None
    message = "; ".join(f"{attack}: {' | '.join(dict.fromkeys(lines))}" for attack, lines in said.items())
    return Check(flagged=True, message=message, rule=CHECK_RULES["attack_warnings"], details=said)


def build_variant(raw: Mapping[str, Any] | VariantResult, num_classes: int | None) -> VariantResult:
    """A runner's result (or a /2 report's variant) as a validated :class:`VariantResult`, with every check."""
    if isinstance(raw, VariantResult):
        return raw
    data = {k: v for k, v in raw.items() if k not in _FOLDED}
    checks = _raw_checks(raw)
    metrics = raw.get("metrics") or {}
    computed = {
        "chance_accuracy": _chance_check(metrics, num_classes),
        "robust_above_benign": _robust_above_benign(metrics),
        "training_diverged": _diverged(raw.get("training_loss") or {}),
        "attack_warnings": _attack_warnings(raw.get("attack_output") or {}),
    }
    checks.update({name: c for name, c in computed.items() if c is not None})
    data["checks"] = checks
    known = set(VariantResult.model_fields)
    extras = dict(data.pop("extras", None) or {})
    extras.update({k: data.pop(k) for k in list(data) if k not in known})
    return VariantResult.model_validate({**data, "extras": extras})


def _base(name: str, seed: int | None, multi: bool) -> str:
    suffix = f"_s{seed}"
    return name[: -len(suffix)] if multi and name.endswith(suffix) else name


def comparison_rows(variants: Mapping[str, VariantResult], multi_seed: bool = False) -> list[ComparisonRow]:
    """One row per network, dense first, then by method, decreasing k and seed."""
    rows = [
        ComparisonRow(
            variant=name,
            base=_base(name, r.seed, multi_seed),
            method=r.method,
            k=r.k,
            seed=r.seed,
            sparsity=r.sparsity.total if r.sparsity else 1.0 - r.k,
            metrics=dict(r.metrics),
            ci95=dict(r.intervals),
            bytes={fmt: art.size for fmt, art in r.artifacts.items() if fmt != "model_card"},
        )
        for name, r in variants.items()
    ]
    rows.sort(key=lambda row: (row.method != DENSE, row.method, -row.k, row.seed or 0))
    return rows


def _summary(values: dict[str, float]) -> SeedSummary:
    from core.pipeline.stats import seed_summary

    return SeedSummary.model_validate(seed_summary(values))


def aggregate_rows(rows: list[ComparisonRow]) -> list[AggregateRow]:
    """Per network (over its seeds): mean, std and each seed's value of every metric and the sparsity."""
    groups: dict[str, list[ComparisonRow]] = {}
    for row in rows:
        groups.setdefault(row.base, []).append(row)
    out = []
    for base, members in groups.items():
        metrics = list(dict.fromkeys(m for row in members for m in row.metrics))
        out.append(
            AggregateRow(
                variant=base,
                method=members[0].method,
                k=members[0].k,
                seeds=[m.seed for m in members],
                sparsity=_summary({str(m.seed): m.sparsity for m in members}),
                metrics={
                    key: _summary({str(m.seed): m.metrics[key] for m in members if key in m.metrics}) for key in metrics
                },
            )
        )
    return out


def _headline(objective_type: str, rows: list[ComparisonRow]) -> str:
    """The headline robust number: the objective's own (its certificate, for the verifiable ones),
    else the per-example worst case over every attack run, else PGD."""
    from core.objectives import objective_class

    keys = list(rows[0].metrics) if rows else []
    chosen = objective_class(objective_type).headline(keys)
    if chosen is not None:
        return chosen
    return "robust_acc" if any("robust_acc" in row.metrics for row in rows) else "pgd_acc"


def build_report(
    *,
    spec: Mapping[str, Any],
    info: Mapping[str, Any],
    results: Mapping[str, Any],
    device: str,
    attack: Mapping[str, Any],
    artifacts: Mapping[str, Any] | None = None,
    headline: str | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Report:
    """The report of a run from its spec (as JSON), dataset description, per-variant results and device."""
    from core.pipeline.stats import INTERVAL_METHOD

    num_classes = info.get("num_classes")
    variants = {name: build_variant(r, num_classes) for name, r in results.items()}
    multi = spec.get("seeds") is not None
    rows = comparison_rows(variants, multi)
    procedures: dict[str, str] = {}
    samples: dict[str, Any] = {}
    for r in variants.values():
        procedures.update(r.procedures)
        samples.update(r.samples)
    flags = [
        Flag(variant=name, check=check, message=c.message)
        for name, r in variants.items()
        for check, c in r.checks.items()
        if c.flagged
    ]
    objective = dict(spec["objective"])
    return Report(
        format=REPORT_FORMAT,
        name=spec.get("name"),
        arch=spec["model"]["arch"],
        source_graph=next((v.source_graph for v in variants.values() if v.source_graph), None),
        resources=dict(resources) if resources is not None else None,
        dataset=dict(info),  # type: ignore[arg-type]
        objective=objective,
        attack=dict(attack),  # type: ignore[arg-type]
        device=device,
        headline_robust_metric=headline or _headline(objective["type"], rows),
        comparison=rows,
        seeds=[r.seed for r in rows if r.method == DENSE and r.seed is not None] if multi else None,
        aggregate=aggregate_rows(rows) if multi else None,
        interval_method=INTERVAL_METHOD,
        samples=samples,  # type: ignore[arg-type]
        procedures=procedures,
        variants=variants,
        flags=flags,
        check_rules=CHECK_RULES,
        spec=dict(spec),
        artifacts=dict(artifacts or {}),  # type: ignore[arg-type]
    )


def migrate_v2(old: Mapping[str, Any]) -> Report:
    """A ``hydra-compress-report/2`` report as the current format: the variants are re-read (their raw
    checks become :class:`Check`, the new checks are computed from what /2 recorded), the comparison and
    the aggregate are rebuilt from them (/2 rows were flat; numbers are unchanged)."""
    return build_report(
        spec=old["spec"],
        info=old["dataset"],
        results=old["variants"],
        device=old["device"],
        attack=old["attack"],
        artifacts=old.get("artifacts"),
        headline=old.get("headline_robust_metric"),
    )


def load_report(data: Mapping[str, Any]) -> Report:
    """A stored report of any known format as the current :class:`Report`."""
    fmt = data.get("format")
    if fmt == REPORT_FORMAT:
        return Report.model_validate(data)
    if fmt == FORMAT_V2:
        return migrate_v2(data)
    raise ValueError(f"unknown report format {fmt!r} (known: {REPORT_FORMAT}, {FORMAT_V2})")


__all__ = ["build_report", "build_variant", "load_report", "migrate_v2", "CHECK_RULES", "CHANCE_MARGIN"]
