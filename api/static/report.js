/* The job page's report: everything report.md shows, read from GET /v1/jobs/{id}/report (the typed
   report, format hydra-compress-report/3; its schema is Report in /openapi.json). hydra.js calls
   HydraReport.render(report) once a job succeeded and HydraReport.headline(report) for the job list, and
   takes its number formats and DOM helpers from here too (pct, bytes, text, table, tr). */
"use strict";

window.HydraReport = (function () {
  const $ = (id) => document.getElementById(id);
  const pct = (v) => (typeof v === "number" ? (100 * v).toFixed(2) : "–");
  function bytes(n) {
    if (typeof n !== "number") return "–";
    const units = ["B", "kB", "MB", "GB"];
    let i = 0, v = n;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return `${i ? v.toFixed(1) : v} ${units[i]}`;
  }
  function text(tag, content, cls) {
    const node = document.createElement(tag);
    if (content !== undefined && content !== null) node.textContent = String(content);
    if (cls) node.className = cls;
    return node;
  }
  function table(el, header, rows) {
    el.replaceChildren();
    const thead = document.createElement("thead");
    const htr = document.createElement("tr");
    for (const h of header) htr.appendChild(typeof h === "string" ? text("th", h) : h);
    thead.appendChild(htr);
    const tb = document.createElement("tbody");
    for (const r of rows) tb.appendChild(r);
    el.append(thead, tb);
  }
  function tr(cells, data) {
    const row = document.createElement("tr");
    for (const [key, value] of Object.entries(data || {})) row.dataset[key] = value;
    for (const c of cells) row.appendChild(typeof c === "string" ? text("td", c) : c);
    return row;
  }
  const ms = (s) => (typeof s === "number" ? `${(1e3 * s).toPrecision(3)} ms` : "–");
  const withInterval = (v, ci) => (Array.isArray(ci) ? `${pct(v)} [${pct(ci[0])}, ${pct(ci[1])}]` : pct(v));

  function metricNames(report) {
    const rows = report.comparison;
    const names = Object.keys(report.procedures).filter((m) => rows.some((r) => m in r.metrics));
    const headline = report.headline_robust_metric;
    if (!names.includes(headline) && rows.some((r) => headline in r.metrics)) names.push(headline);
    return names;
  }

  /* The job list's line: the best compressed network by the headline robust number. */
  function headline(report) {
    const robust = report.headline_robust_metric;
    const score = (r) => r.metrics[robust] || 0;
    const rows = report.comparison.filter((r) => r.method !== "dense").sort((a, b) => score(b) - score(a));
    const best = rows[0] || report.comparison[0];
    if (!best) return "–";
    const flagged = report.flags.length ? ` · ${report.flags.length} check(s) flagged` : "";
    return `${best.variant} (${pct(best.sparsity)}% sparse): benign ${pct(best.metrics.benign_acc)}`
      + (typeof best.metrics[robust] === "number" ? ` · ${robust} ${pct(best.metrics[robust])}` : "") + flagged;
  }

  function comparison(report, metrics) {
    const hl = report.headline_robust_metric;
    const header = ["network", "method", "k (kept)", "sparsity %"];
    const ths = header.map((h) => text("th", h));
    for (const m of metrics) {
      const th = text("th", `${m}${m === hl ? " ★" : ""} % [95% CI]`, "num");
      th.title = report.procedures[m] || "";
      ths.push(th);
    }
    ths.push(text("th", "compressed", "num"), text("th", "dense", "num"));
    const rows = report.comparison.map((r) => tr(
      [text("td", r.variant, "mono"), r.method, text("td", r.k, "num"), text("td", pct(r.sparsity), "num"),
        ...metrics.map((m) => text("td", r.metrics[m] === undefined ? "–" : withInterval(r.metrics[m], r.ci95[m]), "num")),
        text("td", bytes(r.bytes.compressed), "num"), text("td", bytes(r.bytes.dense), "num")],
      { variant: r.variant }));
    table($("comparison-table"), ths, rows);
    $("interval-method").textContent = `Intervals: ${report.interval_method}.`;
    if (report.aggregate) {
      const aggRows = report.aggregate.map((a) => tr(
        [text("td", a.variant, "mono"), a.seeds.join(", "),
          ...["sparsity", ...metrics].map((m) => {
            const s = m === "sparsity" ? a.sparsity : a.metrics[m];
            return text("td", !s ? "–" : s.n_seeds < 2 ? `${pct(s.mean)} (1 seed)` : `${pct(s.mean)} ± ${pct(s.std)}`, "num");
          })], { variant: a.variant }));
      table($("aggregate-table"), ["network", "seeds", "sparsity %", ...metrics.map((m) => `${m} % (mean ± std)`)], aggRows);
      $("aggregate-box").hidden = false;
    }
  }

  function checks(report) {
    const ul = $("checks");
    ul.replaceChildren();
    for (const f of report.flags) {
      const li = text("li", "", "flagged");
      li.dataset.check = f.check;
      li.dataset.variant = f.variant;
      li.append(text("strong", `${f.check.replace(/_/g, " ")} in ${f.variant}`), document.createTextNode(`: ${f.message}`));
      ul.appendChild(li);
    }
    if (!report.flags.length) ul.appendChild(text("li", "No check flagged.", "muted"));
    const rules = text("li", "Each network is checked for: " + Object.values(report.check_rules).join("; ") + ".", "muted small");
    ul.appendChild(rules);
  }

  function inference(report) {
    const rows = Object.entries(report.variants).filter(([, v]) => v.inference);
    $("inference-box").hidden = !rows.length;
    if (!rows.length) return;
    const keys = [...new Set(rows.flatMap(([, v]) => Object.keys(v.inference.latency)))];
    const ratio = (e, scale, unit) => (!e || typeof e.variant !== "number" ? "–"
      : `${unit ? (e.variant * scale).toPrecision(3) + " " + unit : e.variant.toLocaleString()}${typeof e.ratio === "number" ? ` (${e.ratio.toPrecision(3)}x)` : ""}`);
    const speed = (e) => (!e.measurable ? "not measurable at this size"
      : `${e.speedup.toPrecision(3)}x [${e.speedup_ci95[0].toPrecision(3)}, ${e.speedup_ci95[1].toPrecision(3)}] ${e.verdict}`);
    const body = rows.map(([name, v]) => {
      const inf = v.inference;
      const lat = keys.map((k) => {
        const e = inf.latency[k];
        if (!e) return text("td", "–");
        const iqr = e.variant_iqr ? ` [${ms(e.variant_iqr[0])}–${ms(e.variant_iqr[1])}]` : "";
        const td = text("td", `${ms(e.variant)}${iqr} vs dense ${ms(e.dense)}: ${speed(e)}`);
        td.dataset.latency = k;
        return td;
      });
      return tr([text("td", name, "mono"), ratio(inf.params), ratio(inf.nonzero_params), ratio(inf.macs), ...lat,
        ratio(inf.peak_memory, 1 / 2 ** 20, "MiB")], { variant: name });
    });
    table($("inference-table"), ["network", "parameters", "nonzero parameters", "MACs", ...keys.map((k) => `${k} latency (speed-up, 95% CI)`), "peak memory"], body);
    const method = rows[0][1].inference.method;
    const ul = $("inference-method");
    ul.replaceChildren(...Object.entries(method).map(([what, how]) => text("li", `${what}: ${how}`)));
  }

  function timings(report) {
    const entries = Object.entries(report.variants);
    const stages = [...new Set(entries.flatMap(([, v]) => Object.keys(v.timings.stages)))];
    const attacks = [...new Set(entries.flatMap(([, v]) => Object.keys(v.timings.attacks)))];
    $("timings-box").hidden = !stages.length && !attacks.length;
    const sec = (s) => (typeof s === "number" ? s.toFixed(1) : "–");
    const rows = entries.map(([name, v]) => tr([text("td", name, "mono"),
      ...stages.map((s) => text("td", sec(v.timings.stages[s]), "num")),
      ...attacks.map((a) => text("td", sec(v.timings.attacks[a]), "num"))], { variant: name }));
    table($("timings-table"), ["network", ...stages, ...attacks.map((a) => `${a} (attack)`)], rows);
  }

  function procedures(report) {
    const ul = $("procedures");
    ul.replaceChildren();
    for (const [m, how] of Object.entries(report.procedures)) {
      const li = document.createElement("li");
      li.dataset.metric = m;
      li.append(text("strong", m), document.createTextNode(`: ${how}`));
      ul.appendChild(li);
    }
    const samples = $("samples");
    samples.replaceChildren(...Object.entries(report.samples).map(([name, s]) => text("li",
      `${name}: ${s.n} of ${s.of} test samples, ${s.how}; per class ${Object.entries(s.per_class).map(([c, n]) => `${c}: ${n}`).join(", ")}`)));
  }

  /* One plot: accuracy against sparsity per method (seed mean when there are seeds), dense as lines. */
  function plot(report) {
    const box = $("sparsity-plot");
    const hl = report.headline_robust_metric;
    const points = report.aggregate
      ? report.aggregate.map((a) => ({ method: a.method, sparsity: a.sparsity ? a.sparsity.mean : 0,
        metrics: Object.fromEntries(Object.entries(a.metrics).map(([m, s]) => [m, s.mean])) }))
      : report.comparison;
    const series = [];
    const hlines = [];
    const methods = [...new Set(points.filter((r) => r.method !== "dense").map((r) => r.method))];
    methods.forEach((method, i) => {
      const color = HydraCharts.COLORS[i % HydraCharts.COLORS.length];
      const own = points.filter((r) => r.method === method).sort((a, b) => a.sparsity - b.sparsity);
      for (const [metric, dashed] of [["benign_acc", true], [hl, false]]) {
        series.push({ name: `${method} ${metric}`, color, dashed,
          points: own.filter((r) => typeof r.metrics[metric] === "number").map((r) => [100 * r.sparsity, 100 * r.metrics[metric]]) });
      }
    });
    const dense = points.find((r) => r.method === "dense");
    if (dense) {
      if (typeof dense.metrics.benign_acc === "number") hlines.push({ y: 100 * dense.metrics.benign_acc, name: "dense benign", dashed: true });
      if (typeof dense.metrics[hl] === "number") hlines.push({ y: 100 * dense.metrics[hl], name: `dense ${hl}` });
    }
    const chart = HydraCharts.lineChart(box, { title: "accuracy (%) against sparsity (% of weights pruned)", series, hlines,
      xLabel: "sparsity %", yLabel: "accuracy %", yMin: 0 });
    box.replaceChildren(...chart.childNodes);
    box.classList.add("chart-box");
  }

  function layers(report) {
    const variants = Object.entries(report.variants).filter(([, v]) => v.sparsity && Object.keys(v.sparsity.layers).length);
    const names = [...new Set(variants.flatMap(([, v]) => Object.keys(v.sparsity.layers)))];
    const el = $("layers-table");
    if (!variants.length) {
      el.replaceChildren(tr([text("td", "no compressed artifact, so no measured sparsity", "muted")]));
      return;
    }
    const rows = names.map((layer) => {
      const first = variants.find(([, v]) => v.sparsity.layers[layer]);
      return tr([text("td", layer, "mono"), text("td", first ? first[1].sparsity.layers[layer].n : "–", "num"),
        ...variants.map(([, v]) => {
          const l = v.sparsity.layers[layer];
          return text("td", l ? `${pct(l.sparsity)} (${l.nnz} of ${l.n} kept)` : "–", "num");
        })], { layer });
    });
    rows.push(tr([text("td", "total", "mono"), text("td", variants[0][1].sparsity.prunable_params, "num"),
      ...variants.map(([, v]) => text("td", pct(v.sparsity.total), "num"))]));
    table(el, ["layer", "weights", ...variants.map(([name]) => `${name} sparsity %`)], rows);
  }

  function artifacts(report) {
    const rows = [];
    const group = (title, files) => {
      rows.push(tr([text("th", title)], { group: title }));
      for (const [, f] of files) rows.push(tr([text("td", f.name, "mono"), text("td", bytes(f.size), "num"), text("td", f.sha256, "sha")], { artifact: f.name }));
    };
    for (const [name, v] of Object.entries(report.variants)) group(name, Object.entries(v.artifacts));
    group("run", Object.entries(report.artifacts).map(([name, f]) => [name, { ...f, name }]));
    table($("report-artifacts"), ["file", "size", "sha256"], rows);
  }

  function render(report) {
    const ds = report.dataset;
    const obj = report.objective;
    $("report-summary").textContent = `${report.arch} on ${ds.name} (${ds.n_train} train / ${ds.n_test} test), `
      + `objective ${obj.type}${obj.eps !== undefined ? ", eps " + obj.eps : ""}${obj.norm ? " (" + obj.norm + ")" : ""}, `
      + `device ${report.device}. Headline robust number: ${report.headline_robust_metric}.`;
    const metrics = metricNames(report);
    comparison(report, metrics);
    checks(report);
    inference(report);
    timings(report);
    procedures(report);
    plot(report);
    layers(report);
    artifacts(report);
  }

  return { render, headline, pct, bytes, text, table, tr };
})();
