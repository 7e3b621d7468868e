import type { ErrorDetail, Job, Problem } from "./types.js";

/**
 * ProblemError is every error response of the API: an RFC 9457 problem
 * detail (`type`, `title`, `status`, `detail`, `instance`, `errors`), plus
 * what some statuses carry: `needed`, `available` and `shortfall` credits on
 * a 402, `retryAfter` seconds on a 429 or 503, and the unchanged `job` on a
 * 409 from cancel.
 *
 * Errors that are not HTTP responses (the network is down, the request was
 * aborted) are thrown as fetch throws them, not as a ProblemError.
 */
export class ProblemError extends Error {
  override readonly name = "ProblemError";
  /** The HTTP status code. */
  readonly status: number;
  /** A URI reference naming the problem type; "about:blank" when generic. */
  readonly type: string;
  /** A short summary of the problem type. */
  readonly title: string;
  /** What went wrong this time, for people. */
  readonly detail: string | undefined;
  /** A URI reference to this occurrence. */
  readonly instance: string | undefined;
  /** Every validation error (422), empty when there are none. */
  readonly errors: ErrorDetail[];
  /** Credits the request needed (402). */
  readonly needed: number | undefined;
  /** Credits the user had available (402). */
  readonly available: number | undefined;
  /** needed - available (402). */
  readonly shortfall: number | undefined;
  /** Seconds to wait before retrying, from the Retry-After header (429, 503). */
  readonly retryAfter: number | undefined;
  /** The job a 409 on cancel is about, unchanged. */
  readonly job: Job | undefined;
  /** The problem body as received (or built from the status when the body was not a problem). */
  readonly problem: Problem;

  constructor(status: number, problem: Partial<Problem> = {}, init: { retryAfter?: number | undefined } = {}) {
    const title = problem.title || statusText(status);
    super(problem.detail ? `${status} ${title}: ${problem.detail}` : `${status} ${title}`);
    this.status = status;
    this.type = problem.type || "about:blank";
    this.title = title;
    this.detail = problem.detail;
    this.instance = problem.instance;
    this.errors = problem.errors ?? [];
    this.needed = num(problem.needed);
    this.available = num(problem.available);
    this.shortfall =
      num(problem.shortfall) ??
      (this.needed !== undefined && this.available !== undefined ? this.needed - this.available : undefined);
    this.retryAfter = init.retryAfter;
    this.job = problem.job;
    this.problem = { ...problem, status, title, type: this.type } as Problem;
  }
}

/**
 * Builds the ProblemError for an error response whose body has already been
 * read (`body` is the parsed JSON, or the raw text when it was not JSON).
 */
export function problemFromResponse(response: Response, body: unknown): ProblemError {
  const problem: Partial<Problem> =
    body !== null && typeof body === "object" && !Array.isArray(body)
      ? (body as Partial<Problem>)
      : { detail: typeof body === "string" && body.trim() !== "" ? body.trim().slice(0, 500) : undefined };
  return new ProblemError(response.status, problem, {
    retryAfter: parseRetryAfter(response.headers.get("Retry-After")),
  });
}

/**
 * Parses a Retry-After header (delay-seconds or an HTTP date) into whole
 * seconds from now, or undefined when absent or unreadable.
 */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value == null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v);
  const at = Date.parse(v);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, Math.ceil((at - now) / 1000));
}

/** Reports whether err is a ProblemError, optionally with the given status. */
export function isProblem(err: unknown, status?: number): err is ProblemError {
  return err instanceof ProblemError && (status === undefined || err.status === status);
}

function num(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

const statusTexts: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  402: "Payment Required",
  403: "Forbidden",
  404: "Not Found",
  409: "Conflict",
  413: "Request Entity Too Large",
  422: "Unprocessable Entity",
  429: "Too Many Requests",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

function statusText(status: number): string {
  return statusTexts[status] ?? `HTTP ${status}`;
}
