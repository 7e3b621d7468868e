import { createParser, type EventSourceMessage } from "eventsource-parser";

import { ProblemError } from "./problem.js";
import type { paths } from "./schema.js";
import { isFinal, type Job } from "./types.js";

/** Options of waitForJob (and, with T = Batch, of waitForBatch). */
export interface WaitOptions<T = Job> {
  /** Stops waiting: the promise rejects with the signal's reason. */
  signal?: AbortSignal | undefined;
  /**
   * Called each time what is followed changes, the final state included: a
   * job's state, queue position, attempt or progress; a batch's counts.
   */
  onUpdate?: ((value: T) => void) | undefined;
  /**
   * How to follow it: "auto" (default) follows the SSE stream
   * (`GET /v1/jobs/{id}/events`, `GET /v1/batches/{id}/events`) and falls
   * back to `?wait=` long polls when the stream cannot be opened or keeps
   * dropping; "sse" and "poll" use only the one.
   */
  transport?: "auto" | "sse" | "poll" | undefined;
  /** Seconds each long poll asks the server to hold the request (1-30, default 25). */
  pollWait?: number | undefined;
  /** Consecutive transient failures (network, 429, 502-504) retried before giving up (default 5). */
  maxRetries?: number | undefined;
  /** Milliseconds without a byte on the event stream after which it is reopened (default 60000). */
  idleTimeout?: number | undefined;
}

/** What waitForJob needs from the client. */
export interface WaitTransport {
  /** GET /v1/jobs/{id}, with ?wait= when wait is set; throws ProblemError. */
  getJob(id: string, wait: number | undefined, signal: AbortSignal | undefined): Promise<Job>;
  /** Opens GET /v1/jobs/{id}/events; throws ProblemError (or Error) when the stream is not available. */
  openEvents(id: string, signal: AbortSignal): Promise<ReadableStream<Uint8Array>>;
}

type StreamOutcome = "final" | "ended" | "idle";

/** One event of GET /v1/jobs/{id}/events, as the document describes it. */
type JobEvent = paths["/v1/jobs/{id}/events"]["get"]["responses"][200]["content"]["text/event-stream"][number];

/**
 * The events of a job's stream, each carrying the whole job: `state` (the
 * first event, and each state change) and `progress` (any other change the
 * studio sees). Every name the document lists must be here: the compiler
 * says so when the server gains one.
 */
const jobEvents: Record<JobEvent["event"], true> = { state: true, progress: true };

/** Event-stream drops in a row (with no event between them) before "auto" switches to long polls. */
const maxDrops = 3;

/**
 * What follow needs to follow one resource (a job, a batch): reading it
 * (with ?wait= when wait is set), opening its event stream, recognizing it
 * in an event, and telling when it is final or changed.
 */
export interface Follower<T> {
  /** Names it in error messages: "job 12". */
  what: string;
  read(wait: number | undefined, signal: AbortSignal | undefined): Promise<T>;
  openEvents(signal: AbortSignal): Promise<ReadableStream<Uint8Array>>;
  /** The value an event carries, or undefined for events to ignore. */
  fromEvent(ev: EventSourceMessage): T | undefined;
  isFinal(v: T): boolean;
  hasChanged(a: T, b: T): boolean;
}

/**
 * Waits until the job reaches a final state and returns it: succeeded,
 * failed or cancelled (a failed job resolves; only errors of the API or the
 * network reject). It reads the job once, then follows its event stream,
 * reading the job again whenever the stream ends early; when the stream is
 * not available it long-polls `GET /v1/jobs/{id}?wait=N`, pausing between
 * polls that the server answered at once without a change.
 */
export function waitForJob(t: WaitTransport, id: string, opts: WaitOptions = {}): Promise<Job> {
  return follow(
    {
      what: `job ${id}`,
      read: (wait, signal) => t.getJob(id, wait, signal),
      openEvents: (signal) => t.openEvents(id, signal),
      fromEvent: (ev) => (ev.event !== undefined && Object.hasOwn(jobEvents, ev.event) ? jobFromEvent(id, ev.data) : undefined),
      isFinal,
      hasChanged,
    },
    opts,
  );
}

/** Follows f until it is final: see waitForJob. */
export async function follow<T>(f: Follower<T>, opts: WaitOptions<T> = {}): Promise<T> {
  const { signal, onUpdate, transport = "auto" } = opts;
  const pollWait = Math.min(30, Math.max(1, Math.round(opts.pollWait ?? 25)));
  const maxRetries = Math.max(0, opts.maxRetries ?? 5);
  const idleTimeout = Math.max(1000, opts.idleTimeout ?? 60_000);

  let last: T | undefined;
  let callbackError: { error: unknown } | undefined;
  // see records v and reports whether waiting is over.
  const see = (v: T): boolean => {
    const changed = last === undefined || f.hasChanged(last, v);
    last = v;
    if (changed && onUpdate && !callbackError) {
      try {
        onUpdate(v);
      } catch (error) {
        callbackError = { error };
      }
    }
    return f.isFinal(v) || callbackError !== undefined;
  };
  const done = (): T => {
    if (callbackError) throw callbackError.error;
    return last as T;
  };
  const read = (wait?: number) => withRetries(() => f.read(wait, signal), maxRetries, signal);

  if (see(await read())) return done();

  let sse = transport !== "poll";
  let drops = 0;
  let quiet = 0; // long polls in a row that returned at once with no change
  for (;;) {
    signal?.throwIfAborted();
    if (sse) {
      let outcome: StreamOutcome | "unavailable";
      let events = 0;
      try {
        const r = await followEvents(f, (v) => (events++, see(v)), idleTimeout, signal);
        outcome = r;
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (transport === "sse" && !(events > 0 && isNetworkError(err))) throw err;
        // Opening failed (no such endpoint, an error status, not an event
        // stream) or the connection broke.
        outcome = events > 0 ? "ended" : "unavailable";
      }
      if (outcome === "final") return done();
      if (outcome === "unavailable") {
        sse = false;
      } else if (outcome === "ended") {
        drops = events > 0 ? 1 : drops + 1;
        if (drops >= maxDrops) {
          if (transport === "sse") throw new Error(`aiqueue: the event stream of ${f.what} closed ${drops} times before it ended`);
          sse = false;
        }
      }
      // The stream is gone: read again, in case the final state was missed.
      if (see(await read())) return done();
      if (sse && outcome === "ended") await sleep(backoff(drops - 1), signal);
      continue;
    }

    const before = last as T;
    const started = Date.now();
    if (see(await read(pollWait))) return done();
    if (!f.hasChanged(before, last as T) && Date.now() - started < 1000) {
      // The server did not hold the request (no long-poll support, or a
      // proxy in between): poll gently instead of in a tight loop.
      await sleep(Math.min(5000, 500 * 2 ** quiet), signal);
      quiet = Math.min(quiet + 1, 4);
    } else {
      quiet = 0;
    }
  }
}

