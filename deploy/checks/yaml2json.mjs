// Prints the documents of a YAML file as one JSON list (for tests/deploy.rs).
// Usage: node deploy/checks/yaml2json.mjs FILE.yaml
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

const docs = parseAllDocuments(readFileSync(process.argv[2], "utf8"));
for (const d of docs) {
  if (d.errors.length) {
    console.error(d.errors.map(String).join("\n"));
    process.exit(1);
  }
}
console.log(JSON.stringify(docs.map((d) => d.toJSON()).filter((d) => d !== null)));
