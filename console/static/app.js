// tuneforge console: a single page over the REST API. The API key lives
// in sessionStorage only, so it goes when the browser tab does.
"use strict";

const API = "/api/v1/fine-tuning";
const KEY = "tuneforge.apiKey";
const STATUSES = ["queued", "running", "completed", "failed", "stopped", "deployed"];
const main = document.getElementById("main");
// render shows a page's parts, skipping those a condition left out (null).
const render = (...parts) => main.replaceChildren(...parts.flat().filter((p) => p != null));
let cleanup = []; // what the current page must stop when it is left

// --- small helpers --------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v != null) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c != null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function toast(msg) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

const fmtTime = (s) => (s ? new Date(s).toLocaleString() : "–");
const fmtLoss = (v) => (v == null ? "–" : Number(v).toPrecision(4));
function fmtBytes(n) {
  for (const [u, s] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) if (n >= s) return (n / s).toFixed(1) + " " + u;
  return n + " B";
}
const statusBadge = (s) => h("span", { class: "status " + s, "data-status": s }, s);

class APIError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || "HTTP " + status);
    this.status = status;
    this.details = e.details || [];
  }
  // The message with every bad field or line, as the API listed them.
  get full() {
    return [this.message, ...this.details.slice(1).map((d) => "  " + (d.line ? "line " + d.line : d.field) + ": " + d.message)].join("\n");
  }
}

async function api(method, path, body) {
  const opts = { method, headers: { "X-API-Key": sessionStorage.getItem(KEY) || "" } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  if (res.status === 401) {
    sessionStorage.removeItem(KEY);
    location.hash = "#/signin";
    throw new APIError(401, await res.json().catch(() => null));
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new APIError(res.status, data);
  return data;
}

// every runs fn now and every ms until the page is left.
function every(ms, fn) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } catch (e) { if (!(e instanceof APIError)) console.error(e); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  let timer = setTimeout(tick, 0);
  cleanup.push(() => { stopped = true; clearTimeout(timer); });
}

// --- pages ------------------------------------------------------------------

function signIn() {
  const input = h("input", { id: "apikey", type: "password", placeholder: "tf_…", autocomplete: "off" });
  const err = h("p", { class: "error", id: "signin-error" });
  const submit = async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    const res = await fetch(API + "/stats", { headers: { "X-API-Key": key } }).catch(() => null);
    if (res && res.ok) {
      sessionStorage.setItem(KEY, key);
      location.hash = "#/jobs";
      if (location.hash === "#/jobs") route();
      return;
    }
    err.textContent = res ? new APIError(res.status, await res.json().catch(() => null)).message : "The API does not answer.";
  };
  render(h("form", { class: "card signin", onsubmit: submit },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key (make dev prints one, saved in .tuneforge/dev-api-key). It is kept in this browser tab only."),
    input, err, h("button", { type: "submit", id: "signin" }, "Sign in")));
  input.focus();
}

