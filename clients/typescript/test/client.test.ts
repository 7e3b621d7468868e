// The client against the real server (bin/server serve, private Postgres,
// built-in fal simulator). Two servers: `fast` answers fal requests at once;
// `slow` keeps the simulator's latencies (image ~2 s, video 30 s) so a job
// can be watched while it runs or cancelled before it ends, and allows one
// submit per user per minute (RATE_LIMIT_PER_MINUTE=1, RATE_LIMIT_BURST=1),
// so every test on it uses a fresh user for each submit. `fast` takes
// webhook endpoints on loopback (WEBHOOK_ALLOW_PRIVATE=true).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createServer, type IncomingHttpHeaders } from "node:http";
import { after, before, describe, it } from "node:test";

import {
  createClient,
  isProblem,
  ProblemError,
  resultUrls,
  waitForBatch,
  type Batch,
  type Job,
  type ParamsOf,
  type SubmitJobBody,
  verifyWebhook,
  WebhookVerificationError,
} from "@aiqueue/client";
import { AIQueueProvider, useAIQueue, type AIQueue } from "@aiqueue/client/react";
import { act, createElement } from "react";
import { create, type ReactTestRenderer } from "react-test-renderer";

import { recordingFetch, startServer, type TestServer } from "./harness.js";

const minute = 60_000;
const t = { timeout: minute };

let fast: TestServer;
let slow: TestServer;

before(
  async () => {
    const [f, s] = await Promise.allSettled([
      startServer({ RATE_LIMIT_PER_MINUTE: "6000", RATE_LIMIT_BURST: "1000", WEBHOOK_ALLOW_PRIVATE: "true" }),
      startServer({ FAL_SIMULATE_FAST: "false", RATE_LIMIT_PER_MINUTE: "1", RATE_LIMIT_BURST: "1" }),
    ]);
    if (f.status === "fulfilled") fast = f.value;
    if (s.status === "fulfilled") slow = s.value;
    if (f.status === "rejected") throw f.reason;
    if (s.status === "rejected") throw s.reason;
  },
  { timeout: 5 * minute },
);

after(async () => {
  await Promise.allSettled([fast?.stop(), slow?.stop()]);
});

const generate = (prompt = "a gold ring on marble") => ({ operation: "generate" as const, params: { prompt } });
const video = { operation: "video" as const, params: { prompt: "a slow turn", image_url: "https://example.com/ring.jpg" } };

/** Asserts that p rejects with a ProblemError and returns it. */
async function problem(p: Promise<unknown>): Promise<ProblemError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ProblemError, `expected a ProblemError, got ${String(err)}`);
    return err;
  }
  assert.fail("expected a ProblemError, but the call succeeded");
}

/** The GET /v1/jobs/{id} requests among seen, with their wait parameter. */
function jobReads(seen: { method: string; url: URL }[], id: string) {
  return seen.filter((r) => r.method === "GET" && r.url.pathname === `/v1/jobs/${id}`).map((r) => r.url.searchParams.get("wait"));
}

