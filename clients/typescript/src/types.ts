import type { components, paths } from "./schema.js";

type Schemas = components["schemas"];

/** A job, as GET /v1/jobs/{id} returns it. */
export type Job = Schemas["Job"];

/** What a succeeded job made: ImagesResult, ImageResult or VideoResult (resultUrls lists their URLs). */
export type JobResult = NonNullable<Job["result"]>;

/** `{images: [...]}`: the output of most image operations. */
export type ImagesResult = Schemas["ImagesResult"];

/** `{image: {...}}`: the output of upscale and remove-bg. */
export type ImageResult = Schemas["ImageResult"];

/** `{video: {...}}`: the output of video and turntable. */
export type VideoResult = Schemas["VideoResult"];

/** An image of a result: `url`, `width`, `height`, `content_type` ... */
export type ResultImage = Schemas["ResultImage"];

/** The video of a result: `url`, `content_type`, `file_name`, `file_size` ... */
export type ResultVideo = Schemas["ResultVideo"];

/** The API states of a job. */
export type JobState = Job["state"];

/** The states a job never leaves. */
export const FINAL_STATES: readonly JobState[] = ["succeeded", "failed", "cancelled"];

/** Reports whether the job has reached a final state. */
export function isFinal(job: Pick<Job, "state">): boolean {
  return (FINAL_STATES as readonly string[]).includes(job.state);
}

/**
 * The body of POST /v1/jobs, as generated from the document: a union
 * discriminated by `operation`, each member with that operation's params
 * (`{operation: "generate", params: {prompt}}`, `{operation: "edit", params:
 * {prompt, image_urls}}` ...) and an optional `priority`. Params may carry
 * any other field fal accepts.
 */
export type SubmitJobBody = Schemas["JobRequest"];

/** The operations of the catalog the document was generated from. */
export type OperationName = SubmitJobBody["operation"];

/** The params of one operation, e.g. `ParamsOf<"edit">`. */
export type ParamsOf<Op extends OperationName> = Extract<SubmitJobBody, { operation: Op }>["params"];

/** The body of POST /v1/batches: `{items: [{operation, params}], priority?}`, each item checked like SubmitJobBody. */
export type SubmitBatchBody = Schemas["BatchRequest"];

/** One item of a batch. */
export type BatchItem = Schemas["BatchItem"];

/** A batch: counts per state and the job ids. */
export type Batch = Schemas["Batch"];

/** A page of the caller's jobs. */
export type JobList = Schemas["JobList"];

/** The query of GET /v1/jobs. */
export type ListJobsQuery = NonNullable<paths["/v1/jobs"]["get"]["parameters"]["query"]>;

/** The caller's credits: `{balance, reserved, available, entries}`. */
export type Credits = Schemas["CreditsBody"];

/** One entry of the operations catalog. */
export type OperationInfo = Schemas["OperationInfo"];

/** One validation error of a problem. */
export type ErrorDetail = Schemas["ErrorDetail"];

/** An RFC 9457 problem detail as the API sends it, with `needed`, `available`, `shortfall` (402) and `job` (409 of cancel). */
export type Problem = Schemas["Problem"];
