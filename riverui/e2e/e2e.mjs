// Browser test of River UI behind HTTP Basic auth, against the real server.
//
// It starts bin/server as `make run` does (no DATABASE_URL: the server starts
// its own private Postgres under a temporary DATA_DIR; the built-in fal
// simulator in fast mode), submits a job through the API, then drives
// Debian's chromium with playwright-core: logged in, River UI shows the three
// queues and the job, and its Retry of the succeeded job shows the
// database's refusal; without credentials it answers 401. Screenshots go to
// SCREENSHOT_DIR (default riverui/e2e/out).
//
// Environment: SERVER_BIN (default bin/server from the repository root),
// CHROMIUM (default /usr/bin/chromium), E2E_TIMEOUT_MS (default 180000).
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const serverBin = process.env.SERVER_BIN || join(root, "bin/server");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const outDir = resolve(process.env.SCREENSHOT_DIR || join(here, "out"));
const timeoutMs = Number(process.env.E2E_TIMEOUT_MS || 180000);
const queues = ["urgent", "normal", "background"];

const user = "admin";
const password = "pw-" + randomBytes(12).toString("hex");
let passed = 0;
let server;
const browsers = [];
let dataDir;
let serverLogs;

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  passed++;
  console.log("ok - " + what);
}

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function sleep(ms) {
  await new Promise((r) => setTimeout(r, ms));
}

// startServer runs bin/server serve --demo and resolves with the demo token.
function startServer(port) {
  dataDir = mkdtempSync(join(tmpdir(), "aiqueue-e2e-"));
  const env = { ...process.env };
  delete env.DATABASE_URL;
  delete env.TEST_DATABASE_URL;
  for (const k of Object.keys(env)) if (k.startsWith("FAL_")) delete env[k];
  Object.assign(env, {
    DATA_DIR: dataDir,
    LISTEN_ADDR: `127.0.0.1:${port}`,
    METRICS_ADDR: "127.0.0.1:0",
    AUTH_JWT_SECRET: randomBytes(32).toString("hex"),
    RIVER_BASIC_AUTH_USER: user,
    RIVER_BASIC_AUTH_PASS: password,
    FAL_SIMULATE: "true",
    FAL_SIMULATE_FAST: "true",
    LOG_LEVEL: "info",
  });
  server = spawn(serverBin, ["serve", "--demo"], { env, stdio: ["ignore", "pipe", "pipe"] });
  let logs = "";
  server.stderr.on("data", (d) => {
    logs += d;
  });
  return new Promise((res, rej) => {
    let out = "";
    server.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/export TOKEN=(\S+)/);
      if (m) res({ token: m[1], logs: () => logs });
    });
    server.once("exit", (code) => rej(new Error(`server exited with ${code} before serving:\n${logs}`)));
  });
}

async function stopServer() {
  if (!server || server.exitCode !== null) return;
  const exited = new Promise((r) => server.once("exit", (code, signal) => r({ code, signal })));
  const start = Date.now();
  server.kill("SIGTERM");
  exited.then(() => console.log(`server stopped ${Date.now() - start} ms after SIGTERM`));
  const result = await Promise.race([exited, sleep(60000).then(() => null)]);
  if (!result) {
    server.kill("SIGKILL");
    throw new Error("server did not stop within 60s of SIGTERM");
  }
  return result;
}

