import createFetchClient, { type Client, type Middleware } from "openapi-fetch";

import { problemFromResponse } from "./problem.js";
import type { paths } from "./schema.js";
import type {
  Batch,
  Credits,
  Job,
  JobList,
  ListJobsQuery,
  OperationInfo,
  SubmitBatchBody,
  SubmitJobBody,
} from "./types.js";
import { waitForJob, type WaitOptions, type WaitTransport } from "./wait.js";

/** Supplies the bearer token; called before every request, so it may refresh it. */
export type TokenSource = () => string | null | undefined | Promise<string | null | undefined>;

/** Options of createClient. */
export type ClientOptions = {
  /** Where the API is: "https://queue.example.com", or "" for the page's own origin. */
  baseUrl: string;
  /** Extra headers sent with every request. */
  headers?: Record<string, string> | undefined;
  /** The fetch to use (default globalThis.fetch). */
  fetch?: ((request: Request) => Promise<Response>) | undefined;
} & (
  | { /** A fixed bearer token (a Supabase access token). */ token: string; getToken?: undefined }
  | { token?: undefined; /** Returns the current bearer token, e.g. from supabase.auth.getSession(). */ getToken: TokenSource }
);

/** Per-request options. */
export interface RequestOptions {
  /** Aborts the request. */
  signal?: AbortSignal | undefined;
}

/** Options of submitJob and submitBatch. */
export interface SubmitOptions extends RequestOptions {
  /** Idempotency-Key: a retry with the same key and body returns the first answer and reserves nothing more. */
  idempotencyKey?: string | undefined;
}

/** Options of getJob. */
export interface GetJobOptions extends RequestOptions {
  /** Seconds (at most 30) the server may hold the request until the job's state changes (long poll). */
  wait?: number | undefined;
}

/** The aiqueue API, as a frontend uses it. Every method rejects with a ProblemError on an error response. */
export interface AIQueueClient {
  /** POST /v1/jobs: reserves the operation's cost and queues the job; resolves with the queued job. */
  submitJob(body: SubmitJobBody, opts?: SubmitOptions): Promise<Job>;
  /** GET /v1/jobs/{id}. */
  getJob(id: string, opts?: GetJobOptions): Promise<Job>;
  /** POST /v1/jobs/{id}/cancel: cancels a queued or running job (credits refunded); 409 for a finished one. */
  cancelJob(id: string, opts?: RequestOptions): Promise<Job>;
  /** GET /v1/jobs: the caller's jobs, newest first. */
  listJobs(query?: ListJobsQuery, opts?: RequestOptions): Promise<JobList>;
  /** POST /v1/batches: 1-100 jobs, all reserved and queued together or none (402 names the shortfall). */
  submitBatch(body: SubmitBatchBody, opts?: SubmitOptions): Promise<Batch>;
  /** GET /v1/batches/{id}: counts per state and the job ids. */
  getBatch(id: string, opts?: RequestOptions): Promise<Batch>;
  /** GET /v1/credits: balance, reserved, available and the latest journal entries. */
  getCredits(opts?: RequestOptions): Promise<Credits>;
  /** GET /v1/operations: the catalog (operation, cost, priority, kind, required params). */
  listOperations(opts?: RequestOptions): Promise<OperationInfo[]>;
  /**
   * Waits until the job is succeeded, failed or cancelled and resolves with
   * it, following the SSE stream and falling back to ?wait= long polls.
   */
  waitForJob(id: string, opts?: WaitOptions): Promise<Job>;
  /** The typed openapi-fetch client underneath, for anything else (e.g. admin grants). */
  readonly raw: Client<paths>;
}

type Result<T> = { data?: T; error?: unknown; response: Response };

/** Turns an openapi-fetch result into its data, or throws the ProblemError. */
async function unwrap<T>(call: Promise<Result<T>>): Promise<T> {
  const { data, error, response } = await call;
  if (!response.ok) throw problemFromResponse(response, error);
  return data as T;
}

/** Creates a client of the aiqueue API. */
export function createClient(options: ClientOptions): AIQueueClient {
  const raw = createFetchClient<paths>({
    baseUrl: options.baseUrl,
    headers: options.headers,
    fetch: options.fetch,
  });
  const tokenSource: TokenSource = options.getToken ?? (() => options.token);
  const auth: Middleware = {
    async onRequest({ request }) {
      const token = await tokenSource();
      if (token) request.headers.set("Authorization", `Bearer ${token}`);
      return request;
    },
  };
  raw.use(auth);

  const getJob = (id: string, opts: GetJobOptions = {}) =>
    unwrap(
      raw.GET("/v1/jobs/{id}", {
        params: { path: { id }, query: opts.wait !== undefined ? { wait: opts.wait } : undefined },
        signal: opts.signal,
      }),
    );

  const transport: WaitTransport = {
    getJob: (id, wait, signal) => getJob(id, { wait, signal }),
    async openEvents(id, signal) {
      const { data, error, response } = await raw.GET("/v1/jobs/{id}/events", {
        params: { path: { id } },
        headers: { Accept: "text/event-stream" },
        parseAs: "stream",
        signal,
      });
      if (!response.ok) throw problemFromResponse(response, error);
      const type = response.headers.get("Content-Type") ?? "";
      if (!data || !type.includes("text/event-stream")) {
        await response.body?.cancel().catch(() => {});
        throw new Error(`aiqueue: GET /v1/jobs/${id}/events answered ${type || "no content type"}, not an event stream`);
      }
      return data;
    },
  };

  return {
    raw,
    submitJob: (body, opts = {}) =>
      unwrap(
        raw.POST("/v1/jobs", {
          body,
          params: { header: idempotency(opts.idempotencyKey) },
          signal: opts.signal,
        }),
      ),
    getJob,
    cancelJob: (id, opts = {}) =>
      unwrap(raw.POST("/v1/jobs/{id}/cancel", { params: { path: { id } }, signal: opts.signal })),
    listJobs: (query, opts = {}) => unwrap(raw.GET("/v1/jobs", { params: { query }, signal: opts.signal })),
    submitBatch: (body, opts = {}) =>
      unwrap(
        raw.POST("/v1/batches", {
          body,
          params: { header: idempotency(opts.idempotencyKey) },
          signal: opts.signal,
        }),
      ),
    getBatch: (id, opts = {}) =>
      unwrap(raw.GET("/v1/batches/{id}", { params: { path: { id } }, signal: opts.signal })),
    getCredits: (opts = {}) => unwrap(raw.GET("/v1/credits", { signal: opts.signal })),
    listOperations: async (opts = {}) =>
      (await unwrap(raw.GET("/v1/operations", { signal: opts.signal }))).operations ?? [],
    waitForJob: (id, opts) => waitForJob(transport, id, opts),
  };
}

function idempotency(key: string | undefined): { "Idempotency-Key": string } | undefined {
  return key ? { "Idempotency-Key": key } : undefined;
}
