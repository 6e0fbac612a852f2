// Type-checks every Grafana dashboard (grafana/dashboards/*.json) against @grafana/schema.
//
// For each dashboard it writes a TypeScript module into a temporary directory:
//
//   export const d = <the dashboard JSON> satisfies Dashboard;
//
// plus, for every panel of a type whose options @grafana/schema describes, its `options`
// against that panel plugin's `Options` and its `fieldConfig.defaults.custom` against the
// plugin's `FieldConfig`. `satisfies` rejects missing required fields, wrong types and
// unknown keys. Enums of @grafana/schema are compared by value (`"background"`, not
// `BigValueColorMode.Background`), as they are stored in JSON. Then `tsc --noEmit --strict`.
//
// Usage: node deploy/checks/typecheck.mjs [DASHBOARD.json...]   (exit 1 on a type error)
// Needs `npm ci` in deploy/checks (.ci/install.sh runs it).

import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const files = process.argv.length > 2
  ? process.argv.slice(2).map((f) => resolve(f))
  : readdirSync(join(root, "grafana/dashboards"))
      .filter((f) => f.endsWith(".json"))
      .sort()
      .map((f) => join(root, "grafana/dashboards", f));

// Panel type -> the @grafana/schema module describing its options.
const PANELS = {
  timeseries: "TimeSeriesPanelCfg",
  stat: "StatPanelCfg",
  table: "TablePanelCfg",
  "state-timeline": "StateTimelinePanelCfg",
  gauge: "GaugePanelCfg",
  bargauge: "BarGaugePanelCfg",
  barchart: "BarChartPanelCfg",
  text: "TextPanelCfg",
  heatmap: "HeatmapPanelCfg",
  "status-history": "StatusHistoryPanelCfg",
};
const dirOf = (cfg) => cfg.replace("PanelCfg", "").toLowerCase();

const tmp = mkdtempSync(join(tmpdir(), "grafana-schema-"));
let out = [
  'import type { Dashboard } from "@grafana/schema";',
  // Enum-typed fields accept the enum's values as plain JSON strings.
  "type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T :",
  "  T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;",
];
for (const [type, cfg] of Object.entries(PANELS)) {
  const mod = `@grafana/schema/dist/esm/raw/composable/${dirOf(cfg)}/panelcfg/x/${cfg}_types.gen`;
  out.push(`import type * as P_${cfg} from "${mod}";`);
}
let n = 0;
const unknown = [];
for (const file of files) {
  const d = JSON.parse(readFileSync(file, "utf8"));
  const id = basename(file, ".json").replace(/[^A-Za-z0-9_]/g, "_");
  out.push(`// ${file}`);
  out.push(`export const dashboard_${id} = ${JSON.stringify(d, null, 2)} satisfies Json<Dashboard>;`);
  const panels = (d.panels ?? []).flatMap((p) => (p.type === "row" ? [p, ...(p.panels ?? [])] : [p]));
  for (const p of panels) {
    if (p.type === "row") continue;
    const cfg = PANELS[p.type];
    if (!cfg) {
      unknown.push(`${file}: panel "${p.title}" has type ${p.type}, which this check does not know`);
      continue;
    }
    const name = `${id}_panel_${p.id}`;
    out.push(`// ${p.title}`);
    out.push(`export const ${name}_options = ${JSON.stringify(p.options ?? {})} satisfies Json<P_${cfg}.Options>;`);
    const custom = p.fieldConfig?.defaults?.custom;
    if (custom !== undefined) {
      out.push(`export const ${name}_custom = ${JSON.stringify(custom)} satisfies Json<Partial<P_${cfg}.FieldConfig>>;`);
    }
    n++;
  }
}
if (unknown.length) {
  console.error(unknown.join("\n"));
  process.exit(1);
}
writeFileSync(join(tmp, "dashboards.ts"), out.join("\n") + "\n");
writeFileSync(join(tmp, "tsconfig.json"), JSON.stringify({
  compilerOptions: {
    strict: true, noEmit: true, target: "es2022", module: "nodenext", moduleResolution: "nodenext",
    skipLibCheck: true, types: [],
  },
  files: ["dashboards.ts"],
}));
symlinkSync(join(here, "node_modules"), join(tmp, "node_modules"));
try {
  execFileSync(process.execPath, [join(here, "node_modules/typescript/bin/tsc"), "-p", tmp], { stdio: "inherit" });
  console.log(`${files.length} dashboard(s), ${n} panel(s): type-checked against @grafana/schema`);
  rmSync(tmp, { recursive: true, force: true });
} catch {
  console.error(`tsc found errors; the generated module is kept at ${join(tmp, "dashboards.ts")}`);
  process.exit(1);
}