async function jobsPage(params) {
  const status = params.get("status") || "", search = params.get("search") || "";
  // The page size may be set in the address (#/jobs?limit=50), up to the API's 100.
  const offset = Number(params.get("offset") || 0), limit = Math.min(100, Math.max(1, Number(params.get("limit")) || 20));
  const go = (p) => {
    const q = new URLSearchParams({ status, search, offset: String(offset), limit: String(limit), ...p });
    for (const [k, v] of [...q]) if (!v || v === "0" || (k === "limit" && v === "20")) q.delete(k);
    location.hash = "#/jobs?" + q;
  };
  const statusSel = h("select", { id: "filter-status", onchange: () => go({ status: statusSel.value, offset: "0" }) },
    h("option", { value: "" }, "All statuses"), STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const searchIn = h("input", { id: "filter-search", placeholder: "Search name or description", value: search });
  const body = h("tbody");
  const info = h("span", { class: "muted", id: "jobs-count" });
  const prev = h("button", { class: "secondary", id: "prev", disabled: offset === 0, onclick: () => go({ offset: String(Math.max(0, offset - limit)) }) }, "Previous");
  const next = h("button", { class: "secondary", id: "next", disabled: true, onclick: () => go({ offset: String(offset + limit) }) }, "Next");
  render(
    h("div", { class: "row" }, h("h1", {}, "Fine-tuning jobs"), h("span", { class: "spacer" }),
      h("button", { id: "new-job", onclick: () => { location.hash = "#/new"; } }, "New job")),
    h("form", { class: "row card", onsubmit: (e) => { e.preventDefault(); go({ search: searchIn.value, offset: "0" }); } },
      statusSel, searchIn, h("button", { type: "submit", class: "secondary" }, "Search")),
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, ["Name", "Status", "Base model", "Created", "Finished"].map((c) => h("th", {}, c)))), body),
    h("div", { class: "row mt" }, prev, next, info));
  every(3000, async () => {
    const q = new URLSearchParams({ limit: String(limit), offset: String(offset) });
    if (status) q.set("status", status);
    if (search) q.set("search", search);
    const page = await api("GET", API + "/jobs?" + q);
    body.replaceChildren(...page.jobs.map((j) => h("tr", { class: "click", "data-job": j.id, onclick: () => { location.hash = "#/jobs/" + j.id; } },
      h("td", {}, j.name, h("div", { class: "muted" }, j.id)), h("td", {}, statusBadge(j.status)), h("td", {}, j.baseModel),
      h("td", {}, fmtTime(j.createdAt)), h("td", {}, fmtTime(j.finishedAt)))));
    if (page.jobs.length === 0) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No jobs yet.")));
    const total = page.countExact ? `${page.count}` : `${page.count}+`;
    info.textContent = page.jobs.length ? `${offset + 1}–${offset + page.jobs.length} of ${total}` : "";
    next.disabled = !page.hasMore;
  });
}

async function newJobPage() {
  const [models, datasets] = await Promise.all([api("GET", API + "/base-models"), api("GET", API + "/datasets?limit=100")]);
  const field = (label, input) => h("label", { class: "row" }, h("span", { class: "label" }, label), input);
  const dsOptions = (none) => [none ? h("option", { value: "" }, none) : null,
    ...datasets.datasets.map((d) => h("option", { value: d.id }, `${d.filename} (${d.id}, ${fmtBytes(d.bytes)})`))];
  const f = {
    name: h("input", { id: "job-name", required: true, placeholder: "Support intents" }),
    baseModel: h("select", { id: "job-base-model" }, models.models.map((m) => h("option", { value: m.id }, `${m.name} (${m.id})`))),
    trainingDataset: h("select", { id: "job-training" }, dsOptions()),
    validationFile: h("select", { id: "job-validation" }, dsOptions("No validation file")),
    epochs: h("input", { id: "job-epochs", type: "number", min: 1, max: 100, value: 3 }),
    learningRate: h("input", { id: "job-lr", type: "number", step: "any", value: 0.0002 }),
    batchSize: h("input", { id: "job-batch", type: "number", min: 1, value: 8 }),
    suffix: h("input", { id: "job-suffix", placeholder: "support-v1" }),
  };
  const err = h("p", { class: "error", id: "job-error" });
  const submit = async (ev) => {
    ev.preventDefault();
    const body = {
      name: f.name.value, baseModel: f.baseModel.value, trainingDataset: f.trainingDataset.value,
      hyperparameters: { epochs: Number(f.epochs.value), learningRate: Number(f.learningRate.value), batchSize: Number(f.batchSize.value) },
    };
    if (f.validationFile.value) body.validationFile = f.validationFile.value;
    if (f.suffix.value) body.suffix = f.suffix.value;
    try {
      const job = await api("POST", API + "/jobs", body);
      location.hash = "#/jobs/" + job.id;
    } catch (e) { err.textContent = e.full || e.message; }
  };
  render(h("h1", {}, "New fine-tuning job"),
    datasets.datasets.length === 0 ? h("p", {}, "Upload a dataset first: ", h("a", { href: "#/datasets" }, "Datasets")) : null,
    h("form", { class: "card", onsubmit: submit },
      field("Name", f.name), field("Base model", f.baseModel), field("Training dataset", f.trainingDataset),
      field("Validation file", f.validationFile), field("Epochs", f.epochs), field("Learning rate", f.learningRate),
      field("Batch size", f.batchSize), field("Model suffix", f.suffix), err,
      h("button", { type: "submit", id: "create-job" }, "Create job")));
}