/**
 * Follows the event stream until a final value ("final"), the server
 * closes it ("ended"), or nothing arrives for idleTimeout ms ("idle").
 * The server sends `id: <n>`, `event: <name>` and `data: <the job or batch
 * as JSON>` at once and then for each change, and `: keep-alive` comments
 * (which only re-arm the idle timer); each event f.fromEvent recognizes is
 * passed to onValue, which returns true to stop. Other events are ignored.
 */
async function followEvents<T>(
  f: Follower<T>,
  onValue: (v: T) => boolean,
  idleTimeout: number,
  signal: AbortSignal | undefined,
): Promise<StreamOutcome> {
  const conn = new AbortController();
  const abortConn = () => conn.abort(signal?.reason);
  signal?.addEventListener("abort", abortConn, { once: true });
  let idle = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      idle = true;
      conn.abort();
    }, idleTimeout);
  };
  let final = false;
  try {
    arm();
    const stream = await f.openEvents(conn.signal);
    const reader = stream.getReader();
    // Aborting conn cancels the body here, not only through fetch: Node's
    // fetch can lose a signal's abort once the Request object it came with
    // is garbage collected, and the stream would then run on until the
    // server closes it.
    const cancel = () => void reader.cancel(conn.signal.reason).catch(() => {});
    conn.signal.addEventListener("abort", cancel, { once: true });
    if (conn.signal.aborted) cancel();
    const decoder = new TextDecoder();
    const parser = createParser({
      onEvent(ev) {
        if (final) return;
        const v = f.fromEvent(ev);
        if (v !== undefined && onValue(v)) final = true;
      },
    });
    try {
      while (!final) {
        const { done, value } = await reader.read();
        if (done) break;
        arm();
        parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch (err) {
      if (!idle || signal?.aborted) throw err;
    } finally {
      conn.signal.removeEventListener("abort", cancel);
      // Closes the connection when we stop reading before the server closes it.
      void reader.cancel().catch(() => {});
    }
    if (final) return "final";
    signal?.throwIfAborted();
    return idle ? "idle" : "ended";
  } catch (err) {
    if (idle && !signal?.aborted) return "idle";
    throw err;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", abortConn);
    conn.abort(); // and the request, if the stream never opened
  }
}

function jobFromEvent(id: string, data: string): Job | undefined {
  let v: unknown;
  try {
    v = JSON.parse(data);
  } catch {
    return undefined;
  }
  return isJob(v) && v.id === id ? v : undefined;
}

function isJob(v: unknown): v is Job {
  return (
    v !== null &&
    typeof v === "object" &&
    typeof (v as Job).id === "string" &&
    typeof (v as Job).state === "string"
  );
}

function hasChanged(a: Job, b: Job): boolean {
  return (
    a.state !== b.state ||
    a.queue_position !== b.queue_position ||
    a.attempt !== b.attempt ||
    // progress (stage, fal queue position, ETA ...) when the server sends it.
    JSON.stringify((a as { progress?: unknown }).progress) !== JSON.stringify((b as { progress?: unknown }).progress)
  );
}

/**
 * Runs fn, retrying transient failures (network errors, 408, 429, 502, 503,
 * 504) up to maxRetries times in a row, waiting Retry-After when the server
 * gives it and a jittered exponential back-off otherwise.
 */
export async function withRetries<T>(fn: () => Promise<T>, maxRetries: number, signal?: AbortSignal): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (attempt >= maxRetries || !isTransient(err)) throw err;
      const delay =
        err instanceof ProblemError && err.retryAfter !== undefined ? err.retryAfter * 1000 : backoff(attempt);
      await sleep(delay, signal);
    }
  }
}

function isTransient(err: unknown): boolean {
  if (err instanceof ProblemError) return [408, 429, 502, 503, 504].includes(err.status);
  return isNetworkError(err);
}

/** fetch's network failures: Node ("fetch failed", "terminated"), Chrome, Firefox, Safari. */
function isNetworkError(err: unknown): boolean {
  return err instanceof TypeError && /fetch|network|terminated|load failed/i.test(err.message);
}

function backoff(attempt: number): number {
  const base = Math.min(10_000, 500 * 2 ** Math.max(0, attempt));
  return base * (0.8 + Math.random() * 0.4);
}

/** Resolves after ms, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
