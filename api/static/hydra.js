/* The dashboard's pages. Every call goes to the service's JSON API with the key from sessionStorage
   as the Bearer header; the key is never put in a URL. */
"use strict";

(function () {
  const KEY = "hydra.apiKey";
  const FINAL = new Set(["succeeded", "failed", "canceled"]);
  const body = document.body;
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ the key
  // sessionStorage: this tab only; localStorage only when "remember in this browser" was ticked.
  const getKey = () => sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
  const remembered = () => !!localStorage.getItem(KEY);
  function showKeyState() {
    const key = getKey();
    $("key-state").textContent = key ? (remembered() ? "key remembered in this browser" : "key set for this tab") : "";
    $("key-remember").checked = remembered();
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
  // report.js (loaded first) defines the number formats and DOM helpers the report and these pages share
  const { pct, bytes, text, table: fillTable, tr: tableRow } = window.HydraReport;
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
  function badge(status) { return text("span", status, `badge ${status}`); }
  function stageText(job) {
    if (FINAL.has(job.status)) return job.phase || job.status; // not the last stage it ran ("evaluate lwm_k0.1")
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
  function progressBar(fraction, status) {
    const wrap = text("div", null, "progress");
    const bar = text("div", null, "bar" + (status === "succeeded" ? " done" : ""));
    bar.style.width = `${Math.round(100 * (fraction || 0))}%`;
    wrap.appendChild(bar);
    return wrap;
  }

  // ------------------------------------------------------------------ the job list
  /* Search by name, filter by status or tag, sort, pages of limit/offset with the total; tick jobs to
     compare them; delete a stopped job; every network's headline from the row's `headlines`. */
  async function jobsPage() {
    const tbody = $("jobs-body");
    const selected = new Set();
    let timer = null;
    let offset = 0;
    let total = 0;
    const limit = () => Number($("jobs-limit").value) || 25;

    function query() {
      const params = new URLSearchParams({ limit: String(limit()), offset: String(offset),
                                           sort: $("jobs-sort").value, order: $("jobs-order").value });
      for (const [id, name] of [["status-filter", "status"], ["jobs-search", "q"], ["jobs-tag", "tag"]]) {
        const value = $(id).value.trim();
        if (value) params.set(name, value);
      }
      return params;
    }

    function headlineList(job) {
      if (!job.headlines || !job.headlines.length) return text("span", headlineMetrics(job.metrics), "small");
      const ul = text("ul", null, "headlines small");
      for (const h of job.headlines) {
        const robust = h.robust_metric && typeof h.robust_acc === "number" ? ` · ${h.robust_metric} ${pct(h.robust_acc)}` : "";
        const li = text("li", `${h.variant} (${pct(h.sparsity)}% sparse): benign ${pct(h.benign_acc)}${robust}`);
        li.dataset.variant = h.variant;
        ul.appendChild(li);
      }
      return ul;
    }

    function labelsCell(job) {
      const td = text("td", null, "small");
      for (const tag of job.tags || []) td.appendChild(text("span", tag, "tag"));
      if (job.note) td.appendChild(text("div", job.note, "muted"));
      const edit = text("button", "edit", "link-dark");
      edit.className = "secondary small";
      edit.addEventListener("click", () => editLabels(job).then(refresh));
      td.appendChild(edit);
      return td;
    }

    function updateCompare() {
      $("compare-button").disabled = selected.size < 2;
      $("compare-button").textContent = `Compare selected${selected.size ? " (" + selected.size + ")" : ""}`;
    }

    async function refresh() {
      clearTimeout(timer);
      let page;
      try {
        page = await api(`/v1/jobs?${query()}`);
      } catch (err) {
        tbody.replaceChildren(row([text("td", `could not load the jobs: ${err.message}`, "error-text")], 10));
        return;
      }
      if (!$("flash").classList.contains("ok")) flash(""); // an error is over; a confirmation stays
      total = page.count;
      if (offset && offset >= total) { offset = Math.max(0, total - limit()); return refresh(); }
      tbody.replaceChildren();
      if (!page.data.length) tbody.appendChild(row([text("td", total ? "No job matches." : "No jobs yet: submit one.", "muted")], 10));
      for (const job of page.data) {
        const tr = document.createElement("tr");
        tr.dataset.jobId = job.id;
        tr.dataset.status = job.status;
        const pick = document.createElement("td");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.className = "pick";
        box.checked = selected.has(job.id);
        box.title = "select to compare";
        box.addEventListener("change", () => { if (box.checked) selected.add(job.id); else selected.delete(job.id); updateCompare(); });
        pick.appendChild(box);
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
        } else {
          const del = text("button", "Delete", "danger delete-job");
          del.addEventListener("click", async () => { if (await deleteJob(job)) { selected.delete(job.id); refresh(); } });
          actions.appendChild(del);
        }
        const metricsCell = document.createElement("td");
        metricsCell.className = "headline-cell";
        metricsCell.appendChild(headlineList(job));
        tr.append(pick, first, st, text("td", stageText(job), "phase"), pr, metricsCell, labelsCell(job),
                  text("td", when(job.created_at), "small"), text("td", when(job.finished_at), "small"), actions);
        tbody.appendChild(tr);
      }
      $("jobs-count").textContent = `${total} job${total === 1 ? "" : "s"}`;
      $("jobs-page").textContent = total ? `${offset + 1}–${offset + page.data.length} of ${total}` : "";
      $("jobs-prev").disabled = offset === 0;
      $("jobs-next").disabled = offset + page.data.length >= total;
      updateCompare();
      const active = page.data.some((j) => !FINAL.has(j.status));
      timer = setTimeout(refresh, active ? 2000 : 10000);
    }
    const restart = () => { offset = 0; refresh(); };
    for (const id of ["status-filter", "jobs-sort", "jobs-order", "jobs-limit"]) $(id).addEventListener("change", restart);
    let typing = null;
    for (const id of ["jobs-search", "jobs-tag"]) $(id).addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(restart, 300); });
    $("jobs-filter").addEventListener("submit", (e) => { e.preventDefault(); restart(); });
    $("jobs-prev").addEventListener("click", () => { offset = Math.max(0, offset - limit()); refresh(); });
    $("jobs-next").addEventListener("click", () => { offset += limit(); refresh(); });
    $("compare-button").addEventListener("click", () => {
      window.location.href = `/ui/compare?ids=${encodeURIComponent([...selected].join(","))}`;
    });
    refresh();
  }

  /* Delete a stopped job (the API refuses a live one with 409: cancel first). True once deleted. */
  async function deleteJob(job) {
    if (!confirm(`Delete job ${job.name || job.id} with its artifacts and checkpoint? This cannot be undone.`)) return false;
    try {
      await api(`/v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
      flash(`Deleted job ${job.name || job.id}.`, "ok");
      return true;
    } catch (err) {
      flash(err.status === 404 ? "That job was already deleted." : `Not deleted: ${err.message}`);
      return err.status === 404;
    }
  }

  /* Tags (comma-separated) and a note, set with PATCH /v1/jobs/{id}. */
  async function editLabels(job) {
    const tags = prompt("Tags, separated by commas (letters, digits, . _ : / + -):", (job.tags || []).join(", "));
    if (tags === null) return;
    const note = prompt("Note (empty: none):", job.note || "");
    if (note === null) return;
    try {
      await api(`/v1/jobs/${encodeURIComponent(job.id)}`, {
        method: "PATCH", json: { tags: tags.split(",").map((t) => t.trim()).filter(Boolean), note } });
    } catch (err) { flash(`Not saved: ${err.field ? err.field + ": " : ""}${err.message}`); }
  }

  // ------------------------------------------------------------------ compare jobs
  /* GET /v1/jobs/compare: every job's comparison rows in one table, and one plot of accuracy against
     sparsity (benign dashed, the headline robust metric solid), one colour per job. */
  async function comparePage() {
    const ids = new URLSearchParams(window.location.search).get("ids") || "";
    if (!ids) { $("compare-summary").textContent = "Tick two or more jobs in the job list, then press Compare selected."; return; }
    let data;
    try { data = await api(`/v1/jobs/compare?ids=${encodeURIComponent(ids)}`); }
    catch (err) { $("compare-summary").textContent = `Could not compare: ${err.message}`; return; }
    const list = $("compare-jobs");
    list.replaceChildren();
    data.jobs.forEach((j, i) => {
      const li = document.createElement("li");
      li.dataset.jobId = j.id;
      const a = text("a", j.name || j.id.slice(0, 8));
      a.href = `/ui/jobs/${encodeURIComponent(j.id)}`;
      const swatch = text("span", "■ ");
      swatch.style.color = HydraCharts.COLORS[i % HydraCharts.COLORS.length];
      li.append(swatch, a, document.createTextNode(
        ` ${j.arch || ""} on ${j.dataset || "?"}, ${j.objective || "?"}${j.headline_robust_metric ? ", headline " + j.headline_robust_metric : ""}${j.note ? " — " + j.note : ""}`));
      list.appendChild(li);
    });
    $("compare-summary").textContent = `${data.jobs.length} jobs, ${data.rows.length} networks.`;
    const header = ["job", "network", "method", text("th", "k (kept)", "num"), text("th", "sparsity %", "num"),
                    ...data.metrics.map((m) => text("th", `${m} %`, "num"))];
    const metricCell = (r, m) => {
      const td = text("td", pct(r[m]), "num");
      const ci = r.ci95 && r.ci95[m];
      if (Array.isArray(ci)) td.title = `95% interval ${pct(ci[0])} – ${pct(ci[1])}`;
      return td;
    };
    fillTable($("compare-table"), header, data.rows.map((r) => tableRow(
      [text("td", r.job_name || r.job_id.slice(0, 8)), text("td", r.variant, "mono"), text("td", r.method),
       text("td", r.k, "num"), text("td", pct(r.sparsity), "num"), ...data.metrics.map((m) => metricCell(r, m))],
      { jobId: r.job_id, variant: r.variant })));
    const series = [];
    data.jobs.forEach((j, i) => {
      const own = data.rows.filter((r) => r.job_id === j.id).sort((a, b) => (a.sparsity || 0) - (b.sparsity || 0));
      if (!own.length) return;
      const color = HydraCharts.COLORS[i % HydraCharts.COLORS.length];
      const label = j.name || j.id.slice(0, 8);
      series.push({ name: `${label} benign`, color, dashed: true,
                    points: own.filter((r) => typeof r.benign_acc === "number").map((r) => [100 * (r.sparsity || 0), 100 * r.benign_acc]) });
      const metric = j.headline_robust_metric;
      if (metric) series.push({ name: `${label} ${metric}`, color,
                                points: own.filter((r) => typeof r[metric] === "number").map((r) => [100 * (r.sparsity || 0), 100 * r[metric]]) });
    });
    const plot = $("compare-plot");
    const chart = HydraCharts.lineChart(plot, { title: "accuracy (%) against sparsity (% of weights pruned)", series,
                                               xLabel: "sparsity %", yLabel: "accuracy %", yMin: 0, markers: true });
    plot.replaceChildren(...chart.childNodes);
  }

  function row(cells, span) {
    const tr = document.createElement("tr");
    for (const c of cells) { if (span) c.colSpan = span; tr.appendChild(c); }
    return tr;
  }

  /* The job page's delete button (shown once the job has stopped) and its tags and note. */
  function jobActions(j) {
    const button = $("delete-button");
    button.hidden = !FINAL.has(j.status);
    if (!button.dataset.ready) {
      button.dataset.ready = "1";
      button.addEventListener("click", async () => { if (await deleteJob(j)) window.location.href = "/ui/jobs"; });
    }
    const labels = $("job-labels");
    labels.replaceChildren();
    for (const tag of j.tags || []) labels.appendChild(text("span", tag, "tag"));
    if (j.note) labels.appendChild(text("span", j.note));
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
      jobActions(j);
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
      // grouped by network (<variant>.<format>), each group with one zip of its files (GET .../bundle)
      const SUFFIXES = [".compressed.safetensors", ".dense.safetensors", ".channel.safetensors", ".onnx", ".model_card.md"];
      const networkOf = (name) => {
        const suffix = SUFFIXES.find((s) => name.endsWith(s));
        return suffix ? name.slice(0, -suffix.length) : "";
      };
      const groups = new Map();
      for (const a of list) {
        const key = networkOf(a.name);
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(a);
      }
      const ordered = [...groups.entries()].sort(([x], [y]) => (x === "") - (y === "") || (x === "dense" ? -1 : y === "dense" ? 1 : x.localeCompare(y)));
      for (const [network, files] of ordered) {
        const head = document.createElement("tr");
        head.dataset.group = network || "run";
        const title = text("th", network || "the run (report, plots, spec)");
        title.colSpan = 3;
        const cell = document.createElement("td");
        if (network) {
          const zip = text("button", "Download zip", "secondary");
          zip.dataset.bundle = network;
          const zipState = text("span", "");
          zip.addEventListener("click", () => downloadBundle(network, zipState));
          cell.append(zip, zipState);
        }
        head.append(title, cell);
        tbody.appendChild(head);
        for (const a of files) appendArtifact(tbody, a);
      }
    }

    function appendArtifact(tbody, a) {
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

    async function downloadBundle(network, state) {
      state.className = "muted small";
      state.textContent = " zipping…";
      try {
        const resp = await api(`/v1/jobs/${encodeURIComponent(jobId)}/bundle?variant=${encodeURIComponent(network)}`, { raw: true });
        const url = URL.createObjectURL(await resp.blob());
        const a = document.createElement("a");
        a.href = url;
        a.download = `${jobId.slice(0, 8)}-${network}.zip`;
        document.body.appendChild(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
        state.className = "verified";
        state.textContent = " saved (SHA256SUMS inside)";
      } catch (err) {
        state.className = "mismatch";
        state.textContent = ` ${err.message}`;
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
  /* The submit page's form (eps, methods, k, epochs per stage) and cost estimate. The YAML stays the
     one source of the spec: the form is filled from it, and a form change is written into it by the
     service (/ui/api/spec-form). The estimate (POST /v1/jobs/estimate) follows every change. */
  function specFormAndEstimate(editor) {
    const FORM = { eps: "form-eps", methods: "form-methods", k: "form-k",
                   pretrain_epochs: "form-pretrain", prune_epochs: "form-prune", finetune_epochs: "form-finetune" };
    const format = () => $("choose-format").value;
    let timer = null;
    let seq = 0;

    function number(textValue) { // "0.1", "8/255": what a person types for a radius
      const m = /^\s*(\d+(?:\.\d*)?|\.\d+)(?:e(-?\d+))?\s*(?:\/\s*(\d+(?:\.\d*)?))?\s*$/i.exec(textValue);
      if (!m) return null;
      const value = parseFloat(m[1] + (m[2] ? "e" + m[2] : "")) / (m[3] ? parseFloat(m[3]) : 1);
      return isFinite(value) && value > 0 ? value : null;
    }
    const list = (textValue) => textValue.split(",").map((t) => t.trim()).filter(Boolean);

    function setField(id, value, typedEquals) {
      const input = $(id);
      if (document.activeElement === input) return;
      if (typedEquals && typedEquals(input.value)) return; // keep what was typed (8/255)
      input.value = value === null || value === undefined ? "" : String(value);
    }

    function fillForm(spec) {
      const objective = spec.objective || {};
      const eps = objective.eps;
      $(FORM.eps).disabled = eps === undefined;
      $(FORM.eps).placeholder = eps === undefined ? `no eps for ${objective.type}` : "0.1 or 8/255";
      setField(FORM.eps, eps, (typed) => typeof eps === "number" && Math.abs((number(typed) || -1) - eps) < 1e-12);
      const pruning = spec.pruning || {};
      setField(FORM.methods, (pruning.methods || []).join(", "));
      setField(FORM.k, (pruning.k || []).join(", "));
      const stages = spec.stages || {};
      for (const stage of ["pretrain", "prune", "finetune"]) {
        setField(FORM[`${stage}_epochs`], stages[stage] === null ? 0 : (stages[stage] || {}).epochs);
      }
    }

    function compact(n) {
      if (typeof n !== "number") return "–";
      for (const [div, unit] of [[1e12, " T"], [1e9, " G"], [1e6, " M"], [1e3, " k"]]) if (n >= div) return `${(n / div).toFixed(1)}${unit}`;
      return String(Math.round(n));
    }
    function duration(s) {
      if (typeof s !== "number") return "–";
      if (s < 90) return `${Math.round(s)} s`;
      if (s < 5400) return `${Math.round(s / 60)} min`;
      return `${(s / 3600).toFixed(1)} h`;
    }

    function showEstimate(est) {
      const time = typeof est.seconds === "number" ? ` ≈ ${duration(est.seconds)} at ${compact(est.throughput)} passes/s` : "";
      $("estimate-summary").textContent = `${compact(est.total_sample_passes)} sample-passes (forward+backward passes × samples)${time}. `
        + (typeof est.seconds === "number" ? `Throughput: ${est.throughput_source}.` : `${est.throughput_source.charAt(0).toUpperCase()}${est.throughput_source.slice(1)}.`)
        + (est.notes.length ? ` ${est.notes.join("; ")}.` : "");
      $("estimate-summary").className = "";
      $("estimate").dataset.ready = "1";
      fillTable($("estimate-table"), ["stage", "runs", "epochs", "samples", "passes per sample", "sample-passes", "time"],
                est.stages.map((s) => tableRow(
                  [text("td", s.stage), text("td", s.runs, "num"), text("td", s.epochs, "num"), text("td", compact(s.samples), "num"),
                   text("td", s.passes_per_sample, "num"), text("td", compact(s.sample_passes), "num"), text("td", duration(s.seconds), "num")],
                  { stage: s.stage })));
    }

    async function parsed() {
      const result = await api("/ui/api/spec-parse", { method: "POST", json: { text: editor.value, format: format() } });
      return result.spec;
    }

    async function sync() {
      const mine = ++seq;
      $("estimate").dataset.ready = ""; // stale until this answer arrives
      $("estimate-state").textContent = "(updating…)";
      try {
        const spec = await parsed();
        if (mine !== seq) return;
        if (!spec) { $("estimate-state").textContent = "(the spec does not parse)"; return; }
        fillForm(spec);
        const est = await api("/v1/jobs/estimate", { method: "POST", json: spec });
        if (mine !== seq) return;
        showEstimate(est);
        $("estimate-state").textContent = "";
      } catch (err) {
        if (mine !== seq) return;
        $("estimate").dataset.ready = "";
        $("estimate-state").textContent = "";
        $("estimate-summary").textContent = `No estimate: ${err.field ? err.field + ": " : ""}${err.message}`;
        $("estimate-summary").className = "error-text";
      }
    }
    const later = () => { $("estimate").dataset.ready = ""; clearTimeout(timer); timer = setTimeout(sync, 400); };

    /* One form change at a time, in order: each reads the YAML the previous one wrote. */
    let chain = Promise.resolve();
    const applyForm = (e) => {
      const id = e.target.id, value = e.target.value;
      chain = chain.then(() => applyField(id, value));
    };

    async function applyField(id, value) {
      const fields = {};
      const error = $("form-error");
      error.hidden = true;
      try {
        if (id === FORM.eps) {
          const eps = number(value);
          if (eps === null) throw new Error(`eps: "${value}" is not a positive number or fraction (0.1, 8/255)`);
          fields.eps = eps;
        } else if (id === FORM.methods) fields.methods = list(value);
        else if (id === FORM.k) {
          fields.k = list(value).map((t) => number(t));
          if (fields.k.some((k) => k === null)) throw new Error(`k: "${value}" is not a list of numbers`);
        } else {
          const stage = Object.keys(FORM).find((name) => FORM[name] === id);
          fields[stage] = Math.max(0, parseInt(value || "0", 10));
        }
        const spec = await parsed();
        if (!spec) throw new Error("the YAML does not parse: fix it first");
        const result = await api("/ui/api/spec-form", { method: "POST", json: { spec, fields, format: format() } });
        editor.value = result.text;
        editor.dispatchEvent(new Event("input"));
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      }
    }

    /* A dataset of another shape takes an architecture built for it (MNIST's network on CIFAR images
       would be refused at submission): switched before the template reloads (capture phase). */
    const shapes = { arch: {}, dataset: {} };
    Promise.all([api("/v1/catalogue/architectures"), api("/v1/catalogue/datasets")]).then(([a, d]) => {
      for (const e of a.data) shapes.arch[e.name] = JSON.stringify(e.info.input_shape || null);
      for (const e of d.data) shapes.dataset[e.name] = JSON.stringify(e.info.input_shape || null);
    }).catch(() => {});
    $("choose-dataset").parentElement.addEventListener("change", (e) => {
      if (e.target.id !== "choose-dataset") return;
      const want = shapes.dataset[e.target.value];
      const arch = $("choose-arch");
      if (!want || want === "null" || shapes.arch[arch.value] === want) return;
      const fits = [...arch.options].map((o) => o.value).filter((name) => shapes.arch[name] === want);
      if (fits.length) arch.value = fits.find((n) => n.startsWith("cnn_small")) || fits[0];
    }, true);

    for (const input of Object.values(FORM)) $(input).addEventListener("change", applyForm);
    $("spec-form").addEventListener("submit", (e) => e.preventDefault());
    editor.addEventListener("input", later);
    editor.addEventListener("hydra:loaded", sync);
  }

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
        editor.dispatchEvent(new Event("hydra:loaded")); // the form and the estimate follow
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
    specFormAndEstimate(editor);
    loadCatalogue();
  }

  // ------------------------------------------------------------------ start
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = $("api-key").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    const remember = $("key-remember").checked;
    try {
      await api("/v1/jobs?limit=1");
      if (remember) localStorage.setItem(KEY, value); else localStorage.removeItem(KEY);
      flash("");
      window.location.reload();
    } catch (err) {
      sessionStorage.removeItem(KEY);
      showKeyState();
      flash(err.status === 401 ? "The service refused this key (401)." : `Could not check the key: ${err.message}`);
    }
  });
  $("key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); localStorage.removeItem(KEY); window.location.reload(); });
  showKeyState();
  if (getKey()) {
    const pages = { jobs: jobsPage, job: jobPage, submit: submitPage, compare: comparePage };
    (pages[body.dataset.page] || (() => {}))();
  }
})();
