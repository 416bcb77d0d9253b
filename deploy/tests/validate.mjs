// Validates Kubernetes objects (multi-document YAML, e.g. `kubectl kustomize` output) against the
// Kubernetes schemas of the npm package kubernetes-models.
//   node deploy/tests/validate.mjs FILE.yaml...      (exit 1 on the first file with an invalid object)
// Every object must be of a known apiVersion/kind and pass the model's validate() (types, required
// fields, enums, formats).
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

async function modelClass(apiVersion, kind) {
  // core "v1" -> kubernetes-models/v1/Kind ; "apps/v1" -> kubernetes-models/apps/v1/Kind
  const path = `kubernetes-models/${apiVersion}/${kind}`;
  try {
    const mod = await import(path);
    return mod[kind] ?? mod.default;
  } catch (e) {
    return null;
  }
}

let failures = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const doc of docs) {
    if (doc.errors.length) {
      console.error(`${file}: YAML error: ${doc.errors.map((e) => e.message).join("; ")}`);
      failures++;
      continue;
    }
    const obj = doc.toJS();
    if (obj === null || obj === undefined) continue;
    const name = `${file}: ${obj.apiVersion}/${obj.kind} ${obj.metadata?.namespace ?? ""}/${obj.metadata?.name}`;
    if (!obj.apiVersion || !obj.kind) {
      console.error(`${name}: no apiVersion or kind`);
      failures++;
      continue;
    }
    const Model = await modelClass(obj.apiVersion, obj.kind);
    if (!Model) {
      console.error(`${name}: unknown apiVersion/kind (not in kubernetes-models)`);
      failures++;
      continue;
    }
    try {
      new Model(obj).validate();
      console.log(`ok   ${name}`);
      checked++;
    } catch (e) {
      console.error(`FAIL ${name}:\n  ${e.message}`);
      failures++;
    }
  }
}
console.log(`${checked} objects valid, ${failures} invalid`);
process.exit(failures || checked === 0 ? 1 : 0);
