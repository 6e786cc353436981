"""Text for people: one line per job event, and the comparison table of a report."""

from __future__ import annotations

from typing import Any


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


def report_metrics(report: dict[str, Any]) -> list[str]:
    """The metrics of the comparison, in the report's order of procedures (benign first), headline included."""
    rows = report.get("comparison") or []
    names = [m for m in (report.get("procedures") or {}) if any(m in r for r in rows)]
    headline = report.get("headline_robust_metric")
    if headline and headline not in names and any(headline in r for r in rows):
        names.append(headline)
    return names


def comparison_table(report: dict[str, Any]) -> str:
    """The report's comparison as a plain-text table, then how each number was measured."""
    rows = report.get("comparison") or []
    metrics = report_metrics(report)
    headline = report.get("headline_robust_metric")
    header = (
        ["network", "sparsity %"] + [f"{m}{'*' if m == headline else ''} %" for m in metrics] + ["compressed bytes"]
    )
    body = [
        [str(r.get("variant")), _pct(r.get("sparsity"))]
        + [_pct(r.get(m)) for m in metrics]
        + [str(r["compressed_bytes"]) if r.get("compressed_bytes") is not None else "-"]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    procedures = report.get("procedures") or {}
    if metrics:
        lines.append("")
        if headline in metrics:
            lines.append(f"* headline robust number: {headline}")
        lines += [f"{m}: {procedures[m]}" for m in metrics if m in procedures]
    return "\n".join(lines)
