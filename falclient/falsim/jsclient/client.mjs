// Runs fal's official JavaScript client (@fal-ai/client, pinned in
// package.json) against the fal simulator at FALSIM_URL with the key
// FALSIM_KEY, and fails (exit code 1) when the client cannot use it the way
// it uses fal. falsim's TestOfficialJSClient starts the simulator with
// Concurrency 1, short latencies and a model error on "fal-ai/broken/model",
// then runs this script; the last line of stdout is a JSON summary the Go
// test checks against the simulator's own record.
import assert from "node:assert/strict";
import { createFalClient } from "@fal-ai/client";

const base = process.env.FALSIM_URL;
const key = process.env.FALSIM_KEY;
assert.ok(base && key, "FALSIM_URL and FALSIM_KEY must be set");

const fal = createFalClient({
  credentials: key,
  // The client builds https://queue.fal.run/... URLs itself: send them to
  // the simulator instead.
  requestMiddleware: async (request) => ({
    ...request,
    url: request.url.replace(/^https:\/\/(queue\.)?fal\.run/, base),
  }),
});

const image = "fal-ai/flux/dev";
const video = "fal-ai/kling-video/v2.1/standard/image-to-video";
const workflow = "workflows/acme/ring-shots";
const summary = {};

// Submit with the queue options, read the status with logs, fetch the
// result.
const submitted = await fal.queue.submit(image, {
  input: { prompt: "a gold ring", num_images: 2 },
  priority: "low",
  startTimeout: 30,
});
assert.match(submitted.request_id, /^[0-9a-f-]{36}$/);
assert.equal(submitted.status_url, `${base}/fal-ai/flux/requests/${submitted.request_id}/status`);
assert.equal(submitted.response_url, `${base}/fal-ai/flux/requests/${submitted.request_id}`);
assert.equal(submitted.cancel_url, `${base}/fal-ai/flux/requests/${submitted.request_id}/cancel`);
summary.submitted = submitted.request_id;

// A second request waits behind the first (the account's concurrency is
// 1) and is cancelled while queued.
const queued = await fal.queue.submit(image, { input: { prompt: "cancel me" } });
assert.equal(queued.queue_position, 0);
const queuedStatus = await fal.queue.status(image, { requestId: queued.request_id, logs: true });
assert.equal(queuedStatus.status, "IN_QUEUE");
assert.equal(queuedStatus.queue_position, 0);
await fal.queue.cancel(image, { requestId: queued.request_id });
const cancelled = await fal.queue.status(image, { requestId: queued.request_id });
assert.equal(cancelled.status, "COMPLETED");
assert.equal(cancelled.error_type, "client_cancelled");
summary.cancelled = queued.request_id;

let status;
for (;;) {
  status = await fal.queue.status(image, { requestId: submitted.request_id, logs: true });
  if (status.status === "COMPLETED") break;
  await new Promise((resolve) => setTimeout(resolve, 25));
}
assert.ok(Array.isArray(status.logs) && status.logs.length === 3, "three log lines");
assert.equal(status.logs[2].message, "falsim: done");
const result = await fal.queue.result(image, { requestId: submitted.request_id });
assert.equal(result.requestId, submitted.request_id);
assert.equal(result.data.images.length, 2);
assert.match(result.data.images[0].url, /^https:\/\/fal\.media\/files\/sim\//);

// subscribe in polling mode, with queue updates.
const pollingUpdates = [];
const polled = await fal.subscribe(image, {
  input: { prompt: "polled" },
  logs: true,
  pollInterval: 25,
  onQueueUpdate: (update) => pollingUpdates.push(update),
});
assert.equal(polled.data.images.length, 1);
assert.deepEqual(
  [...new Set(pollingUpdates.map((u) => u.status))].filter((s) => s !== "IN_QUEUE"),
  ["IN_PROGRESS", "COMPLETED"],
);
summary.polled = polled.requestId;

// subscribe in streaming mode: the status stream, with logs.
const streamingUpdates = [];
const streamed = await fal.subscribe(video, {
  input: { prompt: "turntable", image_url: "https://example.com/ring.png" },
  mode: "streaming",
  logs: true,
  onQueueUpdate: (update) => streamingUpdates.push(update),
});
assert.match(streamed.data.video.url, /\.mp4$/);
const states = streamingUpdates.map((u) => u.status);
assert.equal(states.at(-1), "COMPLETED");
assert.ok(states.includes("IN_PROGRESS"), `streamed states ${states}`);
assert.equal(streamingUpdates.at(-1).logs.length, 3, "the client accumulates streamed logs");
summary.streamed = streamed.requestId;
summary.streamedStates = states;

// A workflows/ id keeps three segments in the status, result and cancel
// URLs.
const workflowResult = await fal.subscribe(workflow, { input: { prompt: "workflow" }, pollInterval: 25 });
assert.equal(workflowResult.data.images.length, 1);
summary.workflow = workflowResult.requestId;

// A model error: COMPLETED with error_type, then the result fails.
await assert.rejects(
  fal.subscribe("fal-ai/broken/model", { input: { prompt: "boom" }, pollInterval: 25 }),
  (err) => err.status === 500 && err.body?.error_type === "runner_server_error",
);

console.log(JSON.stringify(summary));
