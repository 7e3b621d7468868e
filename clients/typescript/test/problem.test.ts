// ProblemError and Retry-After parsing on responses the live server does not
// produce (an HTTP-date Retry-After, a proxy's HTML error page).
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { parseRetryAfter, problemFromResponse, ProblemError } from "@aiqueue/client";

describe("parseRetryAfter", () => {
  it("ReadsSecondsAndDates", () => {
    const now = Date.parse("2026-11-28T12:00:00Z");
    assert.equal(parseRetryAfter("7", now), 7);
    assert.equal(parseRetryAfter(" 0 ", now), 0);
    assert.equal(parseRetryAfter("Sat, 28 Nov 2026 12:00:30 GMT", now), 30);
    assert.equal(parseRetryAfter("Sat, 28 Nov 2026 11:00:00 GMT", now), 0);
    assert.equal(parseRetryAfter("soon", now), undefined);
    assert.equal(parseRetryAfter(null, now), undefined);
  });
});

describe("problemFromResponse", () => {
  it("KeepsTheStatusOfANonProblemBody", () => {
    const res = new Response("<html>bad gateway</html>", { status: 502, headers: { "Retry-After": "3" } });
    const err = problemFromResponse(res, "<html>bad gateway</html>");
    assert.ok(err instanceof ProblemError);
    assert.equal(err.status, 502);
    assert.equal(err.title, "Bad Gateway");
    assert.equal(err.type, "about:blank");
    assert.equal(err.retryAfter, 3);
    assert.deepEqual(err.errors, []);
    assert.match(err.message, /^502 Bad Gateway: <html>/);
  });

  it("DerivesTheShortfall", () => {
    const err = new ProblemError(402, { title: "Payment Required", needed: 5, available: 2 });
    assert.equal(err.shortfall, 3);
    assert.equal(err.name, "ProblemError");
  });
});
