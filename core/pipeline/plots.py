"""The report's plots: accuracy against compression (one line per method and metric, error bars from
the seeds or the 95% intervals) and the per-layer keep rates of global/learned allocations."""

from __future__ import annotations

from pathlib import Path

from core.pipeline.report_model import Allocation, Report
from core.pruning.methods import METHODS
from core.vocab import DENSE


def plot_points(report: Report, metric: str) -> list[tuple[str, float, float, float, float]]:
    """(method, sparsity, value, err_low, err_high) per network: seed mean ± std when there are
    seeds, else the value with its 95% interval."""
    pts = []
    if report.aggregate:
        for a in report.aggregate:
            s = a.metrics.get(metric)
            if s is not None and a.sparsity is not None:
                pts.append((a.method, a.sparsity.mean, s.mean, s.std, s.std))
        return pts
    for r in report.comparison:
        v = r.metrics.get(metric)
        if v is not None:
            lo, hi = r.ci95.get(metric, (v, v))
            pts.append((r.method, r.sparsity, v, v - lo, hi - v))
    return pts


def plot_comparison(report: Report, path: Path) -> None:
    """Benign and headline robust accuracy against measured sparsity, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for metric, style in (("benign_acc", "--o"), (report.headline_robust_metric, "-s")):
        pts = plot_points(report, metric)
        for method, color in zip(METHODS.names(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
            mine = sorted((p for p in pts if p[0] == method), key=lambda p: p[1])
            if mine:
                ax.errorbar(
                    [100 * p[1] for p in mine],
                    [100 * p[2] for p in mine],
                    yerr=[[100 * p[3] for p in mine], [100 * p[4] for p in mine]],
                    fmt=style,
                    color=color,
                    capsize=3,
                    label=f"{method} {metric}",
                )
        dense = [p for p in pts if p[0] == DENSE]
        if dense:
            ax.axhline(100 * dense[0][2], color="grey", ls=style[:-1] or "-", lw=1, label=f"dense {metric}")
    ax.set_title("error bars: " + ("std over seeds" if report.aggregate else "95% Clopper-Pearson"), fontsize=8)
    ax.set_xlabel("sparsity (% of conv/linear weights pruned)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layer_rates(variants: list[tuple[str, Allocation]], path: Path) -> None:
    """Keep rate per layer (log scale), one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, alloc in variants:
        layers = list(alloc.layers)
        rates = [max(alloc.layers[layer].rate, 1e-6) * 100 for layer in layers]
        ax.plot(range(len(layers)), rates, "-o", ms=3, label=name)
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("weights kept (%)")
    ax.set_title(f"per-layer keep rates ({variants[0][1].allocation} allocation)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