describe("Jobs", () => {
  it("SubmitsWaitsAndCharges", t, async () => {
    const { client } = await fast.newUser(10);
    const job = await client.submitJob(generate());
    assert.equal(typeof job.id, "string");
    assert.equal(job.operation, "generate");
    assert.deepEqual(job.credits, { amount: 1, state: "reserved" });

    const updates: Job[] = [];
    const done = await client.waitForJob(job.id, { onUpdate: (j) => updates.push(j), signal: AbortSignal.timeout(30_000) });
    assert.equal(done.state, "succeeded");
    assert.equal(done.credits.state, "charged");
    const result = done.result as { images?: { url: string }[] };
    assert.ok(result.images && result.images.length > 0 && result.images[0]!.url.startsWith("https://"));
    assert.equal(updates.at(-1)?.state, "succeeded");
    assert.deepEqual(resultUrls(done), [result.images[0]!.url]);

    const credits = await client.getCredits();
    assert.equal(credits.balance, 9);
    assert.equal(credits.reserved, 0);
    assert.equal(credits.available, 9);

    const again = await client.getJob(job.id);
    assert.equal(again.state, "succeeded");
    const list = await client.listJobs({ limit: 5 });
    assert.deepEqual(list.jobs?.map((j) => j.id), [job.id]);
  });

  it("ChecksParamsPerOperation", t, async () => {
    const { client } = await fast.newUser(10);
    // The body type is the document's union, discriminated by operation:
    // each operation's required params are checked by the compiler (these
    // lines fail `npm test`'s build if the types stop catching them).
    const edit: SubmitJobBody = {
      operation: "edit",
      params: { prompt: "polish it", image_urls: ["https://example.com/ring.jpg"], aspect_ratio: "1:1" },
    };
    // @ts-expect-error edit takes no seed: params an operation does not declare are refused
    const unknownParam: SubmitJobBody = { operation: "edit", params: { prompt: "p", image_urls: ["https://example.com/ring.jpg"], seed: 7 } };
    // @ts-expect-error edit needs image_urls
    const noImages: SubmitJobBody = { operation: "edit", params: { prompt: "polish it" } };
    // @ts-expect-error remove-bg takes image_url, a string
    const wrongType: SubmitJobBody = { operation: "remove-bg", params: { image_url: 3 } };
    // @ts-expect-error edit's params do not make a remove-bg job (it needs image_url)
    const otherOps: SubmitJobBody = { operation: "remove-bg", params: { prompt: "p", image_urls: ["https://example.com/ring.jpg"] } };
    // @ts-expect-error no such operation
    const unknownOp: SubmitJobBody = { operation: "paint", params: {} };
    const upscale: ParamsOf<"upscale"> = { image_url: "https://example.com/ring.jpg" };
    void [noImages, wrongType, otherOps, unknownOp, unknownParam];

    const jobs = [await client.submitJob(edit), await client.submitJob({ operation: "upscale", params: upscale })];
    assert.deepEqual(jobs.map((j) => j.operation), ["edit", "upscale"]);
    const batch = await client.submitBatch({
      items: [edit, { operation: "remove-bg", params: { image_url: "https://example.com/ring.jpg" } }],
      priority: "background",
    });
    assert.equal(batch.total, 2);
    assert.equal(batch.priority, "background");
    const done = await Promise.all(
      [...jobs.map((j) => j.id), ...(batch.job_ids ?? [])].map((id) =>
        client.waitForJob(id, { signal: AbortSignal.timeout(30_000) }),
      ),
    );
    assert.deepEqual(done.map((j) => j.state), ["succeeded", "succeeded", "succeeded", "succeeded"]);
  });

  it("ReplaysAnIdempotentSubmit", t, async () => {
    const { client } = await fast.newUser(5);
    const key = "submit-" + randomUUID();
    const first = await client.submitJob(generate("once"), { idempotencyKey: key });
    const again = await client.submitJob(generate("once"), { idempotencyKey: key });
    assert.equal(again.id, first.id);
    // The same key with another body is refused.
    assert.equal((await problem(client.submitJob(generate("twice"), { idempotencyKey: key }))).status, 422);
    await client.waitForJob(first.id, { signal: AbortSignal.timeout(30_000) });
    const credits = await client.getCredits();
    assert.deepEqual([credits.balance, credits.reserved], [4, 0], "charged once");
    assert.equal((await client.listJobs()).jobs?.length, 1);
  });

  it("ListsOperations", t, async () => {
    const { client } = await fast.newUser(0);
    const ops = await client.listOperations();
    const gen = ops.find((o) => o.operation === "generate");
    assert.ok(gen, "generate is in the catalog");
    assert.equal(gen.cost, 1);
    assert.equal(gen.kind, "image");
    assert.ok(gen.required?.includes("prompt"));
    assert.equal(ops.find((o) => o.operation === "video")?.kind, "video");
  });

  it("HidesSomeoneElsesJob", t, async () => {
    const a = await fast.newUser(1);
    const b = await fast.newUser(0);
    const job = await a.client.submitJob(generate());
    const err = await problem(b.client.getJob(job.id));
    assert.equal(err.status, 404);
    // waitForJob surfaces it too, whichever way it follows the job.
    const waited = await problem(b.client.waitForJob(job.id, { signal: AbortSignal.timeout(30_000) }));
    assert.equal(waited.status, 404);
  });
});