// lossChart draws training and validation loss against step as SVG.
function lossChart(svg, steps) {
  const W = 760, H = 260, L = 52, R = 16, T = 14, B = 30;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    svg.append(e);
    return e;
  };
  if (steps.length === 0) { el("text", { x: W / 2 - 60, y: H / 2 }, "No metric points yet"); return; }
  const xs = steps.map((s) => s.step);
  const ys = steps.flatMap((s) => [s.trainingLoss, s.validationLoss]).filter((v) => v != null);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = 0, y1 = Math.max(...ys) * 1.05 || 1;
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), py = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    el("line", { class: "grid", x1: L, x2: W - R, y1: py(y), y2: py(y) });
    el("text", { x: 4, y: py(y) + 4 }, y.toPrecision(3));
  }
  el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B });
  el("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B });
  el("text", { x: L, y: H - 8 }, "step " + x0);
  el("text", { x: W - R - 70, y: H - 8 }, "step " + x1);
  const path = (key, cls) => {
    const pts = steps.filter((s) => s[key] != null).map((s) => `${px(s.step).toFixed(1)},${py(s[key]).toFixed(1)}`);
    if (pts.length) el("polyline", { class: cls, points: pts.join(" "), "data-series": key, "data-points": pts.length });
  };
  path("trainingLoss", "train");
  path("validationLoss", "valid");
}

