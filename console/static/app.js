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
// statusBadge shows a job's status; a cancelled job is stopped for good,
// which its badge says.
const statusBadge = (s, cancelled) => h("span", { class: "status " + s + (cancelled ? " cancelled" : ""), "data-status": s, "data-cancelled": cancelled },
  cancelled ? s + " (cancelled)" : s);
// fmtUSD shows a cost; cents hide what a short job costs.
const fmtUSD = (v) => "$" + (v >= 1 || v === 0 ? v.toFixed(2) : Number(v.toPrecision(2)));

// jobErrorParts shows a job's error as its class and message: the API
// sends {code, class, message}; older servers sent the message alone.
function jobErrorParts(err) {
  if (err == null || err === "") return [];
  const e = typeof err === "string" ? { message: err } : err;
  const cls = e.class ? [h("span", { class: "error-class", "data-error-class": e.class, title: e.code }, e.class)] : [];
  return ["Error: ", ...cls, e.message || e.code || ""];
}

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
      h("td", {}, j.name, h("div", { class: "muted" }, j.id)), h("td", {}, statusBadge(j.status, j.cancelled === true)), h("td", {}, j.baseModel),
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

// niceTicks are about n round values (1, 2 or 5 times a power of ten
// apart) from at or below lo to at or above hi.
function niceTicks(lo, hi, n) {
  const raw = (hi - lo) / n || 1, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw);
  const out = [];
  for (let i = Math.floor(lo / step); i <= Math.ceil(hi / step); i++) out.push(Number((i * step).toPrecision(12)));
  return out;
}

// logScale is a log axis for [lo, hi]: its ends, the values 1, 2 or 5 times
// a power of ten that enclose the range, and its ticks, those values when
// there are few, else the powers of ten (every other one, or fewer, over
// many decades).
function logScale(lo, hi) {
  const all = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)) + 1; e++) for (const m of [1, 2, 5]) all.push(Number((m * 10 ** e).toPrecision(12)));
  const from = all.findLastIndex((v) => v <= lo), to = Math.max(all.findIndex((v) => v >= hi), from + 1);
  const within = all.slice(from, to + 1);
  const decades = within.filter((v) => Number.isInteger(Math.log10(v)));
  const every = Math.ceil(decades.length / 6);
  return { lo: within[0], hi: within[within.length - 1], ticks: within.length <= 9 ? within : decades.filter((_, i) => i % every === 0) };
}

const fmtTick = (v) => (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5) ? v.toExponential(0) : String(Number(v.toPrecision(3))));

// wantsLog says whether losses spanning orders of magnitude need a log scale.
function wantsLog(steps) {
  const ys = steps.flatMap((s) => [s.trainingLoss, s.validationLoss]).filter((v) => v != null);
  const lo = Math.min(...ys), hi = Math.max(...ys);
  return ys.length > 0 && lo > 0 && hi / lo > 20;
}