describe("Wait", { concurrency: true }, () => {
  it("FollowsTheEventStream", t, async () => {
    const user = await slow.newUser(1);
    const rec = recordingFetch();
    const client = createClient({ baseUrl: slow.url, token: user.token, fetch: rec.fetch });
    const job = await client.submitJob(generate());
    const states: string[] = [];
    const stages: string[] = [];
    const done = await client.waitForJob(job.id, {
      transport: "sse",
      onUpdate: (j) => (states.push(j.state), stages.push(j.progress.stage ?? "")),
      signal: AbortSignal.timeout(45_000),
    });
    assert.equal(done.state, "succeeded");
    assert.equal(states.at(-1), "succeeded");
    // progress events: fal's stage while the state stays running.
    assert.ok(stages.includes("in_progress"), `the stream delivered fal's progress: ${stages.join(",")}`);
    const events = rec.seen.filter((r) => r.url.pathname === `/v1/jobs/${job.id}/events`);
    assert.ok(events.length >= 1);
    assert.equal(events[0]!.status, 200);
    assert.match(events[0]!.contentType, /^text\/event-stream/);
    assert.ok(states.includes("running"), `the stream delivered running: ${states.join(",")}`);
    // Only the first read: the final state came from the stream, not from
    // reading the job again after it closed.
    assert.deepEqual(jobReads(rec.seen, job.id), [null], "one plain read, no long poll while the stream works");
  });

  it("LongPollsWithWait", t, async () => {
    const user = await slow.newUser(1);
    const rec = recordingFetch();
    const client = createClient({ baseUrl: slow.url, token: user.token, fetch: rec.fetch });
    const job = await client.submitJob(generate());
    const states: string[] = [];
    const done = await client.waitForJob(job.id, {
      transport: "poll",
      onUpdate: (j) => states.push(j.state),
      signal: AbortSignal.timeout(45_000),
    });
    assert.equal(done.state, "succeeded");
    assert.equal(states.at(-1), "succeeded");
    assert.ok(jobReads(rec.seen, job.id).includes("25"), "long polls carry ?wait=25");
    assert.ok(!rec.seen.some((r) => r.url.pathname.endsWith("/events")), "poll never opens the stream");
    // States never go backwards (an update comes with each change the
    // studio can see, fal's progress too, so a state may repeat).
    const order = ["queued", "running", "succeeded"];
    for (let i = 1; i < states.length; i++) assert.ok(order.indexOf(states[i] ?? "") >= order.indexOf(states[i - 1] ?? ""), states.join(" "));
  });

  for (const [name, failure] of [
    ["FallsBackToLongPollsWhenTheStreamIsRefused", () => problemResponse(502)],
    ["FallsBackToLongPollsWhenTheStreamCannotConnect", () => new TypeError("fetch failed")],
  ] as const) {
    it(name, t, async () => {
      const user = await slow.newUser(1);
      const rec = recordingFetch((req) => (new URL(req.url).pathname.endsWith("/events") ? failure() : undefined));
      const client = createClient({ baseUrl: slow.url, token: user.token, fetch: rec.fetch });
      const job = await client.submitJob(generate());
      const done = await client.waitForJob(job.id, { signal: AbortSignal.timeout(45_000) });
      assert.equal(done.state, "succeeded");
      assert.equal(rec.seen.filter((r) => r.url.pathname.endsWith("/events")).length, 1, "the stream is tried once");
      assert.ok(jobReads(rec.seen, job.id).includes("25"), "then long polls with ?wait=25");
    });
  }

  it("StopsWhenAborted", t, async () => {
    const user = await slow.newUser(10);
    const job = await user.client.submitJob(video);
    const ctrl = new AbortController();
    const started = Date.now();
    setTimeout(() => ctrl.abort(), 300);
    await assert.rejects(user.client.waitForJob(job.id, { signal: ctrl.signal }), { name: "AbortError" });
    assert.ok(Date.now() - started < 10_000, "abort ends the wait promptly");
    // The video is cancelled at once between its polls of fal; during one
    // its worker stops it (the cancel answers "running").
    const cancelled = await user.client.cancelJob(job.id);
    assert.ok(["cancelled", "queued", "running"].includes(cancelled.state), cancelled.state);
    const done = await user.client.waitForJob(job.id, { signal: AbortSignal.timeout(30_000) });
    assert.equal(done.state, "cancelled");
  });
});

