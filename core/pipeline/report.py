"""The run's reports: ``report.json`` (machine-readable), ``report.md`` (for people) and
``comparison.png`` (accuracy against compression, one line per method and metric); with a global or
learned allocation also ``layer_rates.png`` (each variant's keep rate per layer).

Every accuracy carries its 95% Clopper-Pearson interval; a multi-seed job (``seeds``) adds, per
network, the mean and standard deviation over seeds and each seed's value (``aggregate``), and the
table and plot show those. Every pruned network also gets its inference cost against the dense one
(parameters, MACs, latency, peak memory, from ``core.pipeline.measure``; ``variants.<name>.inference``)
and its per-layer keep rates (``variants.<name>.allocation``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.callbacks import RunCallbacks
from core.io.export import file_digest
from core.objectives import objective_class
from core.pipeline.evaluate import attack_settings
from core.pipeline.measure import latency_text, speedup_text
from core.pipeline.plots import plot_comparison, plot_layer_rates
from core.pipeline.stats import INTERVAL_METHOD, seed_summary
from core.spec import JobSpec
from core.vocab import DENSE, PLOT_NAME, RATES_PLOT_NAME, REPORT_JSON, REPORT_MD, RUN_ARTIFACTS

REPORT_FORMAT = "hydra-compress-report/2"


def _base(name: str, r: dict[str, Any], multi: bool) -> str:
    suffix = f"_s{r.get('seed')}"
    return name[: -len(suffix)] if multi and name.endswith(suffix) else name


def comparison_rows(results: dict[str, Any], multi_seed: bool = False) -> list[dict[str, Any]]:
    """One row per network, dense first, then by method, decreasing k and seed."""
    rows = []
    for name, r in results.items():
        row: dict[str, Any] = {
            "variant": name,
            "base": _base(name, r, multi_seed),
            "method": r["method"],
            "k": r["k"],
            "seed": r.get("seed"),
        }
        sp = r.get("sparsity")
        row["sparsity"] = sp["total"] if sp else 1.0 - r["k"]
        row.update(r["metrics"])
        row["ci95"] = r.get("intervals", {})
        for fmt, art in r.get("artifacts", {}).items():
            if fmt != "model_card":  # network files only: compressed_bytes, dense_bytes
                row[f"{fmt}_bytes"] = art["size"]
        rows.append(row)
    rows.sort(key=lambda row: (row["method"] != DENSE, row["method"], -row["k"], row["seed"] or 0))
    return rows


def aggregate_rows(rows: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """Per network (over its seeds): mean, std and each seed's value of every metric and the sparsity."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["base"], []).append(row)
    out = []
    for base, members in groups.items():
        agg: dict[str, Any] = {
            "variant": base,
            "method": members[0]["method"],
            "k": members[0]["k"],
            "seeds": [m["seed"] for m in members],
        }
        for key in ["sparsity", *metrics]:
            values = {str(m["seed"]): m[key] for m in members if isinstance(m.get(key), (int, float))}
            if values:
                agg[key] = seed_summary(values)
        out.append(agg)
    return out


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "–"


def _cell(row: dict[str, Any], metric: str) -> str:
    value = row.get(metric)
    ci = row.get("ci95", {}).get(metric)
    if not isinstance(value, (int, float)):
        return "–"
    return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * value:.2f}"


def _mean_cell(agg: dict[str, Any], metric: str) -> str:
    s = agg.get(metric)
    if not isinstance(s, dict):
        return "–"
    if s.get("n_seeds", 2) < 2:  # no spread to show: say so rather than print "± 0.0"
        return f"{100 * s['mean']:.1f} (1 seed)"
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def _checks_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, r in report["variants"].items():
        masking = r.get("checks", {}).get("gradient_masking")
        if masking and masking.get("possible_gradient_masking"):
            lines.append(
                f"- **possible gradient masking in `{name}`**: {masking['best_gradient_free_attack']} "
                f"beats the best gradient attack ({masking['best_gradient_attack']}) by "
                f"{100 * masking['gap']:.1f} points; trust robust_acc (the worst case), not PGD alone."
            )
        sound = r.get("checks", {}).get("certificate_below_attack")
        if sound and not sound.get("ok"):
            lines.append(
                f"- **certificate above attack in `{name}`**: {sound['metric']} {100 * sound['verified']:.1f}% "
                f"> robust_acc {100 * sound['empirical_robust']:.1f}%."
            )
        onnx = r.get("checks", {}).get("onnx_parity")
        if onnx and not onnx.get("ok"):
            lines.append(f"- **ONNX export of `{name}` not shipped**: {onnx.get('error')}")
    lines = lines or [
        "- no check flagged (gradient masking: a gradient-free attack beating the best gradient "
        "attack by > 2 points; certificates above the attacked accuracy; ONNX graphs that disagree "
        "with PyTorch)."
    ]
    parity = [c for r in report["variants"].values() if (c := r.get("checks", {}).get("onnx_parity")) and c.get("ok")]
    if parity:
        lines.append(
            f"- ONNX parity: {len(parity)} graph(s) give PyTorch's logits through onnxruntime within "
            f"{max(c['max_abs_diff'] for c in parity):.2g} (allowed {parity[0]['atol']:g})."
        )
    return lines


