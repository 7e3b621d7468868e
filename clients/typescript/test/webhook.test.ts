// verifyWebhook without a server: signatures made here with node:crypto's
// HMAC (not the Web Crypto code under test), the Standard Webhooks test
// vector, and every way a delivery is refused. A real delivery from the
// server is verified in client.test.ts ("Webhooks").
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { describe, it } from "node:test";

import { verifyWebhook, WebhookVerificationError, type WebhookEvent } from "@aiqueue/client";

const secretBytes = randomBytes(32);
const secret = "whsec_" + secretBytes.toString("base64");
const id = "evt_5f1c2d3e4a5b6c7d8e9f0a1b2c3d4e5f";
const body = JSON.stringify({
  type: "job.succeeded",
  timestamp: "2026-11-28T12:00:00Z",
  data: { id: "42", state: "succeeded", operation: "generate" },
});

function sign(key: Buffer, msgID: string, ts: string, payload: string | Buffer): string {
  return "v1," + createHmac("sha256", key).update(`${msgID}.${ts}.`).update(payload).digest("base64");
}

function signed(opts: { ts?: number; payload?: string; key?: Buffer } = {}) {
  const ts = String(opts.ts ?? Math.floor(Date.now() / 1000));
  return {
    "webhook-id": id,
    "webhook-timestamp": ts,
    "webhook-signature": sign(opts.key ?? secretBytes, id, ts, opts.payload ?? body),
  };
}

/** Asserts that p rejects with a WebhookVerificationError of code and returns it. */
async function refused(p: Promise<unknown>, code: WebhookVerificationError["code"]): Promise<WebhookVerificationError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof WebhookVerificationError, `expected a WebhookVerificationError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected a WebhookVerificationError (${code}), but it verified`);
}

describe("verifyWebhook", () => {
  it("AcceptsTheStandardWebhooksTestVector", async () => {
    const headers = {
      "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
      "webhook-timestamp": "1614265330",
      "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    };
    const payload = '{"type": "job.failed", "timestamp": "2021-02-25T15:02:10Z", "data": {"test": 2432232314}}';
    // The vector's payload is {"test": 2432232314}: checked as the
    // signature it is, then refused as a body that is not an event.
    const err = await refused(
      verifyWebhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers, '{"test": 2432232314}', { now: 1614265330_000 }),
      "bad_body",
    );
    assert.match(err.message, /not an event/);
    await refused(verifyWebhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers, payload, { now: 1614265330_000 }), "bad_signature");
  });

  it("ReturnsTheEventForPlainObjectsAndHeaders", async () => {
    const h = signed();
    const want = JSON.parse(body) as WebhookEvent;
    assert.deepEqual(await verifyWebhook(secret, h, body), want);
    assert.deepEqual(await verifyWebhook(secret, new Headers(h), body), want);
    // Names in any case, as some frameworks keep them; bytes as the body.
    const mixed = { "Webhook-Id": h["webhook-id"], "WEBHOOK-TIMESTAMP": h["webhook-timestamp"], "Webhook-Signature": h["webhook-signature"] };
    assert.deepEqual(await verifyWebhook(secret, mixed, Buffer.from(body)), want);
    assert.deepEqual(await verifyWebhook(secret, h, new TextEncoder().encode(body).buffer), want);
    const event = await verifyWebhook(secret, h, body);
    if (event.type === "batch.completed") assert.fail("a job event");
    assert.equal(event.data.id, "42");
  });

  it("AcceptsOneValidSignatureAmongSeveral", async () => {
    const h = signed();
    const other = sign(randomBytes(32), id, h["webhook-timestamp"], body);
    const withRotation = { ...h, "webhook-signature": `v1a,abc ${other} ${h["webhook-signature"]}` };
    assert.equal((await verifyWebhook(secret, withRotation, body)).type, "job.succeeded");
  });

  it("RefusesForgedSignatures", async () => {
    // Another secret.
    await refused(verifyWebhook(secret, signed({ key: randomBytes(32) }), body), "bad_signature");
    // The body changed after signing (one byte, or parsed and serialized again).
    await refused(verifyWebhook(secret, signed(), body.replace('"42"', '"43"')), "bad_signature");
    await refused(verifyWebhook(secret, signed(), JSON.stringify(JSON.parse(body), null, 2)), "bad_signature");
    // Another id or timestamp than the signed one.
    await refused(verifyWebhook(secret, { ...signed(), "webhook-id": "evt_other" }, body), "bad_signature");
    const h = signed();
    await refused(verifyWebhook(secret, { ...h, "webhook-timestamp": String(Number(h["webhook-timestamp"]) - 1) }, body), "bad_signature");
    // Not v1, not base64, a truncated signature, nothing after the comma.
    const sig = h["webhook-signature"].slice(3);
    for (const bad of [`v2,${sig}`, `v1,${sig.slice(0, -4)}`, "v1,not base64!", "v1,", sig]) {
      await refused(verifyWebhook(secret, { ...h, "webhook-signature": bad }, body), "bad_signature");
    }
  });

  it("RefusesReplaysOutsideTheTolerance", async () => {
    const now = Math.floor(Date.now() / 1000);
    const old = await refused(verifyWebhook(secret, signed({ ts: now - 301 }), body), "stale_timestamp");
    assert.match(old.message, /old/);
    const future = await refused(verifyWebhook(secret, signed({ ts: now + 301 }), body), "stale_timestamp");
    assert.match(future.message, /future/);
    // Within 5 minutes either way.
    await verifyWebhook(secret, signed({ ts: now - 290 }), body);
    await verifyWebhook(secret, signed({ ts: now + 290 }), body);
    // A tolerance of its own, and a clock of its own.
    await refused(verifyWebhook(secret, signed({ ts: now - 61 }), body, { toleranceSeconds: 60 }), "stale_timestamp");
    await verifyWebhook(secret, signed({ ts: now - 3600 }), body, { now: new Date((now - 3600) * 1000) });
    // A replay is checked before the signature: an old delivery, validly
    // signed, is refused all the same.
    await refused(verifyWebhook(secret, signed({ ts: now - 86_400 }), body), "stale_timestamp");
  });

  it("RefusesMissingOrMalformedHeaders", async () => {
    for (const name of ["webhook-id", "webhook-timestamp", "webhook-signature"] as const) {
      const h: Record<string, string> = signed();
      delete h[name];
      const err = await refused(verifyWebhook(secret, h, body), "missing_header");
      assert.match(err.message, new RegExp(name));
      await refused(verifyWebhook(secret, new Headers(h), body), "missing_header");
      await refused(verifyWebhook(secret, { ...signed(), [name]: "" }, body), "missing_header");
    }
    for (const ts of ["soon", "1.5", "-1", "2026-11-28T12:00:00Z"]) {
      await refused(verifyWebhook(secret, { ...signed(), "webhook-timestamp": ts }, body), "bad_timestamp");
    }
  });

  it("RefusesASecretThatIsNotWhsec", async () => {
    for (const bad of ["", "whsec_", secretBytes.toString("base64"), "whsec_not base64!", "sk_" + secretBytes.toString("base64")]) {
      await refused(verifyWebhook(bad, signed(), body), "bad_secret");
    }
  });

  it("RefusesASignedBodyThatIsNotAnEvent", async () => {
    await refused(verifyWebhook(secret, signed({ payload: "not json" }), "not json"), "bad_body");
    await refused(verifyWebhook(secret, signed({ payload: "[1,2]" }), "[1,2]"), "bad_body");
  });
});