describe("Cancel", () => {
  it("CancelsAndRefunds", t, async () => {
    const { client } = await slow.newUser(20);
    const job = await client.submitJob(video);
    assert.equal((await client.getCredits()).available, 10);

    // A queued job is cancelled at once; one a worker holds when the
    // worker stops (the fal request is cancelled too): it still reads
    // queued until fal accepted its request, running after.
    const cancelled = await client.cancelJob(job.id);
    assert.ok(["cancelled", "queued", "running"].includes(cancelled.state), cancelled.state);
    const done = await client.waitForJob(job.id, { signal: AbortSignal.timeout(30_000) });
    assert.equal(done.state, "cancelled");
    assert.equal(done.credits.state, "refunded");
    const credits = await client.getCredits();
    assert.deepEqual([credits.balance, credits.reserved, credits.available], [20, 0, 20]);

    // A finished job is not cancelled again: 409 with the job unchanged.
    const err = await problem(client.cancelJob(job.id));
    assert.equal(err.status, 409);
    assert.equal(err.job?.id, job.id);
    assert.equal(err.job?.state, "cancelled");
  });
});

describe("Batch", () => {
  it("SubmitsAndWaitsForEveryJob", t, async () => {
    const { client } = await fast.newUser(10);
    const batch = await client.submitBatch({ items: [generate("one"), generate("two"), generate("three")] });
    assert.equal(typeof batch.id, "string");
    assert.equal(batch.total, 3);
    assert.ok(batch.job_ids, "job_ids is set");
    assert.equal(batch.job_ids.length, 3);
    assert.deepEqual(batch.counts, { queued: 3, running: 0, succeeded: 0, failed: 0, cancelled: 0 });
    assert.equal(batch.done, false);
    assert.equal((await client.getCredits()).available, 7);

    const jobs = await Promise.all(
      batch.job_ids.map((id) => client.waitForJob(id, { signal: AbortSignal.timeout(30_000) })),
    );
    assert.deepEqual(jobs.map((j) => j.state), ["succeeded", "succeeded", "succeeded"]);
    const after = await client.getBatch(batch.id);
    assert.equal(after.done, true);
    assert.equal(after.counts.succeeded, 3);
    assert.deepEqual(after.job_ids, batch.job_ids);
  });

  it("WaitsForTheBatch", t, async () => {
    const { token } = await fast.newUser(20);
    const rec = recordingFetch();
    const client = createClient({ baseUrl: fast.url, token, fetch: rec.fetch });
    const batch = await client.submitBatch({
      items: [
        { operation: "generate", params: { prompt: "two rings", num_images: 2 } },
        { operation: "upscale", params: { image_url: "https://example.com/ring.jpg" } },
        video,
      ],
    });
    const updates: Batch[] = [];
    const done = await waitForBatch(client, batch.id, { onUpdate: (b) => updates.push(b), signal: AbortSignal.timeout(30_000) });
    assert.equal(done.done, true);
    assert.deepEqual(done.counts, { queued: 0, running: 0, succeeded: 3, failed: 0, cancelled: 0 });
    assert.equal(updates.at(-1)?.done, true);
    // It follows the batch's event stream.
    const events = rec.seen.filter((r) => r.url.pathname === `/v1/batches/${batch.id}/events`);
    assert.equal(events.length, 1, "the stream is opened once");
    assert.equal(events[0]!.status, 200);
    assert.match(events[0]!.contentType, /^text\/event-stream/);

    // Each job's result, by kind: two images, one image, one video.
    const jobs = await Promise.all(done.job_ids.map((id) => client.getJob(id)));
    const urls = jobs.map(resultUrls);
    assert.deepEqual(urls.map((u) => u.length), [2, 1, 1]);
    assert.match(urls[2]![0]!, /^https:\/\/.*\.mp4$/);
  });

  for (const transport of ["sse", "poll"] as const) {
    it(`FollowsTheBatchCounts_${transport}`, t, async () => {
      // Two images at the simulator's own pace: the counts move from
      // queued through running to succeeded, and each move is an update.
      const { token } = await slow.newUser(5);
      const rec = recordingFetch();
      const client = createClient({ baseUrl: slow.url, token, fetch: rec.fetch });
      const batch = await client.submitBatch({ items: [generate("a"), generate("b")] });
      const counts: string[] = [];
      const done = await waitForBatch(client, batch.id, {
        transport,
        onUpdate: (b) => counts.push(`${b.counts.queued}/${b.counts.running}/${b.counts.succeeded}`),
        signal: AbortSignal.timeout(45_000),
      });
      assert.equal(done.counts.succeeded, 2);
      assert.equal(counts.at(-1), "0/0/2");
      assert.ok(counts.length >= 2, counts.join(" "));
      if (transport === "sse") {
        // The stream sends each change after the first: the jobs' running is
        // seen. A long poll is held until the counts differ from its own
        // first count, so a change that lands between two polls (both jobs
        // taken by fal in the few milliseconds between the plain read and
        // the first long poll) is not reported on its own: a fresh-clone
        // make test saw "2/0/0 0/0/2".
        assert.ok(counts.some((c) => c.split("/")[1] !== "0"), `a running job was seen: ${counts.join(" ")}`);
      }
      const reads = rec.seen.filter((r) => r.url.pathname === `/v1/batches/${batch.id}`).map((r) => r.url.searchParams.get("wait"));
      const streams = rec.seen.filter((r) => r.url.pathname === `/v1/batches/${batch.id}/events`);
      if (transport === "sse") {
        assert.deepEqual(reads, [null], "one plain read, then the stream");
        assert.equal(streams.length, 1);
      } else {
        assert.equal(streams.length, 0, "poll never opens the stream");
        assert.equal(reads[0], null);
        assert.ok(reads.slice(1).every((w) => w === "25"), `long polls carry ?wait=25: ${reads.join(",")}`);
        // Woken by each change, not by timeouts: about one poll per update.
        assert.ok(reads.length <= counts.length + 2, `${reads.length} reads for ${counts.length} updates`);
      }
    });
  }

  it("ReservesNothingWhenCreditsFallShort", t, async () => {
    const { client } = await fast.newUser(2);
    const err = await problem(client.submitBatch({ items: [generate("a"), generate("b"), generate("c")] }));
    assert.equal(err.status, 402);
    assert.equal(err.needed, 3);
    assert.equal(err.available, 2);
    assert.equal(err.shortfall, 1);
    const credits = await client.getCredits();
    assert.deepEqual([credits.reserved, credits.available], [0, 2]);
    assert.deepEqual((await client.listJobs()).jobs, []);
  });
});

