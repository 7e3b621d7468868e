// Bundles the playground (src/playground.ts with the TypeScript client from
// clients/typescript/src and its dependencies from clients/typescript's
// node_modules) into one ES module: static/playground/playground.js, or the
// path given as the first argument (make web-check builds to a temp file
// and compares). The output is committed, so `go build` needs no node.
import { build } from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
await build({
  entryPoints: [join(here, "src", "playground.ts")],
  outfile: process.argv[2] ?? join(here, "static", "playground", "playground.js"),
  bundle: true,
  format: "esm",
  target: "es2022",
  platform: "browser",
  charset: "utf8",
  legalComments: "eof",
  banner: { js: "// Built by `make web` from web/src/playground.ts and clients/typescript/src with esbuild; do not edit." },
  logLevel: "warning",
});
