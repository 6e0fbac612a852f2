// Validates the prometheus-operator resources (PodMonitor, ServiceMonitor, PrometheusRule)
// and the cert-manager ones (Certificate, Issuer, ClusterIssuer) in rendered Kubernetes
// manifests, which kubernetes-validate cannot check: it only has
// the schemas of Kubernetes' own kinds, and for any other kind it prints a warning
// ("Couldn't find schema for kind PodMonitor") and passes.
//
// Two checks against @kubernetes-models/prometheus-operator and
// @kubernetes-models/cert-manager, generated from those projects' CRDs:
// 1. the CRD's OpenAPI schema (types, enums, patterns, required fields), compiled with ajv;
// 2. strict field names: each resource goes into a TypeScript module as
//    `export const r = <json> satisfies IPodMonitor;` and tsc rejects any unknown field
//    (what `kubectl apply --validate=strict` rejects on a cluster).
//
// Usage: node deploy/checks/crds.mjs RENDERED.yaml   (kubectl kustomize deploy/k8s > RENDERED.yaml)
// Prints each resource checked; exit 1 on an error, or when a resource of another API
// group than Kubernetes' own, monitoring.coreos.com and cert-manager.io appears (nothing
// would check it).

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import * as certmanager from "@kubernetes-models/cert-manager/cert-manager.io/v1";

const here = dirname(fileURLToPath(import.meta.url));
const file = process.argv[2];
if (!file) {
  console.error("usage: node crds.mjs RENDERED.yaml");
  process.exit(2);
}
const docs = parseAllDocuments(readFileSync(file, "utf8"))
  .map((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors.map(String).join("; ")}`);
    return d.toJSON();
  })
  .filter((d) => d !== null);

// API version → the kinds checked, their models, and the module of their types.
const GROUPS = {
  "monitoring.coreos.com/v1": {
    kinds: ["PodMonitor", "ServiceMonitor", "PrometheusRule"],
    models: monitoring,
    alias: "m",
    types: "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
    what: "the prometheus-operator CRD schema",
  },
  "cert-manager.io/v1": {
    kinds: ["Certificate", "Issuer", "ClusterIssuer"],
    models: certmanager,
    alias: "c",
    types: "@kubernetes-models/cert-manager/cert-manager.io/v1",
    what: "the cert-manager CRD schema",
  },
};
const failures = [];
const ts = [];
let checked = 0;
for (const r of docs) {
  const [group] = String(r.apiVersion).includes("/") ? r.apiVersion.split("/") : [""];
  const name = `${r.kind}/${r.metadata?.name}`;
  if (group === "monitoring.coreos.com" || group === "cert-manager.io") {
    const g = GROUPS[r.apiVersion];
    if (!g || !g.kinds.includes(r.kind)) {
      const known = Object.entries(GROUPS).map(([v, x]) => `${x.kinds.join(", ")} of ${v}`).join("; ");
      failures.push(`${name}: ${r.apiVersion} ${r.kind} is not one this check knows (${known})`);
      continue;
    }
    try {
      new g.models[r.kind](r).validate();
    } catch (e) {
      failures.push(`${name}: ${e.message}`);
      continue;
    }
    ts.push(`export const r${checked} = ${JSON.stringify(r, null, 2)} satisfies ${g.alias}.I${r.kind};`);
    checked++;
    console.log(`${name}: valid against ${g.what}`);
  } else if (group.includes(".") && !group.endsWith(".k8s.io")) {
    failures.push(`${name}: no schema for ${r.apiVersion} in this check (kubernetes-validate skips it too)`);
  }
}

if (!failures.length && ts.length) {
  const tmp = mkdtempSync(join(tmpdir(), "crds-"));
  writeFileSync(join(tmp, "crds.ts"),
    Object.values(GROUPS).map((g) => `import type * as ${g.alias} from "${g.types}";\n`).join("") + ts.join("\n") + "\n");
  writeFileSync(join(tmp, "tsconfig.json"), JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, target: "es2022", module: "nodenext", moduleResolution: "nodenext", skipLibCheck: true, types: [] },
    files: ["crds.ts"],
  }));
  symlinkSync(join(here, "node_modules"), join(tmp, "node_modules"));
  try {
    execFileSync(process.execPath, [join(here, "node_modules/typescript/bin/tsc"), "-p", tmp], { stdio: "inherit" });
    rmSync(tmp, { recursive: true, force: true });
    console.log(`${checked} resource(s): no unknown fields`);
  } catch {
    failures.push(`tsc: unknown or mistyped fields (module kept at ${join(tmp, "crds.ts")})`);
  }
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
