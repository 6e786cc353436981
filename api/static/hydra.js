/* The dashboard's pages. Every call goes to the service's JSON API with the key from sessionStorage
   as the Bearer header; the key is never put in a URL. */
"use strict";

(function () {
  const KEY = "hydra.apiKey";
  const FINAL = new Set(["succeeded", "failed", "canceled"]);
  const body = document.body;
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ the key
  const getKey = () => sessionStorage.getItem(KEY) || "";
  function showKeyState() {
    const key = getKey();
    $("key-state").textContent = key ? "key set for this tab" : "";
    $("key-forget").hidden = !key;
    $("api-key").value = "";
    $("api-key").placeholder = key ? "•••••••• (replace)" : "paste your API key";
    $("need-key").hidden = !!key;
    body.classList.toggle("no-key", !key); // hides every .needs-key section (their own hidden state stays)
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.detail) || `HTTP ${status}`);
      this.status = status;
      this.code = (body && body.error_code) || `http_${status}`;
      this.field = (body && body.field) || null;
    }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: `Bearer ${getKey()}` }, options.headers || {});
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(options.json);
    }
    const resp = await fetch(path, { method: options.method || "GET", headers, body: options.body, signal: options.signal });
    if (options.raw) {
      if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
      return resp;
    }
    const data = await resp.json().catch(() => null);
    if (!resp.ok) {
      const err = new ApiError(resp.status, data);
      if (resp.status === 401) flash("The service refused the key (401): enter a valid API key.");
      throw err;
    }
    return data;
  }

  function flash(text, kind) {
    const box = $("flash");
    box.textContent = text;
    box.className = "flash" + (kind ? " " + kind : "");
    box.hidden = !text;
  }

  // ------------------------------------------------------------------ formatting
  const pct = (v) => (typeof v === "number" ? (100 * v).toFixed(2) : "–");
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
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
  function badge(status) { return text("span", status, `badge ${status}`); }
  function stageText(job) {
    if (!job.stage) return "–";
    const epochs = job.epochs ? ` ${job.epoch || 0}/${job.epochs}` : "";
    return `${job.stage}${job.variant ? " " + job.variant : ""}${epochs}`;
  }
  const HEADLINE = ["robust_acc", "val_pgd_acc", "pgd_acc", "benign_acc", "val_acc", "train_acc", "loss"];
  function headlineMetrics(metrics) {
    if (!metrics) return "–";
    const keys = HEADLINE.filter((k) => typeof metrics[k] === "number");
    const others = Object.keys(metrics).filter((k) => /^val_/.test(k) && !keys.includes(k));
    return keys.concat(others).slice(0, 4).map((k) => `${k} ${k === "loss" ? metrics[k].toFixed(3) : pct(metrics[k])}`).join(" · ") || "–";
  }
  /* A succeeded job's headline (report.js): reports never change once written, so each is fetched
     once per tab. */
  async function reportHeadline(jobId) {
    const cacheKey = `hydra.headline.${jobId}`;
    const cached = sessionStorage.getItem(cacheKey);
    if (cached) return cached;
    const line = HydraReport.headline(await api(`/v1/jobs/${encodeURIComponent(jobId)}/report`));
    sessionStorage.setItem(cacheKey, line);
    return line;
  }

  function progressBar(fraction, status) {
    const wrap = text("div", null, "progress");
    const bar = text("div", null, "bar" + (status === "succeeded" ? " done" : ""));
    bar.style.width = `${Math.round(100 * (fraction || 0))}%`;
    wrap.appendChild(bar);
    return wrap;
  }

  // ------------------------------------------------------------------ the job list
  async function jobsPage() {
    const tbody = $("jobs-body");
    let timer = null;
    async function refresh() {
      clearTimeout(timer);
      const status = $("status-filter").value;
      let page;
      try {
        page = await api(`/v1/jobs?limit=100${status ? "&status=" + encodeURIComponent(status) : ""}`);
      } catch (err) {
        tbody.replaceChildren(row([text("td", `could not load the jobs: ${err.message}`, "error-text")], 8));
        return;
      }
      flash("");
      tbody.replaceChildren();
      if (!page.data.length) tbody.appendChild(row([text("td", "No jobs yet: submit one.", "muted")], 8));
      for (const job of page.data) {
        const tr = document.createElement("tr");
        tr.dataset.jobId = job.id;
        tr.dataset.status = job.status;
        const link = text("a", job.name || job.id.slice(0, 8));
        link.href = `/ui/jobs/${encodeURIComponent(job.id)}`;
        const first = document.createElement("td");
        first.appendChild(link);
        first.appendChild(text("div", job.id, "muted small mono"));
        const st = document.createElement("td");
        st.appendChild(badge(job.status));
        const pr = document.createElement("td");
        pr.appendChild(progressBar(job.fraction, job.status));
        pr.appendChild(text("span", `${Math.round(100 * (job.fraction || 0))}%`, "muted small"));
        const actions = document.createElement("td");
        if (!FINAL.has(job.status)) {
          const cancel = text("button", job.cancel_requested ? "canceling…" : "Cancel", "danger");
          cancel.disabled = !!job.cancel_requested;
          cancel.addEventListener("click", async () => {
            if (!confirm(`Cancel job ${job.name || job.id}?`)) return;
            try { await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" }); } catch (err) { flash(err.message); }
            refresh();
          });
          actions.appendChild(cancel);
        }
        const metricsCell = text("td", headlineMetrics(job.metrics), "small");
        if (job.status === "succeeded") {
          metricsCell.classList.add("headline");
          reportHeadline(job.id).then((line) => { metricsCell.textContent = line; metricsCell.dataset.report = "1"; })
            .catch(() => {});
        }
        tr.append(first, st, text("td", stageText(job)), pr, metricsCell,
                  text("td", when(job.created_at), "small"), text("td", when(job.finished_at), "small"), actions);
        tbody.appendChild(tr);
      }
      $("jobs-count").textContent = `${page.count} job${page.count === 1 ? "" : "s"}`;
      const active = page.data.some((j) => !FINAL.has(j.status));
      timer = setTimeout(refresh, active ? 2000 : 10000);
    }
    $("status-filter").addEventListener("change", refresh);
    refresh();
  }

  function row(cells, span) {
    const tr = document.createElement("tr");
    for (const c of cells) { if (span) c.colSpan = span; tr.appendChild(c); }
    return tr;
  }

  // ------------------------------------------------------------------ the event stream
  /* Server-Sent Events over fetch (EventSource cannot send the Authorization header). Resumes from
     the last event id after a dropped connection; resolves with the end event's data. */
  async function streamEvents(jobId, onEvent, onState) {
    let after = 0;
    for (;;) {
      try {
        onState("live");
        const resp = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events?stream=true&after=${after}`,
                               { headers: { Accept: "text/event-stream" }, raw: true });
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let kind = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) kind = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
            }
            if (!data.length) continue;
            const payload = JSON.parse(data.join("\n"));
            if (kind === "end") { onState("ended"); return payload; }
            after = Math.max(after, payload.id || 0);
            onEvent(kind, payload);
          }
        }
      } catch (err) {
        if (err instanceof ApiError && (err.status === 401 || err.status === 404)) { onState("stopped"); throw err; }
      }
      onState("reconnecting…");
      await new Promise((r) => setTimeout(r, 2000));
    }
  }

  function eventLine(kind, event) {
    const p = event.payload || {};
    const m = (metrics) => Object.entries(metrics || {}).map(([k, v]) => `${k}=${typeof v === "number" ? v.toFixed(4) : v}`).join(" ");
    switch (kind) {
      case "epoch_finished": return `${p.stage} ${p.variant} epoch ${p.epoch}/${p.epochs}  ${m(p.metrics)}`;
      case "evaluation_finished": return `evaluate ${p.variant}  ${m(p.metrics)}`;
      case "stage_started": return `-- ${p.stage} ${p.variant} (${p.epochs} epochs)`;
      case "status": return `status: ${p.status}${p.attempt ? " attempt " + p.attempt : ""}${p.reason ? " (" + p.reason + ")" : ""}${p.error_reason ? ": " + p.error_reason : ""}`;
      case "error": return `error: ${p.reason}`;
      default: return `${kind} ${Object.keys(p).length ? JSON.stringify(p) : ""}`;
    }
  }

  // ------------------------------------------------------------------ one job
  function jobPage() {
    const jobId = body.dataset.jobId;
    const epochs = []; // {variant, stage, epoch, metrics}
    let job = null;
    let reportShown = false;
    let poll = null;

    function showJob(j) {
      job = j;
      $("job-name").textContent = j.name || "Job";
      const st = $("job-status");
      st.textContent = j.status;
      st.className = `badge ${j.status}`;
      $("job-status").dataset.status = j.status;
      const bar = $("job-progress-bar");
      bar.style.width = `${Math.round(100 * (j.fraction || 0))}%`;
      bar.className = "bar" + (j.status === "succeeded" ? " done" : "");
      $("job-stage").textContent = stageText(j);
      $("job-fraction").textContent = `${(100 * (j.fraction || 0)).toFixed(1)}%`;
      $("job-attempt").textContent = `${j.attempt} of ${j.max_attempts}`;
      $("job-created").textContent = when(j.created_at);
      $("job-started").textContent = when(j.started_at);
      $("job-finished").textContent = when(j.finished_at);
      $("job-error").hidden = !j.error_reason;
      $("job-error").textContent = j.error_reason || "";
      $("job-metrics").textContent = j.metrics ? `latest: ${headlineMetrics(j.metrics)}` : "";
      $("cancel-button").hidden = FINAL.has(j.status);
      $("cancel-button").disabled = !!j.cancel_requested;
      $("cancel-button").textContent = j.cancel_requested ? "Canceling…" : "Cancel job";
      if (j.spec && !$("job-spec").textContent) $("job-spec").textContent = JSON.stringify(j.spec, null, 2);
      if (FINAL.has(j.status)) {
        clearInterval(poll);
        loadArtifacts();
        if (j.status === "succeeded" && !reportShown) loadReport();
      }
    }

    async function refreshJob() {
      try { showJob(await api(`/v1/jobs/${encodeURIComponent(jobId)}`)); } catch (err) {
        if (err.status === 404) { flash(`No job ${jobId} for this key.`); clearInterval(poll); }
      }
    }

    $("cancel-button").addEventListener("click", async () => {
      if (!confirm("Cancel this job? A running job stops at its next batch; its checkpoint stays.")) return;
      try { showJob(await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" })); }
      catch (err) { flash(err.message); }
    });

    function drawCurves() {
      const box = $("curves");
      box.replaceChildren();
      if (!epochs.length) { box.appendChild(text("p", "No epoch finished yet.", "muted")); return; }
      const names = [];
      for (const e of epochs) for (const k of Object.keys(e.metrics || {})) if (!names.includes(k) && k !== "lr") names.push(k);
      const order = (k) => (k === "loss" ? 0 : k === "train_acc" ? 1 : k === "val_acc" ? 2 : 3);
      names.sort((a, b) => order(a) - order(b));
      const variants = [...new Set(epochs.map((e) => e.variant))];
      for (const metric of names) {
        const series = variants.map((v) => {
          const own = epochs.filter((e) => e.variant === v && typeof e.metrics[metric] === "number");
          return { name: v, points: own.map((e, i) => [i + 1, metric === "loss" ? e.metrics[metric] : 100 * e.metrics[metric]]) };
        });
        const title = { loss: "training loss", train_acc: "training accuracy %", val_acc: "validation accuracy %" }[metric]
          || `${metric.replace(/^val_/, "validation ").replace(/_acc$/, " accuracy").replace(/_/g, " ")} %`;
        HydraCharts.lineChart(box, { id: `curve-${metric}`, title, series, xLabel: "epoch (of the variant: pretrain, or prune then finetune)",
                                     integerX: true, yMin: metric === "loss" ? undefined : 0 });
      }
    }

    function addEvent(kind, event) {
      const list = $("events");
      const li = text("li", `${new Date(event.created_at).toLocaleTimeString()}  ${eventLine(kind, event)}`, kind);
      li.value = event.id;
      list.appendChild(li);
      while (list.children.length > 500) list.removeChild(list.firstChild);
      list.scrollTop = list.scrollHeight;
      if (kind === "epoch_finished") {
        const p = event.payload || {};
        epochs.push({ variant: p.variant, stage: p.stage, epoch: p.epoch, metrics: p.metrics || {} });
        drawCurves();
      }
      if (kind === "status" || kind === "epoch_finished" || kind === "stage_started" || kind === "cancel_requested") refreshJob();
    }

    async function loadArtifacts() {
      let list;
      try { list = (await api(`/v1/jobs/${encodeURIComponent(jobId)}/artifacts`)).data; } catch (err) { return; }
      const tbody = $("artifacts-body");
      tbody.replaceChildren();
      if (!list.length) tbody.appendChild(row([text("td", "none", "muted")], 4));
      for (const a of list) {
        const tr = document.createElement("tr");
        tr.dataset.artifact = a.name;
        const button = text("button", "Download", "secondary");
        button.dataset.download = a.name;
        const cell = document.createElement("td");
        cell.appendChild(button);
        const state = text("span", "");
        cell.appendChild(state);
        button.addEventListener("click", () => download(a, state));
        tr.append(text("td", a.name, "mono"), text("td", bytes(a.size), "num"), text("td", a.sha256, "sha"), cell);
        tbody.appendChild(tr);
      }
    }

    async function blobOf(artifact) {
      const resp = await api(`/v1/jobs/${encodeURIComponent(jobId)}/artifacts/${encodeURIComponent(artifact.name)}`, { raw: true });
      return resp.blob();
    }

    async function sha256Hex(blob) {
      if (!(window.crypto && crypto.subtle)) return null; // only in a secure context (https or localhost)
      const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
      return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    }

    async function download(artifact, state) {
      state.className = "muted small";
      state.textContent = " downloading…";
      try {
        const blob = await blobOf(artifact);
        const digest = await sha256Hex(blob);
        if (digest !== null && (digest !== artifact.sha256 || blob.size !== artifact.size)) {
          state.className = "mismatch";
          state.textContent = ` sha256 ${digest} does not match the listing: not saved`;
          return;
        }
        const url = URL.createObjectURL(blob);
        const a = document.createElement("a");
        a.href = url;
        a.download = artifact.name;
        document.body.appendChild(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
        state.className = "verified";
        state.dataset.verified = digest ? "sha256" : "size";
        state.textContent = digest ? " ✓ sha256 verified" : " saved (sha256 not checked: needs https)";
      } catch (err) {
        state.className = "mismatch";
        state.textContent = ` ${err.message}`;
      }
    }

    async function loadReport() {
      reportShown = true;
      let report;
      try { report = await api(`/v1/jobs/${encodeURIComponent(jobId)}/report`); } catch (err) { reportShown = false; return; }
      $("report-section").hidden = false;
      HydraReport.render(report); // report.js
    }

    refreshJob().then(() => {
      poll = setInterval(() => { if (!job || !FINAL.has(job.status)) refreshJob(); }, 2000);
      streamEvents(jobId, addEvent, (s) => { $("stream-state").textContent = `(stream: ${s})`; })
        .then(() => refreshJob()).catch(() => {});
    });
  }

  // ------------------------------------------------------------------ submit
  function submitPage() {
    const editor = $("spec-editor");
    const gutter = $("editor-gutter");
    const marker = $("editor-marker");
    const LINE = 18, PAD = 8;
    let idempotencyKey = newKey();
    let errorLine = null;
    let catalogue = { objectives: [] };

    function newKey() {
      if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
      return `ui-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    }

    function renderGutter() {
      const n = editor.value.split("\n").length;
      gutter.replaceChildren();
      for (let i = 1; i <= n; i++) {
        const span = text("span", String(i), i === errorLine ? "err" : "");
        span.dataset.line = i;
        gutter.appendChild(span);
        gutter.appendChild(document.createTextNode("\n"));
      }
      gutter.scrollTop = editor.scrollTop;
      placeMarker();
    }

    function placeMarker() {
      if (errorLine === null) { marker.hidden = true; return; }
      marker.hidden = false;
      marker.style.top = `${PAD + (errorLine - 1) * LINE - editor.scrollTop}px`;
    }

    function clearErrors() {
      errorLine = null;
      $("spec-errors").hidden = true;
      $("spec-errors").replaceChildren();
      marker.replaceChildren();
      marker.hidden = true;
      renderGutter();
    }

    function lineOf(field, lines) {
      if (!field || !lines) return null;
      const parts = field.split(".");
      while (parts.length) {
        const path = parts.join(".");
        if (lines[path]) return lines[path];
        parts.pop();
      }
      return null;
    }

    function showError(message, field, line) {
      if (field && message.startsWith(`${field}: `)) message = message.slice(field.length + 2);
      errorLine = line || null;
      const box = $("spec-errors");
      box.replaceChildren();
      const p = document.createElement("p");
      p.id = "spec-error";
      p.dataset.field = field || "";
      p.dataset.line = line || "";
      if (line) {
        const go = text("a", `line ${line}`);
        go.href = "#";
        go.addEventListener("click", (e) => { e.preventDefault(); selectLine(line); });
        p.appendChild(go);
        p.appendChild(document.createTextNode(" — "));
      }
      if (field) p.appendChild(text("code", field));
      p.appendChild(document.createTextNode(`${field ? ": " : ""}${message}`));
      box.appendChild(p);
      box.hidden = false;
      marker.replaceChildren(text("span", `${field ? field + ": " : ""}${message}`));
      marker.dataset.line = line || "";
      renderGutter();
      if (line) selectLine(line, true);
    }

    function selectLine(line, keepFocus) {
      const lines = editor.value.split("\n");
      let start = 0;
      for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
      const end = start + (lines[line - 1] || "").length;
      editor.scrollTop = Math.max(0, (line - 5) * LINE);
      if (!keepFocus) editor.focus();
      editor.setSelectionRange(start, end);
      placeMarker();
    }

    async function loadTemplate() {
      const fmt = $("choose-format").value;
      const params = new URLSearchParams({ format: fmt });
      for (const [id, name] of [["choose-arch", "arch"], ["choose-dataset", "dataset"], ["choose-objective", "objective"]]) {
        if ($(id).value) params.set(name, $(id).value);
      }
      try {
        const t = await api(`/ui/api/spec-template?${params}`);
        editor.value = t.text;
        $("editor-state").textContent = `defaults for ${t.spec.model.arch}, ${t.spec.dataset.name}, ${t.spec.objective.type}`;
      } catch (err) { flash(`could not build the template: ${err.message}`); }
      idempotencyKey = newKey();
      clearErrors();
      const entry = catalogue.objectives.find((o) => o.name === $("choose-objective").value);
      $("objective-help").textContent = entry ? entry.info.description || "" : "";
    }

    function fill(select, entries, preferred) {
      select.replaceChildren();
      for (const e of entries) {
        const opt = text("option", e.name);
        opt.value = e.name;
        select.appendChild(opt);
      }
      if (entries.some((e) => e.name === preferred)) select.value = preferred;
    }

    async function loadCatalogue() {
      try {
        const [arch, data, objectives] = await Promise.all(
          ["architectures", "datasets", "objectives"].map((k) => api(`/v1/catalogue/${k}`)));
        catalogue = { architectures: arch.data, datasets: data.data, objectives: objectives.data };
        fill($("choose-arch"), arch.data, "cnn_small_mnist");
        fill($("choose-dataset"), data.data, "mnist5k");
        fill($("choose-objective"), objectives.data, "trades");
      } catch (err) { flash(`could not load the catalogue: ${err.message}`); }
      await loadTemplate();
    }

    async function submit() {
      const button = $("submit-button");
      button.disabled = true;
      clearErrors();
      $("editor-state").textContent = "checking…";
      try {
        const parsed = await api("/ui/api/spec-parse", { method: "POST", json: { text: editor.value, format: $("choose-format").value } });
        if (parsed.error) { showError(parsed.error.detail, null, parsed.error.line); $("editor-state").textContent = ""; return; }
        let job;
        try {
          job = await api("/v1/jobs", { method: "POST", json: parsed.spec, headers: { "Idempotency-Key": idempotencyKey } });
        } catch (err) {
          if (!(err instanceof ApiError)) throw err;
          const line = lineOf(err.field, parsed.lines);
          showError(err.message, err.field, line);
          $("editor-state").textContent = `refused: ${err.code}`;
          return;
        }
        $("editor-state").textContent = `submitted ${job.id}`;
        window.location.href = `/ui/jobs/${encodeURIComponent(job.id)}`;
      } catch (err) {
        flash(err.message);
      } finally {
        button.disabled = false;
      }
    }

    editor.addEventListener("input", () => { idempotencyKey = newKey(); if (errorLine !== null) clearErrors(); else renderGutter(); });
    editor.addEventListener("scroll", () => { gutter.scrollTop = editor.scrollTop; placeMarker(); });
    editor.addEventListener("keydown", (e) => {
      if (e.key === "Tab") { e.preventDefault(); editor.setRangeText("  ", editor.selectionStart, editor.selectionEnd, "end"); }
    });
    for (const id of ["choose-arch", "choose-dataset", "choose-objective", "choose-format"]) $(id).addEventListener("change", loadTemplate);
    $("reset-template").addEventListener("click", loadTemplate);
    $("submit-button").addEventListener("click", submit);
    loadCatalogue();
  }

  // ------------------------------------------------------------------ start
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = $("api-key").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    try {
      await api("/v1/jobs?limit=1");
      flash("");
      window.location.reload();
    } catch (err) {
      sessionStorage.removeItem(KEY);
      showKeyState();
      flash(err.status === 401 ? "The service refused this key (401)." : `Could not check the key: ${err.message}`);
    }
  });
  $("key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); window.location.reload(); });
  showKeyState();
  if (getKey()) {
    const pages = { jobs: jobsPage, job: jobPage, submit: submitPage };
    (pages[body.dataset.page] || (() => {}))();
  }
})();
