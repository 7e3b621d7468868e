// The package as a studio app installs it: `npm pack` here, then
// `npm install <tarball>` in a fresh app that has its own React, and the
// hook renders there. React is a peer only, so the app's copy is the one
// the hook uses (a second copy makes React throw "Invalid hook call").
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, describe, it } from "node:test";

const run = promisify(execFile);
const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const minute = 60_000;
let tmp: string | undefined;

after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

// render.mjs renders <AIQueueProvider><Probe/></AIQueueProvider> in the app
// and prints what the hook gave the component.
const renderScript = `
import { act, createElement } from "react";
import { create } from "react-test-renderer";
import { createClient, resultUrls } from "@aiqueue/client";
import { AIQueueProvider, useAIQueue } from "@aiqueue/client/react";

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const onError = console.error;
console.error = (...args) => {
  if (typeof args[0] === "string" && args[0].startsWith("react-test-renderer is deprecated")) return;
  onError(...args);
};
const client = createClient({ baseUrl: "http://127.0.0.1:9", token: "t" });
let hook;
function Probe() {
  hook = useAIQueue();
  return createElement("p", null, typeof hook.submitJob + " " + typeof hook.getStatus);
}
let renderer;
await act(async () => {
  renderer = create(createElement(AIQueueProvider, { client }, createElement(Probe)));
});
console.log(JSON.stringify({ tree: renderer.toJSON(), sameClient: hook.client === client, resultUrls: typeof resultUrls }));
await act(async () => renderer.unmount());
`;

describe("Packed", () => {
  it("InstallsIntoAnAppWithItsOwnReact", { timeout: 5 * minute }, async () => {
    tmp = await mkdtemp(join(tmpdir(), "aiqueue-pack-"));
    // npm test has just built dist: pack it as it is.
    const { stdout } = await run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", tmp], {
      cwd: pkgDir,
      timeout: minute,
    });
    const [packed] = JSON.parse(stdout) as { filename: string; files: { path: string }[] }[];
    assert.ok(packed);
    const paths = packed.files.map((f) => f.path);
    assert.ok(paths.includes("dist/react.js") && paths.includes("dist/index.d.ts"), "the build is in the tarball");
    assert.ok(!paths.some((p) => p.startsWith("node_modules/") || p.startsWith("dist-test/")), paths.join(" "));

    const app = join(tmp, "studio-app");
    await mkdir(app);
    await writeFile(join(app, "package.json"), JSON.stringify({ name: "studio-app", private: true, type: "module" }));
    const react = JSON.parse(await readFile(join(pkgDir, "node_modules", "react", "package.json"), "utf8")).version as string;
    await run(
      "npm",
      ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error", join(tmp, packed.filename), `react@${react}`, `react-test-renderer@${react}`],
      { cwd: app, timeout: 4 * minute },
    );
    assert.ok(existsSync(join(app, "node_modules", "@aiqueue", "client", "dist", "react.js")));
    assert.ok(!existsSync(join(app, "node_modules", "@aiqueue", "client", "node_modules", "react")), "no second React");

    await writeFile(join(app, "render.mjs"), renderScript);
    const out = await run("node", ["render.mjs"], { cwd: app, timeout: minute });
    assert.equal(out.stderr, "");
    assert.deepEqual(JSON.parse(out.stdout), {
      tree: { type: "p", props: {}, children: ["function function"] },
      sameClient: true,
      resultUrls: "function",
    });
  });
});
