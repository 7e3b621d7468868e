import type { ApiPaths, PendingProblemFields } from "./pending.js";
import type { components } from "./schema.js";

type Schemas = components["schemas"];

type JSONContent<R> = R extends { content: { "application/json": infer B } } ? B : never;

/** The JSON body of an operation's 2xx responses. */
type SuccessBody<Op> = Op extends { responses: infer R }
  ? { [S in keyof R]: S extends 200 | 201 | 202 ? JSONContent<R[S]> : never }[keyof R]
  : never;

/** The JSON request body of an operation. */
type RequestBody<Op> = Op extends { requestBody?: infer B } ? JSONContent<NonNullable<B>> : never;

/** A job, as GET /v1/jobs/{id} returns it. */
export type Job = Schemas["Job"];

/** The API states of a job. */
export type JobState = "queued" | "running" | "succeeded" | "failed" | "cancelled";

/** The states a job never leaves. */
export const FINAL_STATES: readonly JobState[] = ["succeeded", "failed", "cancelled"];

/** Reports whether the job has reached a final state. */
export function isFinal(job: Pick<Job, "state">): boolean {
  return (FINAL_STATES as readonly string[]).includes(job.state);
}

/** The body of POST /v1/jobs: `{operation, params, priority?}`. */
export type SubmitJobBody = Omit<RequestBody<ApiPaths["/v1/jobs"]["post"]>, "$schema">;

/** The body of POST /v1/batches: `{items: [{operation, params}], priority?}`. */
export type SubmitBatchBody = Omit<RequestBody<ApiPaths["/v1/batches"]["post"]>, "$schema">;

/** A batch: counts per state and the job ids. */
export type Batch = SuccessBody<ApiPaths["/v1/batches/{id}"]["get"]>;

/** A page of the caller's jobs. */
export type JobList = Schemas["JobList"];

/** The query of GET /v1/jobs. */
export type ListJobsQuery = NonNullable<ApiPaths["/v1/jobs"]["get"]["parameters"]["query"]>;

/** The caller's credits: `{balance, reserved, available, entries}`. */
export type Credits = Schemas["CreditsBody"];

/** One entry of the operations catalog. */
export type OperationInfo = Schemas["OperationInfo"];

/** One validation error of a problem. */
export type ErrorDetail = Schemas["ErrorDetail"];

/** An RFC 9457 problem detail as the API sends it. */
export type Problem = Schemas["ErrorModel"] & PendingProblemFields;
