/* Line charts drawn as inline SVG, with no library: training curves and accuracy against sparsity. */
"use strict";

window.HydraCharts = (function () {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceTicks(lo, hi, count) {
    if (!isFinite(lo) || !isFinite(hi)) return [0, 1];
    if (hi - lo < 1e-12) { hi = lo + (Math.abs(lo) || 1) * 0.1; lo = lo - (Math.abs(lo) || 1) * 0.1; }
    const raw = (hi - lo) / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let t = Math.floor(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
    if (ticks.length < 2) ticks.push(ticks[0] + step);
    return ticks;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a < 0.01 || a >= 1e5)) return v.toExponential(1);
    return String(+v.toFixed(3));
  }

  /* options: {title, xLabel, yLabel, series: [{name, points: [[x, y]], dashed, color}], hlines: [{y, name, dashed, color}],
     yMin, yMax, markers} */
  function lineChart(container, options) {
    const box = document.createElement("div");
    box.className = "chart-box";
    if (options.id) box.id = options.id;
    const title = document.createElement("h4");
    title.textContent = options.title || "";
    box.appendChild(title);
    const W = 440, H = 240, L = 52, R = 12, T = 10, B = 38;
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": options.title || "chart" }, box);
    const series = (options.series || []).filter((s) => s.points && s.points.length);
    const hlines = options.hlines || [];
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1])).concat(hlines.map((h) => h.y));
    let xMin = Math.min(...xs), xMax = Math.max(...xs);
    if (!xs.length) { xMin = 0; xMax = 1; }
    if (xMin === xMax) { xMin -= 1; xMax += 1; }
    let yMin = options.yMin !== undefined ? Math.min(options.yMin, ...ys) : Math.min(...ys);
    let yMax = options.yMax !== undefined ? Math.max(options.yMax, ...ys) : Math.max(...ys);
    if (!ys.length) { yMin = 0; yMax = 1; }
    const yTicks = niceTicks(yMin, yMax, 5);
    yMin = Math.min(yMin, yTicks[0]); yMax = Math.max(yMax, yTicks[yTicks.length - 1]);
    const xTicks = options.integerX ? niceTicks(xMin, xMax, Math.min(8, xMax - xMin)).filter((t) => Number.isInteger(t)) : niceTicks(xMin, xMax, 6);
    const sx = (x) => L + ((x - xMin) / (xMax - xMin || 1)) * (W - L - R);
    const sy = (y) => H - B - ((y - yMin) / (yMax - yMin || 1)) * (H - T - B);
    for (const t of yTicks) {
      if (t < yMin - 1e-9 || t > yMax + 1e-9) continue;
      el("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: "#eaecf0" }, svg);
      el("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end" }, svg).textContent = fmt(t);
    }
    for (const t of xTicks) {
      if (t < xMin - 1e-9 || t > xMax + 1e-9) continue;
      el("line", { x1: sx(t), x2: sx(t), y1: H - B, y2: H - B + 4, stroke: "#98a2b3" }, svg);
      el("text", { x: sx(t), y: H - B + 16, "text-anchor": "middle" }, svg).textContent = fmt(t);
    }
    el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#98a2b3" }, svg);
    el("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#98a2b3" }, svg);
    if (options.xLabel) el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, svg).textContent = options.xLabel;
    if (options.yLabel) {
      el("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${(T + H - B) / 2})` }, svg)
        .textContent = options.yLabel;
    }
    const legend = document.createElement("div");
    legend.className = "legend";
    const addLegend = (name, color, dashed) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = dashed ? `repeating-linear-gradient(90deg, ${color} 0 4px, transparent 4px 7px)` : color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name));
      legend.appendChild(item);
    };
    hlines.forEach((h, i) => {
      const color = h.color || "#98a2b3";
      el("line", { x1: L, x2: W - R, y1: sy(h.y), y2: sy(h.y), stroke: color, "stroke-width": 1.2,
                   "stroke-dasharray": h.dashed ? "5 4" : "" }, svg);
      addLegend(h.name, color, h.dashed);
    });
    series.forEach((s, i) => {
      const color = s.color || COLORS[i % COLORS.length];
      const pts = s.points.slice().sort((a, b) => a[0] - b[0]);
      el("polyline", { points: pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "), fill: "none",
                       stroke: color, "stroke-width": 2, "stroke-dasharray": s.dashed ? "6 4" : "",
                       "data-series": s.name }, svg);
      for (const p of pts) {
        const dot = el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: options.markers === false ? 0 : 3, fill: color }, svg);
        el("title", {}, dot).textContent = `${s.name}: ${fmt(p[0])}, ${fmt(p[1])}`;
      }
      addLegend(s.name, color, s.dashed);
    });
    box.appendChild(legend);
    container.appendChild(box);
    return box;
  }

  return { lineChart, COLORS };
})();