def _ratio_cell(entry: Any, scale: float = 1.0, unit: str = "") -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("variant"), (int, float)):
        return "–"
    value = entry["variant"] * scale
    text = f"{value:,.0f}" if not unit else f"{value:.3g} {unit}"
    factor = entry.get("ratio")
    return f"{text} ({factor:.3g}x)" if isinstance(factor, (int, float)) else text


def _inference_lines(report: dict[str, Any]) -> list[str]:
    """The inference-cost table: each pruned network against the dense one, measured in one process."""
    rows = [(name, r["inference"]) for name, r in report["variants"].items() if r.get("inference")]
    if not rows:
        return []
    latency_keys = list(dict.fromkeys(key for _, inf in rows for key in inf.get("latency", {})))
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
        cells = [
            name,
            _ratio_cell(inf.get("params")),
            _ratio_cell(inf.get("nonzero_params")),
            _ratio_cell(inf.get("macs")),
        ]
        cells += [
            f"{latency_text(e)}: {speedup_text(e)}" if (e := inf["latency"].get(k)) else "–" for k in latency_keys
        ]
        cells.append(_ratio_cell(inf.get("peak_memory"), 1 / 2**20, "MiB"))
        lines.append("| " + " | ".join(cells) + " |")
    method = rows[0][1].get("method", {})
    lines += [""] + [f"- {what}: {how}" for what, how in method.items()] + [""]
    return lines


