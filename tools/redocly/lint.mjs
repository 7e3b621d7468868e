// make openapi-lint: Redocly's recommended rules over the given document,
// failing on any error or warning (redocly lint itself exits 0 on warnings).
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const redocly = join(here, "node_modules", ".bin", "redocly");
const doc = process.argv[2];
if (!doc) {
  console.error("usage: node lint.mjs openapi.yaml");
  process.exit(2);
}
const args = ["lint", "--config", join(here, "redocly.yaml"), doc];
const run = (format) => {
  try {
    return execFileSync(redocly, [...args, `--format=${format}`], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    return err.stdout ?? ""; // exit 1 on errors; the report is on stdout
  }
};
const out = run("json");
const { totals } = JSON.parse(out.slice(out.indexOf("{")));
if (totals.errors === 0 && totals.warnings === 0) {
  console.log(`${doc}: Redocly (recommended rules) finds no problem`);
  process.exit(0);
}
try {
  execFileSync(redocly, [...args, "--format=stylish"], { stdio: "inherit" });
} catch {
  // exit 1 on errors: the report is printed
}
console.error(`${doc}: ${totals.errors} errors and ${totals.warnings} warnings from Redocly (recommended rules)`);
process.exit(1);
