// Validate an AsyncAPI document with the official parser (@asyncapi/parser).
// Usage: node scripts/validate-asyncapi.mjs <file>.  Prints every diagnostic as one
// JSON line {severity, code, message, path} and exits 1 when any is an error.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const [, , file] = process.argv;
if (!file) {
  console.error("usage: validate-asyncapi.mjs <file>");
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(await readFile(file, "utf8"));
const severities = ["error", "warning", "info", "hint"];
let errors = 0;
for (const d of diagnostics) {
  const severity = severities[d.severity] ?? String(d.severity);
  if (severity === "error") errors += 1;
  console.log(JSON.stringify({ severity, code: d.code, message: d.message, path: d.path }));
}
if (document) {
  const messages = document.allMessages().all().map((m) => m.name());
  console.log(JSON.stringify({ parsed: true, version: document.version(), messages }));
}
process.exit(errors || !document ? 1 : 0);