// lossChart draws training and validation loss against step as SVG, on a
// log scale when log is set, with the checkpoints as markers on the curve
// (the best one filled and labelled).
function lossChart(svg, steps, { checkpoints = [], log = false } = {}) {
  const W = 760, H = 260, L = 52, R = 16, T = 14, B = 34;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) if (v != null) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    svg.append(e);
    return e;
  };
  if (steps.length === 0) { el("text", { x: W / 2 - 60, y: H / 2 }, "No metric points yet"); return; }
  // A log scale has no place for a loss of 0: such points are left out,
  // and losses all 0 stay linear.
  log = log && steps.some((s) => s.trainingLoss > 0 || s.validationLoss > 0);
  const shown = (v) => v != null && (!log || v > 0);
  const xs = steps.map((s) => s.step);
  const ys = steps.flatMap((s) => [s.trainingLoss, s.validationLoss]).filter(shown);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let yTicks, f;
  if (log) {
    const scale = logScale(Math.min(...ys), Math.max(...ys));
    const a = Math.log10(scale.lo), b = Math.log10(scale.hi);
    yTicks = scale.ticks;
    f = (y) => (Math.log10(y) - a) / (b - a);
  } else {
    yTicks = niceTicks(0, Math.max(...ys, 0) || 1, 4);
    const top = yTicks[yTicks.length - 1];
    f = (y) => y / top;
  }
  svg.dataset.scale = log ? "log" : "linear";
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), py = (y) => H - B - f(y) * (H - T - B);
  for (const y of yTicks) {
    el("line", { class: "grid", x1: L, x2: W - R, y1: py(y), y2: py(y) });
    el("text", { class: "tick", x: L - 6, y: py(y) + 4, "text-anchor": "end", "data-value": y }, fmtTick(y));
  }
  el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B });
  el("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B });
  for (const x of niceTicks(x0, x1, 6).filter((x) => Number.isInteger(x) && x >= x0 && x <= x1)) el("text", { x: px(x), y: H - B + 15, "text-anchor": "middle" }, x);
  el("text", { x: W - R, y: H - 3, "text-anchor": "end" }, "step");
  const path = (key, cls) => {
    const pts = steps.filter((s) => shown(s[key])).map((s) => `${px(s.step).toFixed(1)},${py(s[key]).toFixed(1)}`);
    if (pts.length) el("polyline", { class: cls, points: pts.join(" "), "data-series": key, "data-points": pts.length });
  };
  path("trainingLoss", "train");
  path("validationLoss", "valid");
  // A checkpoint sits on the training curve at its step (else at its own
  // loss); the best one is drawn last, over the others.
  const at = (k) => [steps.findLast((s) => s.step <= k.step && shown(s.trainingLoss))?.trainingLoss, k.trainingLoss, k.validationLoss].find(shown);
  for (const k of [...checkpoints].sort((a, b) => a.best - b.best)) {
    const y = at(k);
    if (y == null || k.step < x0 || k.step > x1) continue;
    const c = el("circle", { class: k.best ? "ckpt best" : "ckpt", cx: px(k.step), cy: py(y), r: k.best ? 6 : 4, "data-checkpoint": k.id, "data-step": k.step, "data-best": k.best || null });
    c.append(document.createElementNS(ns, "title"));
    c.firstChild.textContent = `${k.best ? "best checkpoint" : "checkpoint"} ${k.id}: step ${k.step}, loss ${fmtLoss(y)}`;
    if (k.best) el("text", { class: "best", x: px(k.step), y: py(y) - 10, "text-anchor": "middle" }, "best");
  }
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

// today's actions are what the job's status allows, for a server whose job
// has no actions field.
const legacyActions = (s) => [(s === "queued" || s === "running") && "stop", (s === "stopped" || s === "failed") && "restart",
  s === "completed" && "deploy", s !== "running" && "delete"].filter(Boolean);

async function jobPage(id) {
  const title = h("h1", {}, id);
  const grid = h("div", { class: "grid", id: "job-details" });
  const jobErr = h("p", { class: "error", id: "job-error" });
  // An action's error stays until dismissed or the next action: the
  // refresh every two seconds must not wipe it before it is read.
  const actionMsg = h("span", { class: "error" });
  const actionErr = h("div", { class: "alert", id: "action-error", role: "alert", hidden: true }, actionMsg,
    h("button", { class: "close", id: "action-error-close", title: "Dismiss", "aria-label": "Dismiss", onclick: () => { actionErr.hidden = true; } }, "×"));
  const act = async (fn) => {
    actionErr.hidden = true;
    try { await fn(); } catch (e) { actionMsg.textContent = e.full || e.message; actionErr.hidden = false; }
  };
  const run = {
    delete: async () => { await api("DELETE", `${API}/jobs/${id}`); toast("Job deleted"); location.hash = "#/jobs"; },
    // The seed API stops a job; OpenAI's cancel is the same stop, made final.
    cancel: async () => { await api("POST", `/v1/fine_tuning/jobs/${id}/cancel`); toast("Job cancelled"); refresh(); },
  };
  const action = (name, label, cls, confirmText) => h("button", {
    id: "job-" + name, class: cls || "", disabled: true,
    onclick: () => act(async () => {
      if (confirmText && !confirm(confirmText)) return;
      if (run[name]) return run[name]();
      const res = await api("POST", `${API}/jobs/${id}/${name}`);
      toast(res.message + (res.resultModel ? ": " + res.resultModel : ""));
      refresh();
    }),
  }, label);
  const buttons = { stop: action("stop", "Stop", "secondary"), cancel: action("cancel", "Cancel", "secondary", "Cancel this job? A cancelled job cannot be restarted."),
    restart: action("restart", "Restart", "secondary"), deploy: action("deploy", "Deploy"),
    delete: action("delete", "Delete", "danger", "Delete this job, its logs, checkpoints and model?") };
  const chart = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  chart.setAttribute("class", "chart");
  chart.id = "loss-chart";
  // The scale follows the losses (log when they span orders of magnitude)
  // until the user picks one.
  let scalePicked = false;
  const logBox = h("input", { type: "checkbox", id: "log-scale", onchange: () => { scalePicked = true; draw(); } });
  const logs = h("pre", { class: "logs", id: "logs" });
  const ckpts = h("tbody", { id: "checkpoints" });
  render(
    h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")), title,
    h("div", { class: "card" }, grid, h("div", { class: "row mt" }, Object.values(buttons)), jobErr, actionErr),
    h("h2", {}, "Loss"),
    h("div", { class: "legend muted row" }, h("span", { class: "t" }, "— training loss"), h("span", { class: "v" }, "- - validation loss"),
      h("span", {}, "○ checkpoint"), h("span", { class: "b" }, "● best checkpoint"), h("span", { class: "spacer" }),
      h("label", {}, logBox, " log scale")),
    h("div", { class: "card" }, chart),
    h("h2", {}, "Logs"), logs,
    h("h2", {}, "Checkpoints"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Checkpoint", "Step", "Epoch", "Training loss", "Validation loss", "Size", ""].map((c) => h("th", {}, c)))), ckpts));
  followLogs(id, logs);
  let steps = [], marks = [];
  const draw = () => {
    if (!scalePicked) logBox.checked = wantsLog(steps);
    lossChart(chart, steps, { checkpoints: marks, log: logBox.checked });
  };
  const refresh = async () => {
    const job = await api("GET", `${API}/jobs/${id}`);
    const [m, cp] = await Promise.all([api("GET", `${API}/jobs/${id}/metrics`), api("GET", `${API}/jobs/${id}/checkpoints`)]);
    title.textContent = job.name;
    const hp = job.hyperparameters;
    const queue = job.status === "queued" && job.queuePosition != null ? ` · ${job.queuePosition} of your jobs ahead` : "";
    const best = job.bestCheckpoint;
    // Fields a server may not send yet are shown only when sent.
    const cost = typeof job.costSoFar === "number" ? fmtUSD(job.costSoFar) + (typeof job.maxCost === "number" ? ` of at most ${fmtUSD(job.maxCost)}` : "") : null;
    grid.replaceChildren(...[
      ["Status", statusBadge(job.status, job.cancelled === true), queue],
      ["Phase", job.phase || "–"],
      ["Epoch", `${m.metrics.currentEpoch} of ${m.metrics.totalEpochs}`],
      ["Training loss", fmtLoss(m.metrics.trainingLoss)], ["Validation loss", fmtLoss(m.metrics.validationLoss)],
      ["Trained tokens", job.trainedTokens.toLocaleString()], cost && ["Cost so far", cost], ["Base model", job.baseModel], ["Hardware", job.hardware],
      ["Hyperparameters", `${hp.epochs} epochs, lr ${hp.learningRate}, batch ${hp.batchSize}`],
      "bestCheckpoint" in job && ["Best checkpoint", best ? `step ${best.step} (epoch ${best.epoch}), validation loss ${fmtLoss(best.validationLoss)}` : "–"],
      ["Training file", job.trainingFile], ["Result model", job.resultModel || "–"], ["Job ID", job.id],
      ["Created", fmtTime(job.createdAt)], ["Finished", fmtTime(job.finishedAt)],
    ].filter(Boolean).map(([k, ...v]) => h("div", {}, h("span", {}, k), h("span", { "data-field": k }, ...v))));
    jobErr.replaceChildren(...jobErrorParts(job.error));
    const s = job.status;
    if ((s === "queued" || s === "running") && logEnded(logs)) followLogs(id, logs);
    // The server says which actions can succeed now; an older one does not,
    // and the status decides, with no cancel.
    const allowed = new Set(Array.isArray(job.actions) ? job.actions : legacyActions(s));
    for (const [name, b] of Object.entries(buttons)) {
      b.disabled = !allowed.has(name);
      b.hidden = Array.isArray(job.actions) ? b.disabled : name === "cancel";
    }
    const isBest = (k) => k.best === true || (best != null && best.id === k.id);
    steps = m.metrics.steps;
    marks = cp.checkpoints.map((k) => ({ ...k, best: isBest(k) }));
    draw();
    ckpts.replaceChildren(...marks.map((k) => h("tr", { class: k.best ? "best" : null, "data-checkpoint": k.id },
      h("td", {}, k.id, k.best ? h("span", { class: "tag best" }, "best") : null), h("td", {}, k.step), h("td", {}, k.epoch),
      h("td", {}, fmtLoss(k.trainingLoss)), h("td", {}, fmtLoss(k.validationLoss)), h("td", {}, fmtBytes(k.bytes)),
      h("td", {}, h("button", { class: "secondary", disabled: !allowed.has("restart"), onclick: () => act(async () => {
        const r = await api("POST", `${API}/jobs/${id}/restart`, { fromCheckpoint: k.id });
        toast(r.message);
        refresh();
      }) }, "Restart from here")))));
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
