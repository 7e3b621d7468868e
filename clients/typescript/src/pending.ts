/**
 * HAND-WRITTEN TYPES, PENDING THE OPENAPI DOCUMENT.
 *
 * This is the one place where the client types API surface by hand: the
 * endpoints and fields that SPEC section 6 defines but that the committed
 * openapi.yaml does not describe yet (batches, the `?wait=` long poll, the
 * SSE event stream, the 402 fields of a problem).
 *
 * `ApiPaths` below prefers the generated types: as soon as `make gen` brings
 * a path (or the `wait` query parameter) into schema.ts, the generated
 * definition replaces the one written here, with no other change. Delete an
 * entry here once schema.ts has it.
 */
import type { components, paths } from "./schema.js";

type Schemas = components["schemas"];

/** A problem response, as every error of the API is. */
type ProblemResponse = {
  headers: { [name: string]: unknown };
  content: { "application/problem+json": Schemas["ErrorModel"] };
};
type ProblemResponses<S extends number> = { [K in S]: ProblemResponse };

type NoParameters = { query?: never; header?: never; path?: never; cookie?: never };
type NoOtherMethods = {
  put?: never;
  delete?: never;
  options?: never;
  head?: never;
  patch?: never;
  trace?: never;
};

/** The body of POST /v1/batches (SPEC section 6). */
export interface PendingBatchBody {
  /** 1 to 100 items, reserved and inserted all together or not at all. */
  items: { operation: string; params: unknown }[];
  /** Queue override for every item. */
  priority?: "urgent" | "normal" | "background";
}

/** A batch: counts per state and the job ids (SPEC section 6). */
export interface PendingBatch {
  id: string;
  priority?: string;
  created_at: string;
  /** Number of jobs. */
  total: number;
  /** Jobs per state. */
  counts: { queued: number; running: number; succeeded: number; failed: number; cancelled: number };
  /** Every job reached a final state. */
  done: boolean;
  /** Job ids in item order. */
  job_ids: string[];
}

/** Fields some problems carry beyond RFC 9457 (api.Problem in Go). */
export interface PendingProblemFields {
  /** Credits the request needs (402). */
  needed?: number;
  /** Credits available to the user (402). */
  available?: number;
  /** needed - available (402). */
  shortfall?: number;
  /** The unchanged job of a refused cancel (409). */
  job?: Schemas["Job"];
}

/** Endpoints of SPEC section 6 missing from schema.ts, typed by hand. */
export interface PendingPaths {
  "/v1/batches": {
    parameters: NoParameters;
    get?: never;
    post: {
      parameters: {
        query?: never;
        header?: { "Idempotency-Key"?: string };
        path?: never;
        cookie?: never;
      };
      requestBody: { content: { "application/json": PendingBatchBody } };
      responses: {
        202: {
          headers: { Location?: string; [name: string]: unknown };
          content: { "application/json": PendingBatch };
        };
      } & ProblemResponses<400 | 401 | 402 | 409 | 413 | 422 | 429 | 500 | 503>;
    };
  } & NoOtherMethods;
  "/v1/batches/{id}": {
    parameters: NoParameters;
    get: {
      parameters: { query?: never; header?: never; path: { id: string }; cookie?: never };
      requestBody?: never;
      responses: {
        200: { headers: { [name: string]: unknown }; content: { "application/json": PendingBatch } };
      } & ProblemResponses<401 | 404 | 500 | 503>;
    };
    post?: never;
  } & NoOtherMethods;
  "/v1/jobs/{id}/events": {
    parameters: NoParameters;
    get: {
      parameters: { query?: never; header?: never; path: { id: string }; cookie?: never };
      requestBody?: never;
      responses: {
        /** One event per state change, each carrying the job as JSON; closes after the final state. */
        200: { headers: { [name: string]: unknown }; content: { "text/event-stream": string } };
      } & ProblemResponses<401 | 404 | 500 | 503>;
    };
    post?: never;
  } & NoOtherMethods;
}

// GET /v1/jobs/{id}?wait=N: the generated operation, plus the `wait` query
// parameter until the document declares it.
type GetJob = paths["/v1/jobs/{id}"]["get"];
type HasWait<Op> = Op extends { parameters: { query?: infer Q } }
  ? [NonNullable<Q>] extends [never]
    ? false
    : "wait" extends keyof NonNullable<Q>
      ? true
      : false
  : false;
type GetJobWithWait =
  HasWait<GetJob> extends true
    ? GetJob
    : Omit<GetJob, "parameters"> & {
        parameters: Omit<GetJob["parameters"], "query"> & {
          query?: {
            /** Seconds (at most 30) to hold the request until the job's state changes. */
            wait?: number;
          };
        };
      };

/**
 * The paths the client calls: the generated ones, with the pending entries
 * above filling in only what schema.ts lacks.
 */
export type ApiPaths = Omit<paths, "/v1/jobs/{id}"> & {
  "/v1/jobs/{id}": Omit<paths["/v1/jobs/{id}"], "get"> & { get: GetJobWithWait };
} & Pick<PendingPaths, Exclude<keyof PendingPaths, keyof paths>>;
