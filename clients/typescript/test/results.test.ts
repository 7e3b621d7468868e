// resultUrls and the built React entry, without a server.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";

import { resultUrls, type Job } from "@aiqueue/client";

const job = (state: Job["state"], result: unknown): Pick<Job, "state" | "result"> => ({ state, result: result as Job["result"] });

describe("resultUrls", () => {
  it("ListsImagesInOrder", () => {
    const r = { images: [{ url: "https://fal.media/a.png", width: 1 }, { url: "https://fal.media/b.png" }], seed: 1 };
    assert.deepEqual(resultUrls(job("succeeded", r)), ["https://fal.media/a.png", "https://fal.media/b.png"]);
  });

  it("ReadsTheOneImageAndTheVideo", () => {
    assert.deepEqual(resultUrls(job("succeeded", { image: { url: "https://fal.media/up.png" } })), ["https://fal.media/up.png"]);
    assert.deepEqual(resultUrls(job("succeeded", { video: { url: "https://fal.media/v.mp4", content_type: "video/mp4" } })), [
      "https://fal.media/v.mp4",
    ]);
  });

  it("IsEmptyUnlessSucceeded", () => {
    const r = { images: [{ url: "https://fal.media/a.png" }] };
    for (const state of ["queued", "running", "failed", "cancelled"] as const) assert.deepEqual(resultUrls(job(state, r)), []);
    assert.deepEqual(resultUrls(job("succeeded", undefined)), []);
    assert.deepEqual(resultUrls(job("succeeded", { images: "nope", image: { url: 3 }, other: { url: "x" } })), []);
  });

  it("NarrowsTheResultType", () => {
    // The generated types know each result's shape once narrowed.
    const r = { images: [{ url: "https://fal.media/a.png", width: 1024, height: 1024, content_type: "image/png" }] } as Job["result"];
    if (r && "images" in r) {
      const first = r.images[0];
      assert.equal(first?.url, "https://fal.media/a.png");
      assert.equal(first?.width, 1024);
    } else {
      assert.fail("an images result");
    }
  });
});

describe("ReactEntry", () => {
  it("StartsWithUseClient", async () => {
    // A Next.js App Router layout (a server component) can import the
    // provider only if the built module says "use client" first.
    const built = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "react.js");
    const text = await readFile(built, "utf8");
    assert.match(text, /^"use client";\n/);
  });
});
