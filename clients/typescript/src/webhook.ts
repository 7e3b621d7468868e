/**
 * Verifying aiqueue's outbound webhooks in the studio's backend.
 *
 * aiqueue signs every webhook the Standard Webhooks way
 * (https://www.standardwebhooks.com): `webhook-id`, `webhook-timestamp` (unix
 * seconds) and `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of
 * `<id>.<timestamp>.<body>`, keyed with the base64-decoded part of the
 * endpoint's secret after `whsec_`).
 *
 * Only Web Crypto (`globalThis.crypto.subtle`), `atob`, `TextEncoder` and
 * `TextDecoder` are used, so it runs in Node >= 20 and in edge runtimes
 * (Vercel/Next.js edge, Cloudflare Workers, Deno, Bun) alike.
 */
import type { Batch, Job } from "./types.js";

/** The job events an endpoint can subscribe to. */
export type JobEventType = "job.succeeded" | "job.failed" | "job.cancelled";

/** Every event type aiqueue sends. */
export type WebhookEventType = JobEventType | "batch.completed";

/**
 * A job deleted before its webhook's first attempt (River UI's Delete, or
 * JOB_RETENTION passing while no worker ran) is sent as what the event knows
 * of it: its id and the state it ended in.
 */
export interface DeletedJob {
  id: string;
  state: "succeeded" | "failed" | "cancelled";
}

/** The body of a job event: the job as `GET /v1/jobs/{id}` shows it. */
export interface JobEvent {
  type: JobEventType;
  /** When the job ended (RFC 3339). */
  timestamp: string;
  data: Job | DeletedJob;
}

/** The body of a `batch.completed` event: the batch as `GET /v1/batches/{id}` shows it. */
export interface BatchEvent {
  type: "batch.completed";
  /** When the batch's last job ended (RFC 3339). */
  timestamp: string;
  data: Batch;
}

/** A verified webhook's body; `type` discriminates it. */
export type WebhookEvent = JobEvent | BatchEvent;

/** Headers as a `Headers` (fetch, edge runtimes) or a plain object (Node's `req.headers`, Express). */
export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

/** The raw body exactly as received: the signature covers these bytes. */
export type WebhookBody = string | Uint8Array | ArrayBuffer;

export interface VerifyWebhookOptions {
  /**
   * How far `webhook-timestamp` may be from now, in seconds, either way
   * (replay protection). Default 300 (5 minutes).
   */
  toleranceSeconds?: number;
  /** The time to check against (tests); default now. */
  now?: Date | number;
}

/** The default `toleranceSeconds`: 5 minutes. */
export const WEBHOOK_TOLERANCE_SECONDS = 300;

/** Why a webhook was refused; `code` tells the cases apart. */
export class WebhookVerificationError extends Error {
  override readonly name = "WebhookVerificationError";
  readonly code: "missing_header" | "bad_secret" | "bad_timestamp" | "stale_timestamp" | "bad_signature" | "bad_body";

  constructor(code: WebhookVerificationError["code"], message: string) {
    super(message);
    this.code = code;
  }
}

const encoder = new TextEncoder();

/**
 * Verifies a webhook from aiqueue and returns its parsed body.
 *
 * - `secret` is the endpoint's `whsec_...` secret (the `secret` of the
 *   `POST /v1/admin/webhook-endpoints` answer).
 * - `headers` are the request's headers, a `Headers` or a plain object
 *   (names in any case).
 * - `body` is the raw body as received, a string or bytes: not JSON parsed
 *   and serialized again, which changes the bytes the signature covers.
 *
 * Throws a `WebhookVerificationError` when a header is missing, the secret
 * is not a `whsec_` secret, the timestamp is more than `toleranceSeconds`
 * (default 5 minutes) from now, no `v1` signature in `webhook-signature`
 * matches (compared in constant time), or the body is not a JSON event.
 *
 * The event's id is the `webhook-id` header: the same on every retry and
 * replay, so a receiver that keeps the ids it handled handles each event once.
 */