def _rates_variants(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The variants whose per-layer rates the report shows: all pruned ones of a global/learned job."""
    if (report.get("spec") or {}).get("pruning", {}).get("allocation", "uniform") == "uniform":
        return []
    return [(name, r["allocation"]) for name, r in report["variants"].items() if r.get("allocation")]


def _rates_lines(report: dict[str, Any]) -> list[str]:
    variants = _rates_variants(report)
    if not variants:
        return []
    layers = list(variants[0][1]["layers"])
    lines = [
        f"## Per-layer keep rates ({variants[0][1]['allocation']} allocation)",
        "",
        "Kept weights / weights of each layer, counted from the exported networks.",
        "",
        "| layer | weights | " + " | ".join(name for name, _ in variants) + " |",
        "|---|---:|" + "---:|" * len(variants),
    ]
    for layer in layers:
        n = variants[0][1]["layers"][layer]["n"]
        cells = [_pct(a["layers"].get(layer, {}).get("rate")) + "%" for _, a in variants]
        lines.append(f"| `{layer}` | {n:,} | " + " | ".join(cells) + " |")
    cells = [_pct(a["total"]["rate"]) + "%" for _, a in variants]
    lines += [f"| total | {variants[0][1]['total']['n']:,} | " + " | ".join(cells) + " |", ""]
    return lines + [f"![per-layer keep rates]({RATES_PLOT_NAME})", ""]


def render_markdown(report: dict[str, Any]) -> str:
    rows = report["comparison"]
    metrics = [m for m in report["procedures"] if any(m in r for r in rows)]
    lines = [
        f"# Robust compression report{': ' + report['name'] if report.get('name') else ''}",
        "",
        f"Architecture `{report['arch']}` on `{report['dataset']['name']}` "
        f"({report['dataset']['n_train']} train / {report['dataset']['n_test']} test), "
        f"objective `{report['objective']['type']}`, device `{report['device']}`. "
        f"Headline robust number: `{report['headline_robust_metric']}`.",
        "",
    ]
    res = report.get("resources")
    if res:
        lines += [
            f"Training precision `{res['precision']}`, final evaluation (attacks and certificates) in "
            f"`{res['eval_precision']}`; {res['world_size']} rank(s), backend `{res['backend']}`.",
            "",
        ]
    if report.get("aggregate"):
        lines += [
            f"### Mean ± standard deviation over seeds {report['seeds']}",
            "",
            "| network | seeds | sparsity % | " + " | ".join(f"{m} %" for m in metrics) + " |",
            "|---|---|---|" + "---|" * len(metrics),
        ]
        for agg in report["aggregate"]:
            lines.append(
                f"| {agg['variant']} | {', '.join(str(s) for s in agg['seeds'])} | {_mean_cell(agg, 'sparsity')} | "
                + " | ".join(_mean_cell(agg, m) for m in metrics)
                + " |"
            )
        lines += ["", "### Each seed", ""]
    lines += [
        "| network | sparsity (measured) | " + " | ".join(f"{m} % [95% CI]" for m in metrics) + " | compressed bytes |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for r in rows:
        cells = [_cell(r, m) for m in metrics]
        lines.append(
            f"| {r['variant']} | {_pct(r['sparsity'])}% | "
            + " | ".join(cells)
            + f" | {r.get('compressed_bytes', '–')} |"
        )
    lines += ["", f"Intervals: {INTERVAL_METHOD}.", ""]
    lines += _inference_lines(report)
    lines += _rates_lines(report)
    lines += ["## Checks", ""]
    lines += _checks_lines(report)
    lines += ["", "## How each number was measured", ""]
    lines += [f"- **{m}**: {desc}" for m, desc in report["procedures"].items()]
    lines += ["", "## Samples", ""]
    for name, sample in report.get("samples", {}).items():
        lines.append(
            f"- **{name}**: {sample['n']} of {sample['of']} test samples, {sample['how']}; per class "
            + ", ".join(f"{c}: {n}" for c, n in sample["per_class"].items())
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


def robust_metric_of(spec: JobSpec, rows: list[dict[str, Any]]) -> str:
    """The headline robust number: the objective's own (its certificate, for the verifiable ones),
    else the per-example worst case over every attack run, else PGD."""
    keys = list(rows[0]) if rows else []
    chosen = objective_class(spec.objective.type).headline(keys)
    if chosen is not None:
        return chosen
    return "robust_acc" if any("robust_acc" in row for row in rows) else "pgd_acc"


def write_reports(
    out: Path,
    spec: JobSpec,
    info: dict[str, Any],
    results: dict[str, Any],
    device: str,
    cb: RunCallbacks,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``resources``: how the run used its hardware (precision of training and of the final
    evaluation, world size and backend); the report states it beside the device."""
    multi = spec.seeds is not None
    rows = comparison_rows(results, multi)
    procedures: dict[str, str] = {}
    samples: dict[str, Any] = {}
    for r in results.values():
        procedures.update(r.get("procedures", {}))
        samples.update(r.get("samples", {}))
    robust = robust_metric_of(spec, rows)
    aggregate = aggregate_rows(rows, list(procedures)) if multi else None
    report = {
        "format": REPORT_FORMAT,
        "name": spec.name,
        "arch": spec.model.arch,
        "dataset": info,
        "objective": spec.objective.model_dump(),
        "attack": attack_settings(spec),
        "device": device,
        "resources": resources,
        "headline_robust_metric": robust,
        "comparison": rows,
        "seeds": [r["seed"] for r in rows if r["method"] == DENSE] if multi else None,
        "aggregate": aggregate,
        "interval_method": INTERVAL_METHOD,
        "samples": samples,
        "procedures": procedures,
        "variants": results,
        "spec": spec.model_dump(mode="json"),
    }
    plot_comparison(rows, out / PLOT_NAME, robust, aggregate)
    run_artifacts = list(RUN_ARTIFACTS)
    rates = _rates_variants(report)
    if rates:
        plot_layer_rates(rates, out / RATES_PLOT_NAME)
        run_artifacts.insert(1, RATES_PLOT_NAME)
    (out / REPORT_MD).write_text(render_markdown(report))
    artifacts = {}
    for name in run_artifacts:
        size, digest = file_digest(out / name)
        artifacts[name] = {"size": size, "sha256": digest}
        cb.on_artifact(name, out / name, size, digest)
    report["artifacts"] = artifacts
    tmp = out / f"{REPORT_JSON}.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=float))
    tmp.replace(out / REPORT_JSON)
    size, digest = file_digest(out / REPORT_JSON)
    cb.on_artifact(REPORT_JSON, out / REPORT_JSON, size, digest)
    return report
