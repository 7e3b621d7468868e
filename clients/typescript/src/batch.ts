import type { AIQueueClient } from "./client.js";
import { problemFromResponse } from "./problem.js";
import type { Batch } from "./types.js";
import { follow, type WaitOptions } from "./wait.js";

/**
 * Waits until every job of the batch has ended (`done`) and resolves with
 * the batch: its counts per state and job ids. Like waitForJob it follows
 * the event stream `GET /v1/batches/{id}/events` when the server answers it
 * with 200 text/event-stream (any event whose data is this batch counts),
 * and otherwise long-polls `GET /v1/batches/{id}?wait=N`, pausing between
 * polls the server answered at once without a change. onUpdate sees the
 * batch each time its counts change.
 */
export function waitForBatch(client: AIQueueClient, id: string, opts: WaitOptions<Batch> = {}): Promise<Batch> {
  const raw = client.raw;
  return follow<Batch>(
    {
      what: `batch ${id}`,
      async read(wait, signal) {
        // ?wait= is sent whether or not this server's document declares it
        // (a server without batch long polls answers at once).
        const query = wait !== undefined ? { wait } : undefined;
        const { data, error, response } = await raw.GET("/v1/batches/{id}", {
          params: { path: { id }, query } as { path: { id: string } },
          signal,
        });
        if (!response.ok) throw problemFromResponse(response, error);
        return data as Batch;
      },
      async openEvents(signal) {
        // Not every server has batch events: the path is built by hand.
        const { data, error, response } = await (raw.GET as untypedGet)("/v1/batches/{id}/events", {
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
        return data as ReadableStream<Uint8Array>;
      },
      fromEvent(ev) {
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

type untypedGet = (
  path: string,
  init: {
    params: { path: Record<string, string> };
    headers: Record<string, string>;
    parseAs: "stream";
    signal: AbortSignal;
  },
) => Promise<{ data?: unknown; error?: unknown; response: Response }>;

function isBatch(v: unknown): v is Batch {
  return (
    v !== null &&
    typeof v === "object" &&
    typeof (v as Batch).id === "string" &&
    typeof (v as Batch).done === "boolean" &&
    typeof (v as Batch).counts === "object"
  );
}
