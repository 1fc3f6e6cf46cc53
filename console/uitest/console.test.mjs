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
