"""The run's reports: ``report.json`` (machine-readable), ``report.md`` (for people) and
``comparison.png`` (accuracy against compression, one line per method and metric)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.callbacks import RunCallbacks
from core.evaluate import attack_settings
from core.export import file_digest
from core.spec import JobSpec

REPORT_FORMAT = "hydra-compress-report/1"


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per network, dense first, then by method and decreasing k."""
    rows = []
    for name, r in results.items():
        row: dict[str, Any] = {"variant": name, "method": r["method"], "k": r["k"]}
        sp = r.get("sparsity")
        row["sparsity"] = sp["total"] if sp else 1.0 - r["k"]
        row.update(r["metrics"])
        for fmt, art in r.get("artifacts", {}).items():
            row[f"{fmt}_bytes"] = art["size"]
        rows.append(row)
    rows.sort(key=lambda row: (row["method"] != "dense", row["method"], -row["k"]))
    return rows


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "–"


def render_markdown(report: dict[str, Any]) -> str:
    rows = report["comparison"]
    metrics = [m for m in report["procedures"] if any(m in r for r in rows)]
    lines = [
        f"# Robust compression report{': ' + report['name'] if report.get('name') else ''}",
        "",
        f"Architecture `{report['arch']}` on `{report['dataset']['name']}` "
        f"({report['dataset']['n_train']} train / {report['dataset']['n_test']} test), "
        f"objective `{report['objective']['type']}`, device `{report['device']}`.",
        "",
        "| network | sparsity (measured) | " + " | ".join(f"{m} %" for m in metrics) + " | compressed bytes |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for r in rows:
        cells = [_pct(r.get(m)) for m in metrics]
        lines.append(
            f"| {r['variant']} | {_pct(r['sparsity'])}% | " + " | ".join(cells) + f" | {r.get('compressed_bytes', '–')} |"
        )
    lines += ["", "## How each number was measured", ""]
    lines += [f"- **{m}**: {desc}" for m, desc in report["procedures"].items()]
    lines += [
        "",
        "Sparsity is counted from the weights stored in each compressed artifact, over all conv and "
        "linear weights (biases and BatchNorm are never pruned). Numbers are from the last epoch.",
        "",
        "![accuracy against compression](comparison.png)",
        "",
    ]
    return "\n".join(lines)


def plot_comparison(rows: list[dict[str, Any]], path: Path, robust_metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dense = next((r for r in rows if r["method"] == "dense"), None)
    for method, color in (("hydra", "tab:blue"), ("lwm", "tab:orange")):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
        if not pts:
            continue
        xs = [100 * r["sparsity"] for r in pts]
        ax.plot(xs, [100 * r["benign_acc"] for r in pts], "--o", color=color, label=f"{method} benign")
        ax.plot(xs, [100 * r.get(robust_metric, 0.0) for r in pts], "-s", color=color, label=f"{method} {robust_metric}")
    if dense is not None:
        ax.axhline(100 * dense["benign_acc"], color="grey", ls="--", lw=1, label="dense benign")
        ax.axhline(100 * dense.get(robust_metric, 0.0), color="grey", ls="-", lw=1, label=f"dense {robust_metric}")
    ax.set_xlabel("sparsity (% of conv/linear weights pruned)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def robust_metric_of(spec: JobSpec, rows: list[dict[str, Any]]) -> str:
    """The headline robust number: the certificate for verifiable objectives, else PGD."""
    # MixTrain's training bound L_sym is the CROWN-IBP bound: its headline is that bound at test time.
    preferred = {"smoothing": "certified_acc", "crown_ibp": "verified_acc_crown_ibp", "mixtrain": "verified_acc_crown_ibp"}
    want = preferred.get(spec.objective.type)
    if want:
        keys = [key for key in (rows[0] if rows else {}) if key.startswith(want)]
        if want == "certified_acc":  # at radius 0 it is only clean accuracy: headline the first r > 0
            positive = [k for k in keys if "@" in k and float(k.split("@", 1)[1]) > 0]
            keys = positive or keys
        if keys:
            return keys[0]
    return "pgd_acc"


def write_reports(
    out: Path,
    spec: JobSpec,
    info: dict[str, Any],
    results: dict[str, Any],
    device: str,
    cb: RunCallbacks,
    record_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rows = comparison_rows(results)
    procedures: dict[str, str] = {}
    for r in results.values():
        procedures.update(r.get("procedures", {}))
    robust = robust_metric_of(spec, rows)
    report = {
        "format": REPORT_FORMAT,
        "name": spec.name,
        "arch": spec.model.arch,
        "dataset": info,
        "objective": spec.objective.model_dump(),
        "attack": attack_settings(spec),
        "device": device,
        "headline_robust_metric": robust,
        "comparison": rows,
        "procedures": procedures,
        "variants": results,
        "spec": record_spec if record_spec is not None else spec.model_dump(mode="json"),
    }
    plot_comparison(rows, out / "comparison.png", robust)
    (out / "report.md").write_text(render_markdown(report))
    artifacts = {}
    for name in ("comparison.png", "report.md", "spec.json"):
        size, digest = file_digest(out / name)
        artifacts[name] = {"size": size, "sha256": digest}
        cb.on_artifact(name, out / name, size, digest)
    report["artifacts"] = artifacts
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=float))
    tmp.replace(out / "report.json")
    size, digest = file_digest(out / "report.json")
    cb.on_artifact("report.json", out / "report.json", size, digest)
    return report
