// Writes deploy/k8s/base/prometheusrule.yaml: the groups of deploy/prometheus/alerts.yml in a
// prometheus-operator PrometheusRule. tests/deploy.rs checks that the two match.
// Usage: node deploy/checks/prometheusrule.mjs
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse, stringify } from "yaml";

const deploy = join(dirname(fileURLToPath(import.meta.url)), "..");
const rules = parse(readFileSync(join(deploy, "prometheus/alerts.yml"), "utf8"));
const resource = {
  apiVersion: "monitoring.coreos.com/v1",
  kind: "PrometheusRule",
  metadata: { name: "turnstile", labels: { "app.kubernetes.io/name": "turnstile" } },
  spec: rules,
};
writeFileSync(
  join(deploy, "k8s/base/prometheusrule.yaml"),
  "# The alert rules of deploy/prometheus/alerts.yml for the prometheus-operator (the same\n" +
    "# groups; tests/deploy.rs checks that they match). Regenerate after a change:\n" +
    "#   node deploy/checks/prometheusrule.mjs\n" +
    stringify(resource, { lineWidth: 0 }),
);