// followLogs streams the job's log (server-sent events over fetch, which,
// unlike EventSource, can send the key) into pre, resuming where it broke
// off; after the run ends (pre.dataset.ended), calling it again follows
// the next run from the last line shown.
function followLogs(jobID, pre) {
  const ctrl = new AbortController();
  cleanup.push(() => ctrl.abort());
  delete pre.dataset.ended;
  let last = pre.dataset.last ? Number(pre.dataset.last) : null;
  const line = (l) => {
    pre.append(h("span", { class: l.level }, `${new Date(l.timestamp).toLocaleTimeString()}  ${l.message}\n`));
    pre.scrollTop = pre.scrollHeight;
  };
  (async () => {
    for (let attempt = 0; attempt < 20 && !ctrl.signal.aborted; attempt++) {
      const headers = { "X-API-Key": sessionStorage.getItem(KEY) || "" };
      if (last != null) headers["Last-Event-ID"] = String(last);
      try {
        const res = await fetch(`${API}/jobs/${jobID}/logs?follow=true&lines=500`, { headers, signal: ctrl.signal });
        if (!res.ok) return;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let event = "", data = "";
            for (const l of block.split("\n")) {
              if (l.startsWith("event: ")) event = l.slice(7);
              else if (l.startsWith("data: ")) data = l.slice(6);
            }
            if (event === "log") { const l = JSON.parse(data); last = l.id; pre.dataset.last = l.id; line(l); }
            if (event === "end") { pre.dataset.ended = JSON.parse(data).status; return; }
          }
        }
      } catch (e) {
        if (ctrl.signal.aborted) return;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
}

const logEnded = (pre) => pre.dataset.ended !== undefined;

async function jobPage(id) {
  const title = h("h1", {}, id);
  const grid = h("div", { class: "grid", id: "job-details" });
  const errBox = h("p", { class: "error", id: "job-error" });
  const action = (name, label, cls, confirmText) => h("button", {
    id: "job-" + name, class: cls || "", disabled: true,
    onclick: async () => {
      if (confirmText && !confirm(confirmText)) return;
      try {
        if (name === "delete") {
          await api("DELETE", `${API}/jobs/${id}`);
          toast("Job deleted");
          location.hash = "#/jobs";
          return;
        }
        const res = await api("POST", `${API}/jobs/${id}/${name}`);
        toast(res.message + (res.resultModel ? ": " + res.resultModel : ""));
        refresh();
      } catch (e) { errBox.textContent = e.message; }
    },
  }, label);
  const buttons = { stop: action("stop", "Stop", "secondary"), restart: action("restart", "Restart", "secondary"),
    deploy: action("deploy", "Deploy"), delete: action("delete", "Delete", "danger", "Delete this job, its logs, checkpoints and model?") };
  const chart = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  chart.setAttribute("class", "chart");
  chart.id = "loss-chart";
  const logs = h("pre", { class: "logs", id: "logs" });
  const ckpts = h("tbody", { id: "checkpoints" });
  render(
    h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")), title,
    h("div", { class: "card" }, grid, h("div", { class: "row mt" }, Object.values(buttons)), errBox),
    h("h2", {}, "Loss"), h("div", { class: "legend muted" }, h("span", { class: "t" }, "— training loss"), h("span", { class: "v" }, "- - validation loss")),
    h("div", { class: "card" }, chart),
    h("h2", {}, "Logs"), logs,
    h("h2", {}, "Checkpoints"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Checkpoint", "Step", "Epoch", "Training loss", "Validation loss", "Size", ""].map((c) => h("th", {}, c)))), ckpts));
  followLogs(id, logs);
  let job;
  const refresh = async () => {
    job = await api("GET", `${API}/jobs/${id}`);
    const [m, cp] = await Promise.all([api("GET", `${API}/jobs/${id}/metrics`), api("GET", `${API}/jobs/${id}/checkpoints`)]);
    title.textContent = job.name;
    const hp = job.hyperparameters;
    const queue = job.status === "queued" && job.queuePosition != null ? ` · ${job.queuePosition} of your jobs ahead` : "";
    grid.replaceChildren(...[
      ["Status", statusBadge(job.status), queue],
      ["Phase", job.phase || "–"],
      ["Epoch", `${m.metrics.currentEpoch} of ${m.metrics.totalEpochs}`],
      ["Training loss", fmtLoss(m.metrics.trainingLoss)], ["Validation loss", fmtLoss(m.metrics.validationLoss)],
      ["Trained tokens", job.trainedTokens.toLocaleString()], ["Base model", job.baseModel], ["Hardware", job.hardware],
      ["Hyperparameters", `${hp.epochs} epochs, lr ${hp.learningRate}, batch ${hp.batchSize}`],
      ["Training file", job.trainingFile], ["Result model", job.resultModel || "–"], ["Job ID", job.id],
      ["Created", fmtTime(job.createdAt)], ["Finished", fmtTime(job.finishedAt)],
    ].map(([k, ...v]) => h("div", {}, h("span", {}, k), h("span", { "data-field": k }, ...v))));
    errBox.textContent = job.error ? "Error: " + job.error : "";
    const s = job.status;
    if ((s === "queued" || s === "running") && logEnded(logs)) followLogs(id, logs);
    buttons.stop.disabled = !(s === "queued" || s === "running");
    buttons.restart.disabled = !(s === "stopped" || s === "failed");
    buttons.deploy.disabled = s !== "completed";
    buttons.delete.disabled = s === "running";
    lossChart(chart, m.metrics.steps);
    ckpts.replaceChildren(...cp.checkpoints.map((k) => h("tr", {},
      h("td", {}, k.id), h("td", {}, k.step), h("td", {}, k.epoch), h("td", {}, fmtLoss(k.trainingLoss)), h("td", {}, fmtLoss(k.validationLoss)),
      h("td", {}, fmtBytes(k.bytes)),
      h("td", {}, h("button", { class: "secondary", disabled: !(s === "stopped" || s === "failed"), onclick: async () => {
        try { const r = await api("POST", `${API}/jobs/${id}/restart`, { fromCheckpoint: k.id }); toast(r.message); refresh(); } catch (e) { errBox.textContent = e.message; }
      } }, "Restart from here")))));
    if (cp.checkpoints.length === 0) ckpts.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No checkpoint kept yet: one is kept at the end of each epoch.")));
  };
  every(2000, refresh);
}

async function datasetsPage() {
  const file = h("input", { type: "file", id: "dataset-file", accept: ".jsonl,.json,.txt" });
  const bar = h("progress", { id: "upload-progress", max: 100, value: 0, hidden: true });
  const report = h("pre", { class: "error", id: "upload-report" });
  const body = h("tbody", { id: "datasets" });
  const load = async () => {
    const page = await api("GET", API + "/datasets?limit=100");
    body.replaceChildren(...page.datasets.map((d) => h("tr", { "data-dataset": d.id },
      h("td", {}, d.filename), h("td", {}, d.id), h("td", {}, fmtBytes(d.bytes)), h("td", {}, fmtTime(d.createdAt)),
      h("td", {}, h("button", { class: "secondary", onclick: async () => {
        try { await api("DELETE", `${API}/datasets/${d.id}`); toast("Dataset deleted"); load(); } catch (e) { report.textContent = e.message; }
      } }, "Delete")))));
    if (page.datasets.length === 0) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No datasets yet.")));
  };
  const upload = (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) return;
    report.textContent = "";
    bar.hidden = false;
    bar.value = 0;
    // XMLHttpRequest reports upload progress; fetch does not.
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${API}/datasets?filename=${encodeURIComponent(f.name)}`);
    xhr.setRequestHeader("X-API-Key", sessionStorage.getItem(KEY) || "");
    xhr.setRequestHeader("Content-Type", "application/x-ndjson");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
    xhr.onload = () => {
      bar.hidden = true;
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 201) {
        toast(`Uploaded ${data.filename} as ${data.id}`);
        report.className = "muted";
        report.textContent = `${data.filename}: valid, ${fmtBytes(data.bytes)}, stored as ${data.id}`;
        load();
      } else {
        report.className = "error";
        report.textContent = new APIError(xhr.status, data).full;
      }
    };
    xhr.onerror = () => { bar.hidden = true; report.textContent = "The upload failed: the API did not answer."; };
    xhr.send(f);
  };
  render(h("h1", {}, "Datasets"),
    h("form", { class: "card row", onsubmit: upload }, file, h("button", { type: "submit", id: "upload" }, "Upload"), bar),
    report,
    h("p", { class: "muted" }, "JSONL: one example a line, in chat format ({\"messages\": [...]}) or prompt/completion format. Every line is checked as it uploads; a bad line is named by its number."),
    h("table", {}, h("thead", {}, h("tr", {}, ["File", "ID", "Size", "Uploaded", ""].map((c) => h("th", {}, c)))), body));
  await load();
}

async function playgroundPage() {
  const models = await api("GET", "/v1/models");
  const sel = h("select", { id: "model" }, models.data.map((m) => h("option", { value: m.id }, m.id)));
  const log = h("div", { class: "chat card", id: "chat" });
  const input = h("textarea", { id: "prompt", placeholder: "Ask the model…" });
  const messages = [];
  const send = async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text || !sel.value) return;
    messages.push({ role: "user", content: text });
    log.append(h("div", { class: "msg user" }, text));
    input.value = "";
    try {
      const res = await api("POST", "/v1/chat/completions", { model: sel.value, messages });
      const reply = res.choices[0].message.content;
      messages.push({ role: "assistant", content: reply });
      log.append(h("div", { class: "msg assistant", "data-reply": "" }, reply));
    } catch (e) { log.append(h("div", { class: "msg error" }, e.message)); }
  };
  render(h("h1", {}, "Playground"),
    models.data.length === 0 ? h("p", { class: "muted" }, "No deployed model yet: deploy a completed job first.") : null,
    h("div", { class: "row" }, h("span", {}, "Model"), sel), log,
    h("form", { class: "row", onsubmit: send }, input, h("button", { type: "submit", id: "send" }, "Send")));
}

// --- routing ------------------------------------------------------------------

async function route() {
  for (const f of cleanup) f();
  cleanup = [];
  const [path, query] = location.hash.slice(1).split("?");
  const signedIn = !!sessionStorage.getItem(KEY);
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn || path === "/signin") return signIn();
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === (parts[0] === "new" ? "jobs" : parts[0]));
  try {
    if (parts[0] === "jobs" && parts[1]) await jobPage(parts[1]);
    else if (parts[0] === "new") await newJobPage();
    else if (parts[0] === "datasets") await datasetsPage();
    else if (parts[0] === "playground") await playgroundPage();
    else await jobsPage(new URLSearchParams(query));
  } catch (e) {
    render(h("p", { class: "error" }, e.message));
  }
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "#/signin";
});
window.addEventListener("hashchange", route);
route();