async function main() {
  mkdirSync(outDir, { recursive: true });
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const { token, logs } = await startServer(port);
  serverLogs = logs;

  // A job, through the API, that the worker finishes.
  const submitted = await fetch(`${base}/v1/jobs`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ operation: "generate", params: { prompt: "a gold ring on marble" } }),
  });
  check(submitted.status === 202, `submit answers 202 (got ${submitted.status})`);
  const job = await submitted.json();
  let state;
  for (let i = 0; i < 300 && state !== "succeeded"; i++) {
    const r = await fetch(`${base}/v1/jobs/${job.id}`, { headers: { Authorization: `Bearer ${token}` } });
    state = (await r.json()).state;
    if (state !== "succeeded") await sleep(100);
  }
  check(state === "succeeded", `job ${job.id} succeeded`);

  // Without credentials, or with wrong ones: 401 and a Basic challenge.
  let r = await fetch(`${base}/riverui/`);
  check(r.status === 401, `GET /riverui/ without credentials is 401 (got ${r.status})`);
  check(/^Basic/.test(r.headers.get("www-authenticate") || ""), "401 carries a Basic challenge");
  r = await fetch(`${base}/riverui/api/queues`, {
    headers: { Authorization: "Basic " + Buffer.from(`${user}:wrong`).toString("base64") },
  });
  check(r.status === 401, `River UI API with a wrong password is 401 (got ${r.status})`);

  // Each browser gets a fresh profile directory (--user-data-dir, which
  // playwright passes for a persistent context).
  const launch = (options = {}) =>
    chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "aiqueue-chromium-")), {
      executablePath: chromiumPath,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      viewport: { width: 1280, height: 800 },
      ...options,
    });

  // The browser without credentials is refused: River UI answers 401, and
  // the navigation fails on the auth challenge it cannot answer.
  const anon = await launch();
  browsers.push(anon);
  const anonResp = await anon.request.get(`${base}/riverui/`);
  check(anonResp.status() === 401, `the browser without credentials gets 401 (got ${anonResp.status()})`);
  const anonPage = anon.pages()[0] || (await anon.newPage());
  const navError = await anonPage.goto(`${base}/riverui/`).then(
    (res) => `loaded with status ${res.status()}`,
    (err) => err.message,
  );
  check(/ERR_INVALID_AUTH_CREDENTIALS|401/.test(navError), `the browser cannot open River UI without credentials (${navError.split("\n")[0]})`);
  await anon.close();

  // Logged in: the queues...
  const ctx = await launch({ httpCredentials: { username: user, password } });
  browsers.push(ctx);
  const page = ctx.pages()[0] || (await ctx.newPage());
  const resp = await page.goto(`${base}/riverui/queues`);
  check(resp.status() === 200, `River UI answers 200 with credentials (got ${resp.status()})`);
  for (const q of queues) {
    await page.getByRole("link", { name: q, exact: true }).first().waitFor({ timeout: 30000 });
    check(true, `River UI lists queue ${q}`);
  }
  await page.screenshot({ path: join(outDir, "riverui-queues.png"), fullPage: true });

  // ...and the job, in the completed list and on its own page.
  await page.goto(`${base}/riverui/jobs?state=completed`);
  await page.locator(`a[href$="/jobs/${job.id}"]`).first().waitFor({ timeout: 30000 });
  await page.getByText("ai", { exact: true }).first().waitFor({ timeout: 30000 });
  check(true, `River UI lists completed job ${job.id} of kind ai`);
  await page.screenshot({ path: join(outDir, "riverui-jobs.png"), fullPage: true });

  await page.goto(`${base}/riverui/jobs/${job.id}`);
  await page.getByText(`ID: ${job.id}`, { exact: true }).waitFor({ timeout: 30000 });
  await page.getByText(/\bgenerate\b/).first().waitFor({ timeout: 30000 });
  await page.getByText("Completed", { exact: true }).first().waitFor({ timeout: 30000 });
  check(true, `River UI shows job ${job.id}: operation generate, completed`);
  await page.screenshot({ path: join(outDir, "riverui-job.png"), fullPage: true });

  // Retry of the succeeded job: refused, and River UI says why.
  await page.getByRole("button", { name: "Retry" }).first().click();
  await page.getByText("Job retry failed").first().waitFor({ timeout: 30000 });
  await page.getByText("a succeeded job cannot run again; submit a new job").first().waitFor({ timeout: 30000 });
  check(true, `River UI's Retry of succeeded job ${job.id} shows why the database refuses it`);
  await page.screenshot({ path: join(outDir, "riverui-retry-refused.png"), fullPage: true });
  await ctx.close();

  const secrets = [password, token];
  check(!secrets.some((s) => logs().includes(s)), "no password or token in the server log");
}

const timer = setTimeout(() => {
  console.error(`e2e: timed out after ${timeoutMs} ms`);
  if (server) server.kill("SIGKILL");
  process.exit(1);
}, timeoutMs);

let failed = 0;
try {
  await main();
} catch (err) {
  failed = 1;
  console.error("not ok - " + (err && err.stack ? err.stack : err));
  if (serverLogs) console.error("server log:\n" + serverLogs());
} finally {
  for (const b of browsers) await b.close().catch(() => {});
  try {
    const res = await stopServer();
    if (res && !failed) check(res.code === 0, `server exits 0 on SIGTERM (got ${res.code})`);
  } catch (err) {
    failed = 1;
    console.error("not ok - " + err.message);
    if (serverLogs) console.error("server log:\n" + serverLogs());
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  clearTimeout(timer);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
