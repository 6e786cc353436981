"""Text for people: one line per job event, and the comparison table of a report."""

from __future__ import annotations

from typing import Any

from hydra_client.report_view import ComparisonRow, ReportView


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def event_line(kind: str, event: dict[str, Any]) -> str | None:
    """The line printed for a job event (``None`` for events not worth a line)."""
    p = event.get("payload") or {}
    if kind == "epoch_finished":
        return (
            f"{p.get('stage', ''):8s} {p.get('variant', ''):14s} epoch {p.get('epoch')}/{p.get('epochs')}  "
            + _fmt_metrics(p.get("metrics") or {})
        )
    if kind == "evaluation_finished":
        return f"evaluate {p.get('variant', ''):14s} " + _fmt_metrics(p.get("metrics") or {})
    if kind == "stage_started":
        return f"-- {p.get('stage')} {p.get('variant')} ({p.get('epochs')} epochs)"
    if kind == "status":
        extra = f" ({p['reason']})" if p.get("reason") else ""
        extra += f": {p['error_reason']}" if p.get("error_reason") else ""
        attempt = f" attempt {p['attempt']}" if p.get("attempt") else ""
        return f"status: {p.get('status')}{attempt}{extra}"
    if kind == "error":
        return f"error: {p.get('reason')}"
    return None


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def report_metrics(report: ReportView) -> list[str]:
    """The metrics of the comparison, in the report's order of procedures (benign first), headline included."""
    rows = report["comparison"]
    names = [m for m in report["procedures"] if any(m in r["metrics"] for r in rows)]
    headline = report["headline_robust_metric"]
    if headline not in names and any(headline in r["metrics"] for r in rows):
        names.append(headline)
    return names


def _with_interval(row: ComparisonRow, metric: str) -> str:
    value = row["metrics"].get(metric)
    if value is None:
        return "-"
    ci = row["ci95"].get(metric)
    return f"{_pct(value)} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else _pct(value)


def comparison_table(report: ReportView) -> str:
    """The report's comparison as a plain-text table (each value with its 95% interval), the flagged
    checks, then how each number was measured."""
    rows = report["comparison"]
    metrics = report_metrics(report)
    headline = report["headline_robust_metric"]
    header = (
        ["network", "sparsity %"]
        + [f"{m}{'*' if m == headline else ''} % [95% CI]" for m in metrics]
        + ["compressed bytes"]
    )
    body = [
        [r["variant"], _pct(r["sparsity"])]
        + [_with_interval(r, m) for m in metrics]
        + [str(r["bytes"]["compressed"]) if "compressed" in r["bytes"] else "-"]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if report["flags"]:
        lines += ["", "checks flagged:"] + [f"- {f['variant']}: {f['check']}: {f['message']}" for f in report["flags"]]
    procedures = report["procedures"]
    if metrics:
        lines.append("")
        if headline in metrics:
            lines.append(f"* headline robust number: {headline}")
        lines += [f"{m}: {procedures[m]}" for m in metrics if m in procedures]
    return "\n".join(lines)
