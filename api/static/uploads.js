/* The upload page (/ui/uploads): a network (.onnx or weights) to POST /v1/models, data (an archive of
   class folders or an .npz) to POST /v1/datasets, and the lists of both. The key comes from
   sessionStorage (set by the page header, hydra.js) and goes only into the Authorization header.
   Everything shown is written with textContent: nothing from the service is parsed as HTML. */
"use strict";

(function () {
  const KEY = "hydra.apiKey";
  const $ = (id) => document.getElementById(id);
  const getKey = () => sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || ""; // as hydra.js: "remember" uses localStorage
  const headers = () => ({ Authorization: `Bearer ${getKey()}` });

  function cell(row, text, numeric) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (numeric) td.className = "num";
    row.appendChild(td);
  }

  function fillTable(bodyId, rows, columns) {
    const body = $(bodyId);
    body.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = columns.length;
      td.className = "muted";
      td.textContent = "none yet";
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    for (const item of rows) {
      const tr = document.createElement("tr");
      for (const [get, numeric] of columns) cell(tr, get(item), numeric);
      tr.appendChild(deleteCell(bodyId === "models-body" ? "models" : "datasets", item));
      body.appendChild(tr);
    }
  }

  /* DELETE /v1/models/{id} or /v1/datasets/{id}: refused (409, naming the jobs) while an unfinished job uses it. */
  function deleteCell(kind, item) {
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.className = "secondary";
    button.textContent = "Delete";
    button.dataset.deleteUpload = item.id;
    const state = document.createElement("span");
    button.addEventListener("click", async () => {
      if (!window.confirm(`Delete ${item.ref} (${item.name})? Jobs that finished keep their own files.`)) return;
      const response = await fetch(`/v1/${kind}/${encodeURIComponent(item.id)}`, { method: "DELETE", headers: headers() });
      if (response.ok) { refresh(); return; }
      const body = await response.json().catch(() => null);
      state.className = "mismatch";
      state.textContent = ` ${(body && body.detail) || response.status}`;
    });
    td.append(button, state);
    return td;
  }

  const shape = (s) => (Array.isArray(s) ? s.join("×") : "");
  const when = (t) => (t ? new Date(t).toLocaleString() : "");

  async function refresh() {
    if (!getKey()) return;
    const [models, datasets] = await Promise.all([
      fetch("/v1/models?limit=200", { headers: headers() }).then((r) => (r.ok ? r.json() : { data: [] })),
      fetch("/v1/datasets?limit=200", { headers: headers() }).then((r) => (r.ok ? r.json() : { data: [] })),
    ]);
    fillTable("models-body", models.data, [
      [(m) => m.ref],
      [(m) => m.name],
      [(m) => (m.format === "onnx" ? "ONNX graph" : `${m.arch} weights`)],
      [(m) => shape(m.arch_kwargs && m.arch_kwargs.input ? m.arch_kwargs.input.shape : null)],
      [(m) => (m.arch_kwargs && m.arch_kwargs.output ? m.arch_kwargs.output.num_classes : "")],
      [(m) => m.size, true],
      [(m) => when(m.created_at)],
    ]);
    fillTable("datasets-body", datasets.data, [
      [(d) => d.ref],
      [(d) => d.name],
      [(d) => shape(d.input_shape)],
      [(d) => d.num_classes],
      [(d) => d.n_samples, true],
      [(d) => d.size, true],
      [(d) => when(d.created_at)],
    ]);
  }

  function wire(formId, url, prefix) {
    const form = $(formId);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = $(`${prefix}-error`);
      const state = $(`${prefix}-state`);
      error.hidden = true;
      const data = new FormData();
      for (const element of form.elements) {
        if (!element.name) continue;
        if (element.type === "file") {
          if (element.files.length) data.append(element.name, element.files[0]);
        } else if (element.value !== "") {
          data.append(element.name, element.value);
        }
      }
      state.textContent = "uploading and checking…";
      $(`${prefix}-submit`).disabled = true;
      try {
        const response = await fetch(url, { method: "POST", headers: headers(), body: data });
        const body = await response.json().catch(() => ({}));
        if (!response.ok) {
          state.textContent = "";
          error.textContent = `${response.status} ${body.error_code || ""}${body.field ? ` (${body.field})` : ""}: ${body.detail || response.statusText}`;
          error.hidden = false;
          return;
        }
        state.textContent = `accepted as ${body.ref}`;
        form.reset();
        await refresh();
      } catch (err) {
        state.textContent = "";
        error.textContent = `the upload failed: ${err}`;
        error.hidden = false;
      } finally {
        $(`${prefix}-submit`).disabled = false;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire("model-form", "/v1/models", "model");
    wire("dataset-form", "/v1/datasets", "dataset");
    refresh();
  });
})();
