// Drives the web console in a real browser (Chromium through
// playwright-core) through a job's whole life on `tuneforge dev`: sign in,
// upload datasets (a bad one too), create a job, watch its logs and loss
// curves while it trains, deploy it, chat with it in the playground, stop,
// restart and delete another. It saves screenshots as it goes.
//
//   TUNEFORGE_BIN=bin/tuneforge node console.test.mjs
//
// Settings: TUNEFORGE_BIN (the binary), CHROMIUM (default /usr/bin/chromium),
// UI_SCREENSHOTS (default ../../bin/screenshots), DATABASE_ADMIN_URL (the
// PostgreSQL server to make the test database on; default the local one).
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createServer } from "node:net";
import { chromium } from "playwright-core";

const bin = resolve(process.env.TUNEFORGE_BIN || "../../bin/tuneforge");
const shots = resolve(process.env.UI_SCREENSHOTS || "../../bin/screenshots");
const pg = process.env.DATABASE_ADMIN_URL || "postgres://postgres@127.0.0.1:5432";
mkdirSync(shots, { recursive: true });

const freePort = () => new Promise((ok) => {
  const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let failed = false;
// selectDataset picks the dataset of that file name in a dataset menu.
async function selectDataset(page, sel, filename) {
  const value = await page.$eval(sel, (el, f) => [...el.options].find((o) => o.text.startsWith(f + " ")).value, filename);
  await page.selectOption(sel, value);
}
// shot saves a screenshot of the page once any notice has faded.
async function shot(page, name) {
  await page.waitForSelector("#toast", { state: "hidden", timeout: 10000 });
  await page.screenshot({ path: join(shots, name + ".png"), fullPage: true });
}
function check(cond, what) {
  if (!cond) { failed = true; console.error("FAIL:", what); } else console.log("ok:", what);
}

// A support-ticket intent dataset the builtin trainer learns (as the walkthrough's).
function tickets(n, seed) {
  let x = seed;
  const rnd = () => ((x = (x * 1103515245 + 12345) % 2147483648) / 2147483648);
  const K = { billing: "invoice charged payment", shipping: "package tracking delivery", account: "password login locked", refund: "refund money return" };
  const F = "hi please help me with my order today thanks urgent".split(" ");
  const labels = Object.keys(K);
  const lines = [];
  for (let i = 0; i < n; i++) {
    const label = labels[Math.floor(rnd() * labels.length)];
    const words = [...F].sort(() => rnd() - 0.5).slice(0, 5);
    const kw = K[label].split(" ");
    words.splice(Math.floor(rnd() * 6), 0, kw[Math.floor(rnd() * kw.length)]);
    lines.push(JSON.stringify({ messages: [
      { role: "system", content: "Classify the support ticket." }, { role: "user", content: words.join(" ") }, { role: "assistant", content: label }] }));
  }
  return lines.join("\n") + "\n";
}

// jobFields checks the job page against the job as an older server sends
// it and as a newer one does (cancelled, actions, error objects, cost, the
// best checkpoint), whatever this server sends: the job, its metrics and
// checkpoints are rewritten on their way to the page. It also checks that
// an action's error stays until dismissed, and the log scale of the chart.
async function jobFields(page, base, id) {
  const jobURL = `${base}/api/v1/fine-tuning/jobs/${id}`;
  let edit = {};
  const rewrite = (url, key) => page.route(url, async (route) => {
    if (route.request().method() !== "GET" || !edit[key]) return route.fallback();
    const res = await route.fetch();
    const body = await res.json();
    edit[key](body);
    await route.fulfill({ response: res, json: body });
  });
  await rewrite(jobURL, "job");
  await rewrite(jobURL + "/metrics", "metrics");
  await rewrite(jobURL + "/checkpoints", "checkpoints");
  const visible = async () => (await page.$$eval("#main .row.mt button", (bs) => bs.filter((b) => !b.hidden).map((b) => b.id))).join(" ");

  // An older server: no actions (the status decides), the error a string.
  const long = "training-file-" + "x".repeat(150);
  edit = {
    job: (j) => {
      for (const k of ["actions", "cancelled", "costSoFar", "maxCost", "bestCheckpoint"]) delete j[k];
      Object.assign(j, { error: "boom, as a string", trainingFile: long });
    },
    checkpoints: (c) => c.checkpoints.forEach((k) => delete k.best),
  };
  await page.waitForSelector("#job-error:has-text('Error: boom, as a string')");
  check(await visible() === "job-stop job-restart job-deploy job-delete" && await page.locator("#job-deploy").isEnabled() &&
    await page.locator("#job-stop").isDisabled(), "without actions, the status enables the buttons, and there is no cancel");
  check(await page.locator("[data-field='Cost so far'], [data-field='Best checkpoint']").count() === 0, "no cost nor best checkpoint from an older server");
  const spill = await page.$$eval("#job-details > div", (divs) => divs.filter((d) => {
    const [k, v] = [...d.children].map((c) => c.getBoundingClientRect());
    return v.left < k.right || v.right > d.getBoundingClientRect().right + 1;
  }).map((d) => d.firstChild.textContent));
  check(spill.length === 0, `every detail's value stays in its column, a long one too (spilled: ${spill})`);

  // A failed action's error outlives the refreshes until it is dismissed.
  await page.route(jobURL + "/deploy", (route) => route.fulfill({ status: 409, json: { error: { code: "conflict", message: "cannot deploy: injected by the test" } } }));
  await page.click("#job-deploy");
  await page.waitForSelector("#action-error:has-text('injected by the test')");
  await sleep(4500);
  check(await page.locator("#action-error").isVisible(), "an action's error is still shown after two refreshes");
  await page.click("#action-error-close");
  check(await page.locator("#action-error").isHidden(), "the close button dismisses it");
  await page.unroute(jobURL + "/deploy");

  // A newer server: a cancelled job with only delete left, a classified
  // error, its cost, and the best of its checkpoints; losses spanning
  // orders of magnitude.
  const [best] = (await (await page.request.get(jobURL + "/checkpoints", { headers: { "X-API-Key": await page.evaluate(() => sessionStorage.getItem("tuneforge.apiKey")) } })).json()).checkpoints;
  edit = {
    job: (j) => Object.assign(j, {
      status: "stopped", cancelled: true, actions: ["delete"], costSoFar: 0.0123, maxCost: 5,
      error: { code: "training_failed", class: "user_error", message: "the loss went NaN" },
      bestCheckpoint: { id: best.id, step: best.step, epoch: best.epoch, validationLoss: best.validationLoss },
    }),
    metrics: (m) => { m.metrics.steps = m.metrics.steps.map((p, i) => ({ ...p, trainingLoss: 5 * 0.8 ** i, validationLoss: p.validationLoss == null ? null : 6 * 0.8 ** i })); },
    checkpoints: (c) => c.checkpoints.forEach((k) => { k.best = k.id === best.id; }),
  };
  await page.waitForSelector("[data-field=Status] [data-cancelled]");
  check(await page.locator("[data-field=Status]").innerText() === "stopped (cancelled)", "a cancelled job shows as stopped (cancelled)");
  check(await visible() === "job-delete", "only the actions the job lists are shown");
  check(await page.locator("#job-error .error-class").innerText() === "user_error" && (await page.locator("#job-error").innerText()).includes("the loss went NaN"),
    "the error shows its class and message");
  check(await page.locator("[data-field='Cost so far']").innerText() === "$0.012 of at most $5.00", "the cost so far is shown");
  check((await page.locator("[data-field='Best checkpoint']").innerText()).includes(`step ${best.step}`), "the best checkpoint is named");
  await page.waitForSelector("#loss-chart[data-scale=log] circle[data-best]");
  const marks = await page.$$eval("#loss-chart circle[data-checkpoint]", (cs) => cs.map((c) => [c.dataset.checkpoint, c.dataset.best !== undefined]));
  check(marks.length === await page.locator("#checkpoints tr[data-checkpoint]").count() && marks.filter(([, b]) => b).length === 1 &&
    marks.find(([, b]) => b)[0] === best.id, `checkpoints are marked on the curve, the best one apart (${marks.length} marks)`);
  check(await page.locator("#checkpoints tr.best .tag.best").count() === 1, "the checkpoints table marks the best one");
  const ticks = await page.$$eval("#loss-chart text.tick", (ts) => ts.map((t) => Number(t.dataset.value)));
  check(await page.locator("#log-scale").isChecked() && ticks.length >= 3 && ticks.every((t, i) => i === 0 || t > ticks[i - 1]) &&
    ticks.some((t) => Number.isInteger(Math.log10(t))), `losses over orders of magnitude get a log scale, with round ticks (${ticks})`);
  await shot(page, "job-fields");
  await page.uncheck("#log-scale");
  await sleep(2500);
  check(await page.locator("#loss-chart").getAttribute("data-scale") === "linear", "the scale toggle turns it linear, across refreshes");
  await page.unrouteAll();
}

const dir = mkdtempSync(join(tmpdir(), "tuneforge-ui-"));
const dbName = "tuneforge_uitest_" + process.pid;
const [http, metrics, ui, temporal] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
const base = `http://127.0.0.1:${http}`;
const dev = spawn(bin, ["dev"], {
  env: { ...process.env, TUNEFORGE_DATA_DIR: join(dir, "data"), DATABASE_URL: `${pg}/${dbName}?sslmode=disable`,
    TUNEFORGE_HTTP_ADDR: `127.0.0.1:${http}`, TUNEFORGE_METRICS_ADDR: `127.0.0.1:${metrics}`,
    TUNEFORGE_UI_ADDR: `127.0.0.1:${ui}`, TUNEFORGE_TEMPORAL_ADDR: `127.0.0.1:${temporal}`, TUNEFORGE_LOG_LEVEL: "warn",
    // The console's checks are written for the builtin trainer's answers.
    TUNEFORGE_TRAINER: "builtin" },
  stdio: ["ignore", "ignore", "pipe"],
});
let devLog = "";
dev.stderr.on("data", (b) => { devLog += b; });
let browser;
try {
  for (let i = 0; ; i++) {
    try { if ((await fetch(base + "/readyz")).ok) break; } catch { /* not up yet */ }
    if (i > 240) throw new Error("tuneforge dev did not come up:\n" + devLog);
    await sleep(500);
  }
  const key = readFileSync(join(dir, "data", "dev-api-key"), "utf8").trim();
  const train = join(dir, "train.jsonl"), valid = join(dir, "valid.jsonl"), bad = join(dir, "bad.jsonl"), long = join(dir, "long.jsonl");
  writeFileSync(train, tickets(3000, 7));
  writeFileSync(valid, tickets(300, 11));
  writeFileSync(long, tickets(60000, 9));
  writeFileSync(bad, tickets(20, 8) + '{"messages": [{"role": "user", "content": "no answer"}]}\n');

  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => check(false, "no script error on the page: " + e.message));

  // Sign in: a wrong key is refused, the dev key is taken.
  await page.goto(base + "/");
  await page.fill("#apikey", "tf_wrong");
  await page.click("#signin");
  await page.waitForSelector("#signin-error:has-text('invalid API key')");
  check(true, "a wrong key is refused with the API's message");
  await page.fill("#apikey", key);
  await page.click("#signin");
  await page.waitForSelector("#jobs");
  check(await page.evaluate(() => sessionStorage.getItem("tuneforge.apiKey") !== null && localStorage.length === 0), "the key is kept in the session only");

  // Datasets: upload with progress; a bad line is reported by its number.
  // upload sends a file from the datasets page and waits for its report to say report.
  const upload = async (file, report) => {
    await page.setInputFiles("#dataset-file", file);
    await page.click("#upload");
    await page.waitForSelector(`#upload-report:has-text('${report}')`);
  };
  await page.click("[data-nav=datasets]");
  await upload(bad, "line 21");
  check(true, "a bad dataset line is named by its number");
  await upload(train, "valid");
  await upload(valid, "valid.jsonl: valid");
  await upload(long, "long.jsonl: valid");
  check(await page.locator("#datasets tr[data-dataset]").count() === 3, "the good datasets are listed");
  await shot(page, "datasets");

  // A job through its life: create, train (logs, curves), deploy.
  await page.click("[data-nav=jobs]");
  await page.click("#new-job");
  await page.fill("#job-name", "Support intents");
  await selectDataset(page, "#job-training", "train.jsonl");
  await selectDataset(page, "#job-validation", "valid.jsonl");
  await page.fill("#job-epochs", "4");
  await page.fill("#job-suffix", "support-ui");
  await page.click("#create-job");
  await page.waitForSelector("#job-details");
  await page.waitForSelector("#logs:has-text('Training started')", { timeout: 60000 });
  check(true, "the job's live log shows training");
  await page.waitForFunction(() => {
    const t = document.querySelector("#loss-chart polyline[data-series=trainingLoss]");
    const v = document.querySelector("#loss-chart polyline[data-series=validationLoss]");
    return t && v && Number(t.dataset.points) >= 20;
  }, null, { timeout: 120000 });
  check(true, "the loss curve fills in while the job trains");
  await page.waitForSelector("[data-field=Status] [data-status=completed]", { timeout: 120000 });
  await page.waitForSelector("#checkpoints td:has-text('ftckpt_')");
  await shot(page, "job");
  await jobFields(page, base, page.url().split("#/jobs/")[1]);
  await page.click("#job-deploy");
  await page.waitForSelector("[data-field=Status] [data-status=deployed]", { timeout: 60000 });
  check(await page.locator("[data-field='Result model']").innerText() === "llama-3.1-8b-support-ui", "the deployed model is named");

  // The playground chats with it.
  await page.click("[data-nav=playground]");
  await page.waitForSelector("#model option[value='llama-3.1-8b-support-ui']", { state: "attached" });
  await page.fill("#prompt", "I was charged twice on my invoice");
  await page.click("#send");
  await page.waitForSelector("#chat [data-reply]");
  const reply = await page.locator("#chat [data-reply]").innerText();
  check(["billing", "shipping", "account", "refund"].includes(reply), `the model answers with a label (${reply})`);
  check(!(await page.locator("#main").innerText()).includes("null"), "no stray null on the playground");
  await shot(page, "playground");

  // Another job: stop, restart, stop again, delete.
  await page.click("[data-nav=jobs]");
  await page.click("#new-job");
  await page.fill("#job-name", "Long run");
  await selectDataset(page, "#job-training", "long.jsonl");
  await page.fill("#job-epochs", "50");
  await page.click("#create-job");
  await page.waitForSelector("[data-field=Status] [data-status=running]", { timeout: 60000 });
  await page.waitForSelector("[data-field=Phase]:has-text('training')");
  check(true, "the job page shows the phase");
  await page.click("#job-stop");
  await page.waitForSelector("[data-field=Status] [data-status=stopped]", { timeout: 60000 });
  await page.click("#job-restart");
  await page.waitForSelector("[data-field=Status] [data-status=running]", { timeout: 60000 });
  await page.waitForSelector("#logs:has-text('resumes from its latest checkpoint')");
  check(true, "stop and restart from the job page");
  await page.click("#job-stop");
  await page.waitForSelector("[data-field=Status] [data-status=stopped]", { timeout: 60000 });
  const jobPage = page.url();
  await page.goto(base + "/#/jobs");
  await page.waitForSelector("#jobs-count:has-text('1–2 of 2')");
  await shot(page, "jobs");
  // Paging through the list, a job a page.
  await page.goto(base + "/#/jobs?limit=1");
  await page.waitForSelector("#jobs-count:has-text('1–1 of 2')");
  await page.click("#next");
  await page.waitForSelector("#jobs-count:has-text('2–2 of 2')");
  check(await page.locator("#next").isDisabled() && !(await page.locator("#prev").isDisabled()), "the list pages");
  await page.goto(jobPage);
  await page.waitForSelector("[data-field=Status] [data-status=stopped]");
  page.once("dialog", (d) => d.accept());
  await page.click("#job-delete");
  await page.waitForSelector("#jobs");

  // The list: one job left, found by status and by search.
  await page.waitForSelector("#jobs tr[data-job]");
  check(await page.locator("#jobs tr[data-job]").count() === 1, "the deleted job is gone from the list");
  await page.selectOption("#filter-status", "deployed");
  await page.waitForSelector("#jobs-count:has-text('1–1 of 1')");
  await page.fill("#filter-search", "nothing like it");
  await page.press("#filter-search", "Enter");
  await page.waitForSelector("#jobs td:has-text('No jobs yet')");
  await page.selectOption("#filter-status", "");
  await page.fill("#filter-search", "");
  await page.press("#filter-search", "Enter");
  await page.waitForSelector("#jobs tr[data-job]");
  check(true, "the list filters by status and search");
} catch (e) {
  failed = true;
  console.error("FAIL:", e.message);
} finally {
  if (browser) await browser.close();
  dev.kill("SIGINT");
  await new Promise((r) => { dev.on("exit", r); setTimeout(r, 20000); });
  rmSync(dir, { recursive: true, force: true });
  try { execFileSync("psql", [pg + "/postgres", "-qc", `DROP DATABASE IF EXISTS ${dbName}`]); } catch { /* best effort */ }
}
console.log(failed ? "console UI test FAILED" : `console UI test passed; screenshots in ${shots}`);
process.exit(failed ? 1 : 0);
