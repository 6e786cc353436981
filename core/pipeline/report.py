"""The run's reports: ``report.json`` (machine-readable), ``report.md`` (for people) and
``comparison.png`` (accuracy against compression, one line per method and metric); with a global or
learned allocation also ``layer_rates.png`` (each variant's keep rate per layer).

Every accuracy carries its 95% Clopper-Pearson interval; a multi-seed job (``seeds``) adds, per
network, the mean and standard deviation over seeds and each seed's value (``aggregate``), and the
table and plot show those. Every pruned network also gets its inference cost against the dense one
(parameters, MACs, latency, peak memory, from ``core.pipeline.measure``; ``variants.<name>.inference``)
and its per-layer keep rates (``variants.<name>.allocation``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.callbacks import RunCallbacks
from core.io.export import file_digest
from core.pipeline.evaluate import attack_settings
from core.pipeline.measure import latency_text, speedup_text
from core.pipeline.plots import plot_comparison, plot_layer_rates
from core.pipeline.report_build import build_report, load_report
from core.pipeline.report_model import (
    REPORT_FORMAT,
    AggregateRow,
    Allocation,
    ComparisonRow,
    FileDigest,
    Ratio,
    Report,
)
from core.spec import JobSpec
from core.vocab import PLOT_NAME, RATES_PLOT_NAME, REPORT_JSON, REPORT_MD, RUN_ARTIFACTS


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "–"


def _cell(row: ComparisonRow, metric: str) -> str:
    value = row.metrics.get(metric)
    ci = row.ci95.get(metric)
    if value is None:
        return "–"
    return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * value:.2f}"


def _mean_cell(agg: AggregateRow, metric: str) -> str:
    s = agg.sparsity if metric == "sparsity" else agg.metrics.get(metric)
    if s is None:
        return "–"
    if s.n_seeds < 2:  # no spread to show: say so rather than print "± 0.0"
        return f"{100 * s.mean:.1f} (1 seed)"
    return f"{100 * s.mean:.1f} ± {100 * s.std:.1f}"


def _checks_lines(report: Report) -> list[str]:
    lines = [f"- **{f.check.replace('_', ' ')} in `{f.variant}`**: {f.message}." for f in report.flags]
    if not lines:
        lines = ["- no check flagged. Each network is checked for: " + "; ".join(report.check_rules.values()) + "."]
    parity = [c for r in report.variants.values() if (c := r.checks.get("onnx_parity")) and not c.flagged]
    if parity:
        worst = max(float(c.details.get("max_abs_diff", 0.0)) for c in parity)
        lines.append(
            f"- ONNX parity: {len(parity)} graph(s) give PyTorch's logits through onnxruntime within "
            f"{worst:.2g} (allowed {float(parity[0].details.get('atol', 0.0)):g})."
        )
    return lines


def _ratio_cell(entry: Ratio | None, scale: float = 1.0, unit: str = "") -> str:
    if entry is None or entry.variant is None:
        return "–"
    value = entry.variant * scale
    text = f"{value:,.0f}" if not unit else f"{value:.3g} {unit}"
    return f"{text} ({entry.ratio:.3g}x)" if entry.ratio is not None else text


def _inference_lines(report: Report) -> list[str]:
    """The inference-cost table: each pruned network against the dense one, measured in one process."""
    rows = [(name, r.inference) for name, r in report.variants.items() if r.inference is not None]
    if not rows:
        return []
    latency_keys = list(dict.fromkeys(key for _, inf in rows for key in inf.latency))
    header = ["network", "parameters", "nonzero parameters", "MACs", *[f"{k} latency" for k in latency_keys]]
    header.append("peak memory")
    lines = [
        "## Inference cost against the dense network",
        "",
        "Measured from each exported network next to the dense one in the same process; in brackets the "
        "ratio to the dense network. Latency: median time per call [interquartile range], then the "
        "speed-up (dense time / this network's time) with its 95% interval, or 'not measurable at this "
        "size' when that interval reaches within 5% of 1.",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for name, inf in rows:
        cells = [name, _ratio_cell(inf.params), _ratio_cell(inf.nonzero_params), _ratio_cell(inf.macs)]
        for key in latency_keys:
            e = inf.latency.get(key)
            cells.append(f"{latency_text(e.model_dump())}: {speedup_text(e.model_dump())}" if e else "–")
        cells.append(_ratio_cell(inf.peak_memory, 1 / 2**20, "MiB"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {what}: {how}" for what, how in rows[0][1].method.items()] + [""]
    return lines


def rates_variants(report: Report) -> list[tuple[str, Allocation]]:
    """The variants whose per-layer rates the report shows: all pruned ones of a global/learned job."""
    if report.spec.get("pruning", {}).get("allocation", "uniform") == "uniform":
        return []
    return [(name, r.allocation) for name, r in report.variants.items() if r.allocation is not None]


def _rates_lines(report: Report) -> list[str]:
    variants = rates_variants(report)
    if not variants:
        return []
    first = variants[0][1]
    lines = [
        f"## Per-layer keep rates ({first.allocation} allocation)",
        "",
        "Kept weights / weights of each layer, counted from the exported networks.",
        "",
        "| layer | weights | " + " | ".join(name for name, _ in variants) + " |",
        "|---|---:|" + "---:|" * len(variants),
    ]
    for layer, rate in first.layers.items():
        cells = [_pct(a.layers[layer].rate if layer in a.layers else None) + "%" for _, a in variants]
        lines.append(f"| `{layer}` | {rate.n:,} | " + " | ".join(cells) + " |")
    cells = [_pct(a.total.rate) + "%" for _, a in variants]
    lines += [f"| total | {first.total.n:,} | " + " | ".join(cells) + " |", ""]
    return lines + [f"![per-layer keep rates]({RATES_PLOT_NAME})", ""]


def _timing_lines(report: Report) -> list[str]:
    """Wall time of every stage and every attack, per network."""
    stages = list(dict.fromkeys(s for r in report.variants.values() for s in r.timings.stages))
    attacks = list(dict.fromkeys(a for r in report.variants.values() for a in r.timings.attacks))
    if not stages and not attacks:
        return []
    header = ["network", *stages, *(f"{a} (attack)" for a in attacks)]
    lines = ["## Wall time (seconds)", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, r in report.variants.items():
        cells = [f"{r.timings.stages[s]:.1f}" if s in r.timings.stages else "–" for s in stages]
        cells += [f"{r.timings.attacks[a]:.1f}" if a in r.timings.attacks else "–" for a in attacks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def render_summary(report: Report) -> str:
    """The heading, the comparison table (mean ± std over seeds first in a multi-seed job) and the
    flagged checks: what the CLI prints at the end of a run."""
    metrics = report.metric_names()
    lines = [
        f"# Robust compression report{': ' + report.name if report.name else ''}",
        "",
        f"Architecture `{report.arch}` on `{report.dataset.name}` "
        f"({report.dataset.n_train} train / {report.dataset.n_test} test), "
        f"objective `{report.objective['type']}`, device `{report.device}`. "
        f"Headline robust number: `{report.headline_robust_metric}`.",
        "",
    ]
    res = report.resources
    if res:
        lines += [
            f"Training precision `{res['precision']}`, final evaluation (attacks and certificates) in "
            f"`{res['eval_precision']}`; {res['world_size']} rank(s), backend `{res['backend']}`.",
            "",
        ]
    if report.aggregate:
        lines += [
            f"### Mean ± standard deviation over seeds {report.seeds}",
            "",
            "| network | seeds | sparsity % | " + " | ".join(f"{m} %" for m in metrics) + " |",
            "|---|---|---|" + "---|" * len(metrics),
        ]
        for agg in report.aggregate:
            lines.append(
                f"| {agg.variant} | {', '.join(str(s) for s in agg.seeds)} | {_mean_cell(agg, 'sparsity')} | "
                + " | ".join(_mean_cell(agg, m) for m in metrics)
                + " |"
            )
        lines += ["", "### Each seed", ""]
    lines += [
        "| network | sparsity (measured) | " + " | ".join(f"{m} % [95% CI]" for m in metrics) + " | compressed bytes |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for r in report.comparison:
        cells = " | ".join(_cell(r, m) for m in metrics)
        lines.append(f"| {r.variant} | {_pct(r.sparsity)}% | {cells} | {r.bytes.get('compressed', '–')} |")
    lines += ["", f"Intervals: {report.interval_method}.", ""]
    return "\n".join(lines + ["## Checks", "", *_checks_lines(report), ""])


def summary_text(report: Mapping[str, Any]) -> str:
    """:func:`render_summary` of a report as stored (any known format)."""
    return render_summary(load_report(report))


def render_markdown(report: Report) -> str:
    """``report.md``: the summary, then the inference costs, per-layer rates, wall times, how each number
    was measured, the samples and the plot."""
    lines = [render_summary(report)]
    lines += _inference_lines(report)
    lines += _rates_lines(report)
    lines += _timing_lines(report)
    lines += ["## How each number was measured", ""]
    lines += [f"- **{m}**: {desc}" for m, desc in report.procedures.items()]
    lines += ["", "## Samples", ""]
    for name, sample in report.samples.items():
        lines.append(
            f"- **{name}**: {sample.n} of {sample.of} test samples, {sample.how}; per class "
            + ", ".join(f"{c}: {n}" for c, n in sample.per_class.items())
        )
    lines += [
        "",
        "Sparsity is counted from the weights stored in each exported artifact (the compressed one; for "
        "channel granularity the rebuilt smaller network, against the full-width layers), over all conv "
        "and linear weights (biases and BatchNorm are never pruned). Numbers are from the last epoch.",
        "",
        f"![accuracy against compression]({PLOT_NAME})",
        "",
    ]
    return "\n".join(lines)


def write_reports(
    out: Path,
    spec: JobSpec,
    info: dict[str, Any],
    results: dict[str, Any],
    device: str,
    cb: RunCallbacks,
    resources: dict[str, Any] | None = None,
) -> Report:
    """Build the report (validated), draw its plots, write ``report.md`` then ``report.json`` (last: its
    presence means the run finished), each reported as an artifact. ``resources``: how the run used its
    hardware (precision of training and of the final evaluation, world size and backend)."""
    report = build_report(
        spec=spec.model_dump(mode="json"),
        info=info,
        results=results,
        device=device,
        attack=attack_settings(spec),
        resources=resources,
    )
    plot_comparison(report, out / PLOT_NAME)
    run_artifacts = list(RUN_ARTIFACTS)
    rates = rates_variants(report)
    if rates:
        plot_layer_rates(rates, out / RATES_PLOT_NAME)
        run_artifacts.insert(1, RATES_PLOT_NAME)
    (out / REPORT_MD).write_text(render_markdown(report))
    for name in run_artifacts:
        size, digest = file_digest(out / name)
        report.artifacts[name] = FileDigest(size=size, sha256=digest)
        cb.on_artifact(name, out / name, size, digest)
    report = Report.model_validate(report.model_dump())  # validated as written
    tmp = out / f"{REPORT_JSON}.tmp"
    tmp.write_text(report.model_dump_json(indent=2))
    tmp.replace(out / REPORT_JSON)
    size, digest = file_digest(out / REPORT_JSON)
    cb.on_artifact(REPORT_JSON, out / REPORT_JSON, size, digest)
    return report


__all__ = ["REPORT_FORMAT", "render_markdown", "render_summary", "summary_text", "write_reports", "rates_variants"]
