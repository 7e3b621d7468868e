// The test harness: builds and starts the real server (bin/server serve) on a
// free loopback port, with its own private Postgres under a temp DATA_DIR and
// the built-in fal simulator, and stops it with SIGTERM.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { createClient, type AIQueueClient } from "@aiqueue/client";

const run = promisify(execFile);

/** The repository root: the nearest directory above this file with a go.mod. */
export const repoRoot = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "go.mod"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("harness: no go.mod above " + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
})();

const secret = "ts-client-test-" + randomUUID();

let built: Promise<string> | undefined;

/** Builds bin/server once per test run (or uses AIQUEUE_SERVER_BIN). */
export function serverBinary(): Promise<string> {
  built ??= (async () => {
    const given = process.env.AIQUEUE_SERVER_BIN;
    if (given) return resolve(given);
    const bin = join(repoRoot, "bin", "server");
    await run("go", ["build", "-o", bin, "./cmd/server"], { cwd: repoRoot, timeout: 300_000 });
    return bin;
  })();
  return built;
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => (addr && typeof addr === "object" ? res(addr.port) : rej(new Error("no port"))));
    });
  });
}

/** A running server. */
export interface TestServer {
  url: string;
  /** The server's process id. */
  pid: number;
  /** Mints a token with `server token` (ttl like "1h" or "-1h"). */
  token(sub: string, opts?: { admin?: boolean; ttl?: string }): Promise<string>;
  /** A fresh user with a valid token, granted `credits` (none when 0). */
  newUser(credits: number): Promise<{ id: string; token: string; client: AIQueueClient }>;
  /** The server's output so far (for failure messages). */
  output(): string;
  /** SIGTERM, wait for exit (SIGKILL and pg_ctl stop after 30 s), remove DATA_DIR. */
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();

// A test process that dies or is interrupted still stops its servers.
process.once("exit", () => {
  for (const child of running) child.kill("SIGTERM");
});
// Bound the whole run: a hung test process stops its servers and fails.
setTimeout(() => {
  console.error("harness: the test run took more than 10 minutes; stopping the servers");
  process.exit(1);
}, 10 * 60_000).unref();
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    for (const child of running) child.kill("SIGTERM");
    process.exit(130);
  });
}

/**
 * Starts `bin/server serve` with env on top of a minimal environment (no
 * DATABASE_URL: the server starts its own Postgres), and waits until
 * /readyz answers 200.
 */
export async function startServer(env: Record<string, string> = {}): Promise<TestServer> {
  const bin = await serverBinary();
  const dataDir = await mkdtemp(join(tmpdir(), "aiqueue-ts-"));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const baseEnv: Record<string, string> = {
    PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
    HOME: process.env.HOME ?? "/root",
    TMPDIR: process.env.TMPDIR ?? "/tmp",
    DATA_DIR: dataDir,
    AUTH_JWT_SECRET: secret,
    LISTEN_ADDR: `127.0.0.1:${port}`,
    METRICS_ADDR: "127.0.0.1:0",
    FAL_SIMULATE: "true",
    FAL_SIMULATE_FAST: "true",
    LOG_LEVEL: "warn",
    SHUTDOWN_TIMEOUT: "5s",
    ...env,
  };
  const child = spawn(bin, ["serve"], { env: baseEnv, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  let out = "";
  const keep = (b: Buffer) => {
    out = (out + b.toString()).slice(-20_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<number | null>((res) =>
    child.once("exit", (code) => {
      running.delete(child);
      res(code);
    }),
  );

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      await exited;
      clearTimeout(timer);
    }
    // A server that shut down cleanly stopped its Postgres; one that was
    // killed left it running.
    await stopPostgres(join(dataDir, "postgres"));
    await rm(dataDir, { recursive: true, force: true });
  };

  const deadline = Date.now() + 90_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`server exited with ${child.exitCode} before it was ready:\n${out}`);
    }
    try {
      const res = await fetch(url + "/readyz", { signal: AbortSignal.timeout(2000) });
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`server not ready in 90 s:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  const token = async (sub: string, opts: { admin?: boolean; ttl?: string } = {}) => {
    const args = ["token", "--sub", sub, `--ttl=${opts.ttl ?? "1h"}`];
    if (opts.admin) args.push("--admin");
    const { stdout } = await run(bin, args, { env: baseEnv, timeout: 30_000 });
    return stdout.trim();
  };
  const admin = createClient({ baseUrl: url, token: await token(randomUUID(), { admin: true }) });

  return {
    url,
    pid: child.pid ?? 0,
    token,
    async newUser(credits) {
      const id = randomUUID();
      const tok = await token(id);
      if (credits > 0) {
        const { response } = await admin.raw.POST("/v1/admin/credits/grants", {
          body: { user_id: id, amount: credits, reason: "ts client test" },
          params: { header: { "Idempotency-Key": "grant-" + id } },
        });
        if (response.status !== 201) throw new Error(`grant: ${response.status}`);
      }
      return { id, token: tok, client: createClient({ baseUrl: url, token: tok }) };
    },
    output: () => out,
    stop,
  };
}

/** Stops a Postgres left behind by a killed server (as the postgres user when root). */
async function stopPostgres(pgdata: string): Promise<void> {
  if (!existsSync(join(pgdata, "postmaster.pid"))) return;
  const stop = [findPgCtl(), "-D", pgdata, "stop", "-m", "immediate"];
  const [file, ...args] = process.getuid?.() === 0 ? ["runuser", "-u", "postgres", "--", ...stop] : stop;
  await run(file!, args, { timeout: 30_000 }).catch(() => {});
}

function findPgCtl(): string {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir && existsSync(join(dir, "pg_ctl"))) return join(dir, "pg_ctl");
  }
  const base = "/usr/lib/postgresql";
  if (existsSync(base)) {
    for (const v of readdirSync(base).sort().reverse()) {
      const p = join(base, v, "bin", "pg_ctl");
      if (existsSync(p)) return p;
    }
  }
  return "pg_ctl";
}

/** Records every request a client makes and lets a test fail some of them. */
export function recordingFetch(fail?: (req: Request) => Response | Error | undefined) {
  const seen: { method: string; url: URL; status: number; contentType: string }[] = [];
  const fetchFn = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    const injected = fail?.(req);
    if (injected instanceof Error) {
      seen.push({ method: req.method, url, status: 0, contentType: "" });
      throw injected;
    }
    const res = injected ?? (await fetch(req));
    seen.push({ method: req.method, url, status: res.status, contentType: res.headers.get("Content-Type") ?? "" });
    return res;
  };
  return { fetch: fetchFn, seen };
}