describe("Problems", () => {
  it("402SaysWhatIsMissing", t, async () => {
    const { client } = await fast.newUser(1);
    const err = await problem(client.submitJob(video));
    assert.ok(isProblem(err, 402));
    assert.equal(err.title, "Payment Required");
    assert.equal(err.needed, 10);
    assert.equal(err.available, 1);
    assert.equal(err.shortfall, 9);
    assert.equal((await client.getCredits()).available, 1);
  });

  it("422ListsEveryError", t, async () => {
    const { client } = await fast.newUser(5);
    // Deliberately invalid, past the types: edit needs prompt and image_urls.
    const invalid = { operation: "edit", params: {} } as unknown as SubmitJobBody;
    const err = await problem(client.submitJob(invalid));
    assert.equal(err.status, 422);
    // A missing field is located at its parent object and named in the
    // message (huma's convention; cmd/server/status_test.go MissingParams).
    const errors = err.errors.map((e) => [e.location, e.message]).sort();
    assert.deepEqual(errors, [
      ["body.params", "expected required property image_urls to be present"],
      ["body.params", "expected required property prompt to be present"],
    ]);
    assert.equal(err.problem.errors?.length, 2);
  });

  it("422LocatesBatchItems", t, async () => {
    const { client } = await fast.newUser(5);
    // Well typed, but the server accepts only https (or data:image) inputs.
    const err = await problem(
      client.submitBatch({
        items: [generate(), { operation: "upscale", params: { image_url: "http://plain.example.com/a.png" } }],
      }),
    );
    assert.equal(err.status, 422);
    assert.deepEqual(err.errors.map((e) => e.location), ["body.items[1].params.image_url"]);
    assert.deepEqual((await client.getCredits()).reserved, 0);
  });

  it("429CarriesRetryAfter", t, async () => {
    const { client } = await slow.newUser(5);
    const first = await client.submitJob(generate());
    const err = await problem(client.submitJob(generate()));
    assert.equal(err.status, 429);
    assert.ok(err.retryAfter !== undefined && err.retryAfter >= 1 && err.retryAfter <= 60, `retryAfter=${err.retryAfter}`);
    // The refused submit reserved and charged nothing.
    await client.waitForJob(first.id, { signal: AbortSignal.timeout(45_000) });
    const credits = await client.getCredits();
    assert.deepEqual([credits.balance, credits.reserved, credits.available], [4, 0, 4]);
  });

  it("401ForAnExpiredToken", t, async () => {
    const sub = randomUUID();
    const client = createClient({ baseUrl: fast.url, token: await fast.token(sub, { ttl: "-1h" }) });
    const err = await problem(client.getCredits());
    assert.equal(err.status, 401);
    assert.equal(err.title, "Unauthorized");
    assert.match(err.detail ?? "", /expired/);
    const submit = await problem(client.submitJob(generate()));
    assert.equal(submit.status, 401);
  });

  it("AsksGetTokenBeforeEveryRequest", t, async () => {
    const sub = randomUUID();
    const tokens = [await fast.token(sub, { ttl: "-1h" }), await fast.token(sub)];
    let calls = 0;
    const client = createClient({ baseUrl: fast.url, getToken: async () => tokens[Math.min(calls++, 1)] });
    assert.equal((await problem(client.getCredits())).status, 401);
    const credits = await client.getCredits();
    assert.equal(credits.available, 0);
    assert.equal(calls, 2);
  });
});

