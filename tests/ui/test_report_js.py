"""api/static/report.js renders the typed report: run under node with a minimal DOM, on a report the
server serves (a stored /2 report migrated to /3), it fills every table report.md has."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from core.pipeline.report_build import load_report

ROOT = Path(__file__).parents[2]
# A DOM just large enough for report.js: elements with children, text, dataset, className, hidden.
HARNESS = r"""
class El {
  constructor(tag) { this.tag = tag; this.children = []; this.dataset = {}; this._text = ""; this.hidden = false;
                     this.classList = { add() {} }; this.className = ""; this.title = ""; }
  set textContent(v) { this._text = String(v); this.children = []; }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(" "); }
  appendChild(c) { this.children.push(c); return c; }
  append(...cs) { for (const c of cs) this.appendChild(c); }
  replaceChildren(...cs) { this.children = cs; }
  get childNodes() { return this.children; }
  all(tag) { return this.children.flatMap((c) => (c.tag === tag ? [c] : []).concat(c.all ? c.all(tag) : [])); }
}
const els = {};
global.document = { createElement: (t) => new El(t), createTextNode: (t) => { const e = new El("#text"); e.textContent = t; return e; },
                    getElementById: (id) => (els[id] = els[id] || new El("div")) };
global.window = global;
global.HydraCharts = { COLORS: ["#000"], lineChart: (box, opts) => { const e = new El("svg"); e.appendChild(new El("polyline")); global.plotted = opts; return e; } };
require(process.argv[2]);
const report = JSON.parse(require("fs").readFileSync(0, "utf8"));
HydraReport.render(report);
const rows = (id) => els[id].all("tr").map((r) => r.textContent);
console.log(JSON.stringify({
  headline: HydraReport.headline(report),
  comparison: rows("comparison-table"), inference: rows("inference-table"), checks: els["checks"].textContent,
  layers: rows("layers-table"), artifacts: rows("report-artifacts"), inferenceHidden: els["inference-box"].hidden,
  series: global.plotted.series.length,
}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_report_js_shows_what_report_md_shows(tmp_path: Path) -> None:
    stored = json.loads((ROOT / "tests/data/reports/v2_global_latency.json").read_text())
    report = load_report(stored).model_dump(mode="json")
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    out = subprocess.run(
        ["node", str(harness), str(ROOT / "api/static/report.js")],
        input=json.dumps(report),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    shown = json.loads(out.stdout)
    hydra = next(r for r in shown["comparison"] if r.startswith("hydra_k0.1"))
    lo, hi = report["variants"]["hydra_k0.1"]["intervals"]["benign_acc"]
    assert f"[{100 * lo:.2f}, {100 * hi:.2f}]" in hydra  # the interval as text, not only a tooltip
    assert not shown["inferenceHidden"]
    assert any("not measurable at this size" in r for r in shown["inference"])
    assert "Each network is checked for" in shown["checks"]
    assert len(shown["layers"]) == 1 + len(report["variants"]["hydra_k0.1"]["sparsity"]["layers"]) + 1
    assert "hydra_k0.1" in shown["artifacts"] and any(
        "hydra_k0.1.compressed.safetensors" in r for r in shown["artifacts"]
    )
    assert shown["series"] == 2 and shown["headline"].startswith("hydra_k0.1 (")
