/**
 * The aiqueue API client: types generated from openapi.yaml (schema.ts),
 * calls through openapi-fetch, a submit-and-wait helper, and typed problem
 * details, and verifyWebhook for the studio's backend. The React hook is in
 * "@aiqueue/client/react".
 */
export {
  createClient,
  type AIQueueClient,
  type ClientOptions,
  type GetJobOptions,
  type RequestOptions,
  type SubmitOptions,
  type TokenSource,
} from "./client.js";
export { isProblem, parseRetryAfter, problemFromResponse, ProblemError } from "./problem.js";
export {
  FINAL_STATES,
  isFinal,
  type Batch,
  type BatchItem,
  type Credits,
  type ErrorDetail,
  type Job,
  type JobList,
  type JobState,
  type ListJobsQuery,
  type OperationInfo,
  type OperationName,
  type ParamsOf,
  type ImageResult,
  type ImagesResult,
  type JobResult,
  type Problem,
  type ResultImage,
  type ResultVideo,
  type SubmitBatchBody,
  type VideoResult,
  type SubmitJobBody,
} from "./types.js";
export type { WaitOptions } from "./wait.js";
export { waitForBatch } from "./batch.js";
export { resultUrls } from "./results.js";
export {
  verifyWebhook,
  WebhookVerificationError,
  WEBHOOK_TOLERANCE_SECONDS,
  type BatchEvent,
  type DeletedJob,
  type JobEvent,
  type JobEventType,
  type VerifyWebhookOptions,
  type WebhookBody,
  type WebhookEvent,
  type WebhookEventType,
  type WebhookHeaders,
} from "./webhook.js";
export type { components, operations, paths } from "./schema.js";