describe("Webhooks", () => {
  it("VerifiesARealDelivery", t, async () => {
    // The studio's backend: records every webhook's headers and raw body.
    const got: { headers: IncomingHttpHeaders; body: Buffer }[] = [];
    const receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        got.push({ headers: req.headers, body: Buffer.concat(chunks) });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((res) => receiver.listen(0, "127.0.0.1", res));
    const addr = receiver.address();
    assert.ok(addr && typeof addr === "object");
    const adminToken = await fast.token(randomUUID(), { admin: true });
    const admin = (method: string, path: string, body?: unknown) =>
      fetch(fast.url + path, {
        method,
        headers: { Authorization: `Bearer ${adminToken}`, "Content-Type": "application/json" },
        body: body === undefined ? null : JSON.stringify(body),
      });
    const created = await admin("POST", "/v1/admin/webhook-endpoints", {
      url: `http://127.0.0.1:${addr.port}/hooks`,
      events: ["job.succeeded"],
    });
    assert.equal(created.status, 201, await created.clone().text());
    const endpoint = (await created.json()) as { id: string; secret: string };
    assert.match(endpoint.secret, /^whsec_/);
    try {
      const { client } = await fast.newUser(10);
      const job = await client.submitJob(generate("a ring for the webhook"));
      const done = await client.waitForJob(job.id, { signal: AbortSignal.timeout(30_000) });
      assert.equal(done.state, "succeeded");

      // Other tests' jobs end on this server too: wait for this job's event.
      const deadline = Date.now() + 30_000;
      let hook: (typeof got)[number] | undefined;
      while (!hook) {
        hook = got.find((h) => h.body.includes(`"id":"${job.id}"`));
        if (!hook) {
          assert.ok(Date.now() < deadline, `no webhook for job ${job.id} in 30 s:\n${fast.output()}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      }

      // Node's req.headers and the raw body, as a backend has them.
      const event = await verifyWebhook(endpoint.secret, hook.headers, hook.body);
      assert.equal(event.type, "job.succeeded");
      const { $schema: _, ...shown } = (await client.getJob(job.id)) as Job & { $schema?: string };
      assert.deepEqual(event.data, shown);
      assert.match(String(hook.headers["webhook-id"]), /^evt_[0-9a-f]{32}$/);
      // As a fetch-style handler has them.
      const asHeaders = new Headers(Object.entries(hook.headers).map(([k, v]): [string, string] => [k, String(v)]));
      assert.deepEqual(await verifyWebhook(endpoint.secret, asHeaders, hook.body.toString()), event);

      // Forged: another secret, or a body changed on the way.
      const other = "whsec_" + Buffer.from(randomUUID().replaceAll("-", ""), "hex").toString("base64");
      await assert.rejects(verifyWebhook(other, hook.headers, hook.body), (e) => e instanceof WebhookVerificationError && e.code === "bad_signature");
      const changed = hook.body.toString().replace('"succeeded"', '"failed"');
      await assert.rejects(verifyWebhook(endpoint.secret, hook.headers, changed), (e) => e instanceof WebhookVerificationError && e.code === "bad_signature");
      // Replayed: the same delivery 6 minutes later.
      await assert.rejects(
        verifyWebhook(endpoint.secret, hook.headers, hook.body, { now: Date.now() + 6 * minute }),
        (e) => e instanceof WebhookVerificationError && e.code === "stale_timestamp",
      );
    } finally {
      const del = await admin("DELETE", `/v1/admin/webhook-endpoints/${endpoint.id}`);
      assert.equal(del.status, 204);
      receiver.closeAllConnections();
      await new Promise((res) => receiver.close(res));
    }
  });
});

describe("useAIQueue", () => {
  it("SubmitsAndGetsTheFinalJob", t, async () => {
    const { client } = await fast.newUser(3);
    const { hook, renderer } = await mount(client);
    const { submitJob, getStatus } = hook;
    const job = await submitJob(generate());
    assert.equal(job.credits.state, "reserved");
    const states: string[] = [];
    const done = await getStatus(job.id, { onUpdate: (j) => states.push(j.state) });
    assert.equal(done.state, "succeeded");
    assert.equal(done.credits.state, "charged");
    assert.equal(states.at(-1), "succeeded");
    // The same functions on the next render.
    let next: AIQueue | undefined;
    await act(async () => renderer.update(provide(client, (q) => (next = q))));
    assert.equal(next?.getStatus, getStatus);
    assert.equal(next?.submitJob, submitJob);
    await act(async () => renderer.unmount());
  });

  it("StopsWaitingOnUnmount", t, async () => {
    const { client } = await slow.newUser(10);
    const { hook, renderer } = await mount(client);
    const job = await hook.submitJob(video);
    const waiting = assert.rejects(hook.getStatus(job.id), { name: "AbortError" });
    await new Promise((r) => setTimeout(r, 200));
    await act(async () => renderer.unmount());
    await waiting;
    // A job the worker holds right now ends cancelled once the worker stops.
    const cancelled = await client.cancelJob(job.id);
    assert.ok(["cancelled", "running"].includes(cancelled.state), cancelled.state);
    assert.equal((await client.waitForJob(job.id)).state, "cancelled");
  });
});

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

function Probe({ onHook }: { onHook: (q: AIQueue) => void }) {
  onHook(useAIQueue());
  return null;
}

function provide(client: ReturnType<typeof createClient>, onHook: (q: AIQueue) => void) {
  return createElement(AIQueueProvider, { client }, createElement(Probe, { onHook }));
}

/** Renders a component using useAIQueue under a provider, with react-test-renderer. */
async function mount(client: ReturnType<typeof createClient>): Promise<{ hook: AIQueue; renderer: ReactTestRenderer }> {
  let hook: AIQueue | undefined;
  let renderer: ReactTestRenderer | undefined;
  // react-test-renderer logs that it is deprecated; it is still the lightest
  // way to run effects (unmount) without a DOM.
  const consoleError = console.error;
  console.error = (...args: unknown[]) => {
    if (typeof args[0] === "string" && args[0].startsWith("react-test-renderer is deprecated")) return;
    consoleError(...args);
  };
  try {
    await act(async () => {
      renderer = create(provide(client, (q) => (hook = q)));
    });
  } finally {
    console.error = consoleError;
  }
  assert.ok(hook && renderer);
  return { hook, renderer };
}

function problemResponse(status: number): Response {
  return new Response(JSON.stringify({ title: "Bad Gateway", status, detail: "injected by the test" }), {
    status,
    headers: { "Content-Type": "application/problem+json" },
  });
}
