import type { AIQueueClient } from "./client.js";
import { problemFromResponse } from "./problem.js";
import type { paths } from "./schema.js";
import type { Batch } from "./types.js";
import { follow, type WaitOptions } from "./wait.js";

/** One event of GET /v1/batches/{id}/events, as the document describes it. */
type BatchEvent = paths["/v1/batches/{id}/events"]["get"]["responses"][200]["content"]["text/event-stream"][number];

/** The event name of a batch's counts (EventBatch in the server); its data is the batch. */
const batchEvent: BatchEvent["event"] = "batch";

/**
 * Waits until every job of the batch has ended (`done`) and resolves with
 * the batch: its counts per state and job ids. Like waitForJob it follows
 * the event stream `GET /v1/batches/{id}/events` (a `batch` event with the
 * batch at once and after each change of its counts), and long-polls
 * `GET /v1/batches/{id}?wait=N` when the stream cannot be opened (a proxy
 * that refuses streams, an older server) or keeps dropping, pausing between
 * polls the server answered at once without a change. onUpdate sees the
 * batch each time its counts change.
 */
export function waitForBatch(client: AIQueueClient, id: string, opts: WaitOptions<Batch> = {}): Promise<Batch> {
  const raw = client.raw;
  return follow<Batch>(
    {
      what: `batch ${id}`,
      async read(wait, signal) {
        const { data, error, response } = await raw.GET("/v1/batches/{id}", {
          params: { path: { id }, query: wait !== undefined ? { wait } : undefined },
          signal,
        });
        if (data === undefined) throw problemFromResponse(response, error);
        return data;
      },
      async openEvents(signal) {
        const { data, error, response } = await raw.GET("/v1/batches/{id}/events", {
          params: { path: { id } },
          headers: { Accept: "text/event-stream" },
          parseAs: "stream",
          signal,
        });
        if (!response.ok) throw problemFromResponse(response, error);
        const type = response.headers.get("Content-Type") ?? "";
        if (!data || !type.includes("text/event-stream")) {
          await response.body?.cancel().catch(() => {});
          throw new Error(`aiqueue: GET /v1/batches/${id}/events answered ${type || "no content type"}, not an event stream`);
        }
        return data;
      },
      fromEvent(ev) {
        if (ev.event !== batchEvent) return undefined;
        let v: unknown;
        try {
          v = JSON.parse(ev.data);
        } catch {
          return undefined;
        }
        return isBatch(v) && v.id === id ? v : undefined;
      },
      isFinal: (b) => b.done,
      hasChanged: (a, b) => a.done !== b.done || JSON.stringify(a.counts) !== JSON.stringify(b.counts),
    },
    opts,
  );
}

function isBatch(v: unknown): v is Batch {
  return (
    v !== null &&
    typeof v === "object" &&
    typeof (v as Batch).id === "string" &&
    typeof (v as Batch).done === "boolean" &&
    typeof (v as Batch).counts === "object"
  );
}
