// Browser test of /playground and /docs against the real server.
//
// It starts bin/server as `make run` does (serve --demo: a private Postgres
// under a temporary DATA_DIR, the built-in fal simulator with its latencies
// scaled down by FAL_SIMULATE_LATENCY_SCALE so a video takes seconds), with
// CORS_ALLOWED_ORIGINS naming the page's origin. The page is loaded from
// http://127.0.0.1:PORT and calls the API at http://localhost:PORT, another
// origin, so every API call is a real cross-origin call that only CORS
// lets through. In Debian's chromium (playwright-core) it:
//   - takes the demo token the page offers, picks video, fills its params
//     from the form the OpenAPI document drew, submits, sees the state
//     advance to succeeded and the video element appear;
//   - submits another video and cancels it;
//   - loads the page from an origin the server does not allow and sees the
//     connection refused;
//   - opens /docs with every request not to 127.0.0.1 aborted and sees the
//     renderer draw the operations.
// Screenshots go to SCREENSHOT_DIR (default riverui/e2e/out).
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

let passed = 0;
let server;
let browser;
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
function startServer(port, pageOrigin) {
  dataDir = mkdtempSync(join(tmpdir(), "aiqueue-e2e-"));
  const env = { ...process.env };
  delete env.DATABASE_URL;
  delete env.TEST_DATABASE_URL;
  for (const k of Object.keys(env)) if (k.startsWith("FAL_") || k.startsWith("RIVER_")) delete env[k];
  Object.assign(env, {
    DATA_DIR: dataDir,
    LISTEN_ADDR: `127.0.0.1:${port}`,
    METRICS_ADDR: "127.0.0.1:0",
    AUTH_JWT_SECRET: randomBytes(32).toString("hex"),
    FAL_SIMULATE: "true",
    FAL_SIMULATE_LATENCY_SCALE: "0.1", // images 0.2 s, videos 3 s
    CORS_ALLOWED_ORIGINS: pageOrigin,
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
  server.kill("SIGTERM");
  const result = await Promise.race([exited, sleep(60000).then(() => null)]);
  if (!result) {
    server.kill("SIGKILL");
    throw new Error("server did not stop within 60s of SIGTERM");
  }
  return result;
}

// newestJob waits for a job card beyond the before ones and returns the
// newest card's job id.
async function newestJob(page, before) {
  const card = page.locator("#jobs > li.job").first();
  await page.waitForFunction((n) => document.querySelectorAll("#jobs > li.job").length > n, before, { timeout: 30000 });
  return card.getAttribute("data-job-id");
}

// watchStates records every data-state a job card takes, in the page.
async function watchStates(page, id) {
  await page.evaluate((id) => {
    const seen = (window.__states ??= {});
    const card = document.querySelector(`li.job[data-job-id="${id}"]`);
    seen[id] = [card.dataset.state];
    new MutationObserver(() => {
      const s = card.dataset.state;
      if (seen[id].at(-1) !== s) seen[id].push(s);
    }).observe(card, { attributes: true, attributeFilter: ["data-state"] });
  }, id);
}

async function submitVideo(page, prompt) {
  const before = await page.locator("#jobs > li.job").count();
  await page.getByLabel("Operation", { exact: true }).selectOption("video");
  await page.getByLabel(/^prompt/).fill(prompt);
  await page.getByLabel(/^image_url/).fill("https://cdn.example.com/ring.jpg");
  await page.getByRole("button", { name: "Submit" }).click();
  const id = await newestJob(page, before);
  await watchStates(page, id);
  return id;
}

async function main() {
  mkdirSync(outDir, { recursive: true });
  const port = await freePort();
  const pageOrigin = `http://127.0.0.1:${port}`;
  const apiBase = `http://localhost:${port}`; // another origin, same server
  const { logs } = await startServer(port, pageOrigin);
  serverLogs = logs;

  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 1000 } });
  const page = await ctx.newPage();
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(err.message));
  const apiResponses = [];
  page.on("response", (r) => {
    if (r.url().startsWith(apiBase + "/v1/")) apiResponses.push(r);
  });

  // The playground, with the API on another origin.
  const resp = await page.goto(`${pageOrigin}/playground?api=${encodeURIComponent(apiBase)}`);
  check(resp.status() === 200, `GET /playground answers 200 (got ${resp.status()})`);
  check((await page.getByLabel("API base URL").inputValue()) === apiBase, `the API base is ${apiBase}`);
  const demo = page.getByRole("button", { name: "Use the demo token" });
  await demo.waitFor({ timeout: 10000 });
  check(await demo.isVisible(), "serve --demo: the page offers the demo token to this machine's browser");
  await demo.click();
  await page.getByLabel("Operation", { exact: true }).locator("option[value=video]").waitFor({ state: "attached", timeout: 30000 });
  check(true, "connected across origins: the operations are listed");
  await page.locator("#credits").filter({ hasText: /credits available/ }).waitFor({ timeout: 30000 });
  check(/1000 credits available/.test(await page.locator("#credits").textContent()), "the demo user's credits are shown");
  const granted = apiResponses.find((r) => r.url().includes("/v1/operations"));
  check(granted && (await granted.headerValue("access-control-allow-origin")) === pageOrigin, "the API granted the page's origin (CORS)");

  // The video's form comes from the document: its required params.
  await page.getByLabel("Operation", { exact: true }).selectOption("video");
  for (const name of ["prompt", "image_url"]) {
    const input = page.getByLabel(new RegExp(`^${name}`));
    check(await input.evaluate((el) => el.required), `video's ${name} field is there and required`);
  }

  // A video: the state advances and the video element appears.
  const videoID = await submitVideo(page, "a slow turn of a gold ring");
  const card = page.locator(`li.job[data-job-id="${videoID}"]`);
  await card.locator('[data-fact="State"]').waitFor({ timeout: 10000 });
  await page.screenshot({ path: join(outDir, "playground-submitted.png"), fullPage: true });
  await page.waitForFunction((id) => document.querySelector(`li.job[data-job-id="${id}"]`)?.dataset.state === "succeeded", videoID, {
    timeout: 90000,
  });
  const states = await page.evaluate((id) => window.__states[id], videoID);
  check(states.at(-1) === "succeeded" && states.length >= 2 && states.every((s) => ["queued", "running", "succeeded"].includes(s)),
    `job ${videoID}'s state advanced: ${states.join(" -> ")}`);
  const video = card.locator("video");
  await video.waitFor({ state: "attached", timeout: 10000 });
  const src = await video.getAttribute("src");
  check(/^https:\/\/.+\.mp4$/.test(src), `the video element shows the result (${src})`);
  check((await card.locator('[data-fact="Credits"]').textContent()) === "10 charged", "the video's credits are charged");
  await page.screenshot({ path: join(outDir, "playground-video.png"), fullPage: true });

  // Another video, cancelled.
  const cancelID = await submitVideo(page, "cancel me");
  await page.getByRole("button", { name: `Cancel job ${cancelID}` }).click();
  await page.waitForFunction((id) => document.querySelector(`li.job[data-job-id="${id}"]`)?.dataset.state === "cancelled", cancelID, {
    timeout: 60000,
  });
  const cancelled = page.locator(`li.job[data-job-id="${cancelID}"]`);
  check((await cancelled.locator('[data-fact="Credits"]').textContent()) === "10 refunded", `job ${cancelID} is cancelled and refunded`);
  check(await cancelled.getByRole("button", { name: `Cancel job ${cancelID}` }).isDisabled(), "a finished job cannot be cancelled again");
  await page.locator("#credits").filter({ hasText: "990 credits available" }).waitFor({ timeout: 10000 });
  check(true, "credits: one video charged, one refunded");
  await page.screenshot({ path: join(outDir, "playground-cancelled.png"), fullPage: true });
  check(pageErrors.length === 0, `no script error on the page (${pageErrors.join("; ")})`);

  // From an origin the server does not list, the browser refuses the calls.
  const other = await ctx.newPage();
  await other.goto(`http://localhost:${port}/playground?api=${encodeURIComponent(pageOrigin)}`);
  await other.getByLabel("Bearer token").fill("any-token");
  await other.getByRole("button", { name: "Connect" }).click();
  await other.locator("#error").filter({ hasText: /fetch/i }).waitFor({ timeout: 30000 });
  check(await other.locator("#submit-form").isHidden(), "a page on an origin not in CORS_ALLOWED_ORIGINS cannot call the API");
  await other.screenshot({ path: join(outDir, "playground-refused-origin.png"), fullPage: true });
  await other.close();

  // /docs with the network blocked: only 127.0.0.1 answers.
  const docs = await ctx.newPage();
  const blocked = [];
  await docs.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === "127.0.0.1") return route.continue();
    blocked.push(url.href);
    return route.abort("internetdisconnected");
  });
  const docsResp = await docs.goto(`${pageOrigin}/docs`);
  check(docsResp.status() === 200, `GET /docs answers 200 (got ${docsResp.status()})`);
  for (const summary of ["Submit a job", "Cancel a job", "Submit a batch of jobs", "List the AI operations"]) {
    await docs.getByText(summary, { exact: true }).first().waitFor({ timeout: 30000 });
  }
  check(true, "the docs renderer drew the operations with the network blocked");
  check(blocked.length === 0, `/docs asked for nothing off this server (${blocked.join(", ") || "none"})`);
  await docs.screenshot({ path: join(outDir, "docs-offline.png"), fullPage: false });
  await docs.close();
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
  if (browser) await browser.close().catch(() => {});
  try {
    const res = await stopServer();
    if (res && !failed) check(res.code === 0, `server exits 0 on SIGTERM (got ${res.code})`);
  } catch (err) {
    failed = 1;
    console.error("not ok - " + err.message);
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  clearTimeout(timer);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