export async function verifyWebhook(
  secret: string,
  headers: WebhookHeaders,
  body: WebhookBody,
  options: VerifyWebhookOptions = {},
): Promise<WebhookEvent> {
  const id = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");

  const tolerance = options.toleranceSeconds ?? WEBHOOK_TOLERANCE_SECONDS;
  if (!/^\d{1,15}$/.test(timestamp)) {
    throw new WebhookVerificationError("bad_timestamp", `webhook-timestamp is not unix seconds: ${JSON.stringify(timestamp)}`);
  }
  const now = options.now === undefined ? Date.now() : typeof options.now === "number" ? options.now : options.now.getTime();
  const skew = Math.floor(now / 1000) - Number(timestamp);
  if (skew > tolerance) {
    throw new WebhookVerificationError("stale_timestamp", `webhook-timestamp is ${skew} s old, more than the ${tolerance} s allowed (a replay?)`);
  }
  if (-skew > tolerance) {
    throw new WebhookVerificationError("stale_timestamp", `webhook-timestamp is ${-skew} s in the future, more than the ${tolerance} s allowed`);
  }

  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new Error("verifyWebhook needs Web Crypto (globalThis.crypto.subtle): Node >= 20 or an edge runtime");
  }
  const key = await subtle.importKey("raw", secretKey(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const bodyBytes = typeof body === "string" ? encoder.encode(body) : body instanceof Uint8Array ? body : new Uint8Array(body);
  const prefix = encoder.encode(`${id}.${timestamp}.`);
  const signed = new Uint8Array(prefix.length + bodyBytes.length);
  signed.set(prefix);
  signed.set(bodyBytes, prefix.length);
  const expected = new Uint8Array(await subtle.sign("HMAC", key, signed));

  // The header may carry several signatures, space separated (a secret being
  // rotated); one valid v1 signature is enough. Every candidate is compared.
  let ok = false;
  for (const candidate of signatures.split(" ")) {
    const comma = candidate.indexOf(",");
    if (comma < 0 || candidate.slice(0, comma) !== "v1") continue;
    const given = base64Bytes(candidate.slice(comma + 1));
    if (given && equalConstantTime(given, expected)) ok = true;
  }
  if (!ok) {
    throw new WebhookVerificationError("bad_signature", "no v1 signature in webhook-signature matches the body with this secret");
  }

  let event: unknown;
  try {
    event = JSON.parse(typeof body === "string" ? body : new TextDecoder().decode(bodyBytes));
  } catch (err) {
    throw new WebhookVerificationError("bad_body", `the signed body is not JSON: ${String(err)}`);
  }
  if (typeof event !== "object" || event === null || typeof (event as { type?: unknown }).type !== "string" || !("data" in event)) {
    throw new WebhookVerificationError("bad_body", "the signed body is not an event ({type, timestamp, data})");
  }
  return event as WebhookEvent;
}

/** The value of a header that must be there, from a Headers or a plain object. */
function header(headers: WebhookHeaders, name: string): string {
  let value: string | string[] | null | undefined;
  if (typeof (headers as Headers).get === "function") {
    value = (headers as Headers).get(name);
  } else {
    const h = headers as Record<string, string | string[] | undefined>;
    value = h[name];
    if (value === undefined) {
      for (const k of Object.keys(h)) {
        if (k.toLowerCase() === name) {
          value = h[k];
          break;
        }
      }
    }
  }
  if (Array.isArray(value)) value = value.join(" ");
  if (value === null || value === undefined || value.trim() === "") {
    throw new WebhookVerificationError("missing_header", `the ${name} header is missing: not a Standard Webhooks request`);
  }
  return value.trim();
}

/** The HMAC key of a `whsec_<base64>` secret. */
function secretKey(secret: string): Uint8Array<ArrayBuffer> {
  const raw = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : "";
  const key = raw ? base64Bytes(raw) : undefined;
  if (!key || key.length === 0) {
    throw new WebhookVerificationError("bad_secret", "the secret is not a webhook secret (whsec_ and base64)");
  }
  return key;
}

/** Decodes standard base64; undefined when s is not base64. */
function base64Bytes(s: string): Uint8Array<ArrayBuffer> | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) return undefined;
  try {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  } catch {
    return undefined;
  }
}

/** a equals b, in time that depends on their lengths only. */
function equalConstantTime(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}
