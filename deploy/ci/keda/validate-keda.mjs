// Validates KEDA objects (a JSON array on stdin) offline against the schemas generated from
// KEDA's CRDs (@kubernetes-models/keda): types, required fields and enums through the
// package's validators, and unknown fields (which those validators let through, so a typo
// such as `minReplicaCont` would otherwise pass) against the package's type declarations.
// Prints one line per object and exits 1 if any is invalid.
import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";

const models = { "keda.sh/v1alpha1/ScaledObject": ScaledObject };
const PREFIX = "IComGithubKedacoreKedaV2ApisKedaV1alpha1";

// Interface name -> { field: type text }, read from the package's .d.ts files.
function declarations() {
  const require = createRequire(import.meta.url);
  const pkg = dirname(require.resolve("@kubernetes-models/keda/package.json"));
  const dir = join(pkg, "keda.sh", "v1alpha1");
  const interfaces = {};
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".d.ts"))) {
    const text = readFileSync(join(dir, file), "utf8");
    const m = text.match(/export interface I(\w+)[^{]*\{\n([\s\S]*?)\n\}/);
    if (!m) continue;
    const fields = {};
    for (const line of m[2].split("\n")) {
      const f = line.match(/^ {4}"([^"]+)"\??: (.*?);?$/);
      if (f) fields[f[1]] = f[2];
    }
    interfaces[m[1]] = fields;
  }
  return interfaces;
}

function unknownFields(value, iface, path, interfaces, out) {
  const fields = interfaces[iface];
  if (!fields || value === null || typeof value !== "object" || Array.isArray(value)) return;
  for (const [key, child] of Object.entries(value)) {
    if (!(key in fields)) {
      out.push(`${path}.${key}: unknown field (known: ${Object.keys(fields).join(", ")})`);
      continue;
    }
    const nested = fields[key].match(new RegExp(`${PREFIX}(\\w+)`));
    if (!nested) continue;
    const items = fields[key].startsWith("Array<") ? child : [child];
    (Array.isArray(items) ? items : []).forEach((item, i) => {
      const at = fields[key].startsWith("Array<") ? `${path}.${key}[${i}]` : `${path}.${key}`;
      unknownFields(item, nested[1], at, interfaces, out);
    });
  }
}

let input = "";
for await (const chunk of process.stdin) input += chunk;
const objects = JSON.parse(input);
const interfaces = declarations();
let bad = 0;
for (const obj of objects) {
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const Model = models[`${obj.apiVersion}/${obj.kind}`];
  if (!Model) {
    console.log(`${name}: no KEDA schema for ${obj.apiVersion} ${obj.kind}`);
    bad++;
    continue;
  }
  const problems = [];
  try {
    new Model(obj).validate();
  } catch (err) {
    problems.push(err.message);
  }
  unknownFields(obj.spec, `${obj.kind}Spec`, "spec", interfaces, problems);
  if (problems.length) {
    console.log(`${name}: INVALID: ${problems.join("; ")}`);
    bad++;
  } else {
    console.log(`${name}: valid (KEDA ${obj.apiVersion} schema)`);
  }
}
process.exit(bad ? 1 : 0);
