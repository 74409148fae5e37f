// SPDX-License-Identifier: Apache-2.0
// Every manifest we ship, validated against the API schemas it will meet (no cluster here): the
// Kubernetes objects of both rendered overlays and of deploy/kubevirt with kubernetes-models (the
// OpenAPI schemas of Kubernetes), the KubeVirt objects (VMI, VM, KubeVirt CR, Plugin) and the hook
// sidecar annotation with our schemas of KubeVirt's types (support/kubevirt-schemas.ts). Also the
// feature gate script against a KubeVirt CR with and without featureGates, through a kubectl
// stand-in that applies merge and JSON patches by their RFCs.
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import * as admissionV1 from "kubernetes-models/admissionregistration.k8s.io/v1";
import * as appsV1 from "kubernetes-models/apps/v1";
import * as networkingV1 from "kubernetes-models/networking.k8s.io/v1";
import * as coreV1 from "kubernetes-models/v1";
import { REPO, readYamlDocuments, renderKustomization } from "./support/kustomize.js";
import type { K8sObject } from "./support/kustomize.js";
import { isKubevirtKind, kubevirtErrors } from "./support/kubevirt-schemas.js";

type Model = new (data: object) => { validate(): void };
const MODELS: Record<string, Record<string, unknown>> = { v1: coreV1, "apps/v1": appsV1, "networking.k8s.io/v1": networkingV1, "admissionregistration.k8s.io/v1": admissionV1 };

/** kubernetes-models' validation errors of one Kubernetes object, [] when valid. */
function kubernetesErrors(object: K8sObject): string[] {
  const Ctor = MODELS[object.apiVersion]?.[object.kind] as Model | undefined;
  if (Ctor === undefined) return [`no Kubernetes model for ${object.apiVersion} ${object.kind}`];
  try {
    new Ctor(object).validate();
    return [];
  } catch (error) {
    return [String((error as Error).message)];
  }
}

function errorsOf(object: K8sObject): string[] {
  return isKubevirtKind(object.apiVersion, object.kind) ? kubevirtErrors(object as never) : kubernetesErrors(object);
}

const kubevirtFiles = ["examples/vmi.yaml", "examples/vm.yaml", "examples/vmi-node-bridge.yaml", "kubevirt-cr.yaml", "service.yaml", "networkpolicy.yaml", "plugin/plugin.yaml", "plugin/mutating-admission-policy.yaml"];

describe("schemas", () => {
  it.each(["tls-off", "tls-on"])("every object of the rendered overlay %s is valid Kubernetes", (overlay) => {
    const objects = renderKustomization(join(REPO, "deploy/k8s/overlays", overlay));
    expect(objects.length).toBeGreaterThan(5);
    expect(objects.map((o) => [o.kind, o.metadata.name, errorsOf(o)]).filter(([, , e]) => (e as string[]).length > 0)).toEqual([]);
  });

  it("ships no deploy/kubevirt manifest this test does not check", () => {
    const listed = readdirSync(join(REPO, "deploy/kubevirt"), { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".yaml") && !f.startsWith("proto") && f !== "buf.gen.yaml");
    expect(listed.sort()).toEqual([...kubevirtFiles].sort());
  });

  it.each(kubevirtFiles)("deploy/kubevirt/%s is valid against Kubernetes' or KubeVirt's schema", (file) => {
    const objects = readYamlDocuments(join(REPO, "deploy/kubevirt", file));
    expect(objects.length).toBeGreaterThan(0);
    for (const object of objects) expect(errorsOf(object), `${object.kind} ${object.metadata.name}`).toEqual([]);
  });

  it("the schemas catch what KubeVirt would silently drop or refuse", () => {
    const [vmi] = readYamlDocuments(join(REPO, "deploy/kubevirt/examples/vmi.yaml"));
    const typo = structuredClone(vmi!) as K8sObject & { spec: { domain: Record<string, unknown> } };
    typo.spec.domain.devcies = {};
    expect(errorsOf(typo).join("\n")).toMatch(/(must|should) NOT have additional properties.*devcies/);
    const badAnnotation = structuredClone(vmi!) as K8sObject;
    (badAnnotation.metadata.annotations as Record<string, string>)["hooks.kubevirt.io/hookSidecars"] = JSON.stringify([{ image: "x", arguments: ["--"] }]);
    expect(errorsOf(badAnnotation).join("\n")).toMatch(/hookSidecars\[0\] (must|should) NOT have additional properties.*arguments/);
    const [plugin] = readYamlDocuments(join(REPO, "deploy/kubevirt/plugin/plugin.yaml"));
    const outside = structuredClone(plugin!) as K8sObject & { spec: { domainHooks: Array<{ sidecar: { socketPath: string } }> } };
    outside.spec.domainHooks[0]!.sidecar.socketPath = "/tmp/kvmi.sock";
    expect(errorsOf(outside).join("\n")).toMatch(/socketPath (must|should) match pattern/);
    const [ds] = renderKustomization(join(REPO, "deploy/k8s/overlays/tls-off")).filter((o) => o.kind === "DaemonSet");
    const broken = structuredClone(ds!) as K8sObject & { spec: { template: { spec: { containers: Array<{ ports: Array<{ containerPort: unknown }> }> } } } };
    broken.spec.template.spec.containers[0]!.ports[0]!.containerPort = "grpc";
    expect(errorsOf(broken).join("\n")).not.toBe("");
  });

  it("the Plugin's socket is where the sidecar listens with --plugin, and the admission policy mounts it there", () => {
    const [plugin] = readYamlDocuments(join(REPO, "deploy/kubevirt/plugin/plugin.yaml")) as Array<K8sObject & { spec: { domainHooks: Array<{ sidecar: { socketPath: string } }> } }>;
    const policy = readFileSync(join(REPO, "deploy/kubevirt/plugin/mutating-admission-policy.yaml"), "utf8");
    expect(plugin!.spec.domainHooks[0]!.sidecar.socketPath).toBe(`/var/run/kubevirt-plugin/${plugin!.metadata.name}/kvmi-bridge.sock`);
    expect(policy).toContain(`args: ["--plugin", "${plugin!.metadata.name}"`);
    expect(policy).toContain(`mountPath: "/var/run/kubevirt-plugin/${plugin!.metadata.name}"`);
    expect(policy).toContain(`subPath: "${plugin!.metadata.name}"`);
  });
});

describe("enable-feature-gates.sh", () => {
  const scratch = mkdtempSync(join(tmpdir(), "kvmi-gates-"));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));
  // kubectl stand-in: the CR is a JSON file; `patch --type merge` is RFC 7386, `--type json` RFC 6902
  // `add` (the parent must exist; "-" appends to an array), `get -o jsonpath` prints the gates.
  const fake = join(scratch, "kubectl");
  writeFileSync(
    fake,
    `#!/usr/bin/env node
const fs = require("node:fs");
const file = process.env.FAKE_KUBEVIRT;
const cr = JSON.parse(fs.readFileSync(file, "utf8"));
const args = process.argv.slice(2);
const merge = (t, p) => { if (p === null || typeof p !== "object" || Array.isArray(p)) return p; if (t === null || typeof t !== "object" || Array.isArray(t)) t = {}; for (const [k, v] of Object.entries(p)) { if (v === null) delete t[k]; else t[k] = merge(t[k], v); } return t; };
if (args.includes("get")) { const g = cr.spec?.configuration?.developerConfiguration?.featureGates; process.stdout.write(g === undefined ? "" : JSON.stringify(g)); process.exit(0); }
const type = args[args.indexOf("--type") + 1], patch = JSON.parse(args[args.indexOf("-p") + 1]);
if (type === "merge") { fs.writeFileSync(file, JSON.stringify(merge(cr, patch))); process.exit(0); }
for (const op of patch) {
  if (op.op !== "add") { console.error("unsupported op"); process.exit(1); }
  const parts = op.path.split("/").slice(1); const last = parts.pop(); let parent = cr;
  for (const p of parts) { parent = parent?.[p]; if (parent === undefined) { console.error('The request is invalid: doc is missing path: "' + op.path + '"'); process.exit(1); } }
  if (Array.isArray(parent)) { if (last === "-") parent.push(op.value); else parent.splice(Number(last), 0, op.value); } else if (parent && typeof parent === "object") parent[last] = op.value; else { console.error("missing path " + op.path); process.exit(1); }
}
fs.writeFileSync(file, JSON.stringify(cr));
`,
  );
  chmodSync(fake, 0o755);
  const run = (cr: object, gates: string[]): { out: string; cr: { spec: { configuration: { developerConfiguration: { featureGates: string[] } } } } } => {
    const file = join(scratch, `cr-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, JSON.stringify(cr));
    const out = execFileSync("sh", [join(REPO, "deploy/kubevirt/enable-feature-gates.sh"), ...gates], { env: { ...process.env, KUBECTL: fake, FAKE_KUBEVIRT: file }, encoding: "utf8" });
    return { out, cr: JSON.parse(readFileSync(file, "utf8")) };
  };

  it("works on a KubeVirt CR without configuration at all, with featureGates missing, and keeps existing gates", () => {
    expect(run({ spec: {} }, ["Sidecar"]).cr.spec.configuration.developerConfiguration.featureGates).toEqual(["Sidecar"]);
    expect(run({ spec: { configuration: { developerConfiguration: { useEmulation: true } } } }, ["Sidecar", "Plugins"]).cr.spec.configuration.developerConfiguration).toEqual({
      useEmulation: true,
      featureGates: ["Sidecar", "Plugins"],
    });
    const kept = run({ spec: { configuration: { developerConfiguration: { featureGates: ["LiveMigration", "Sidecar"] } } } }, ["Sidecar", "Plugins"]);
    expect(kept.cr.spec.configuration.developerConfiguration.featureGates).toEqual(["LiveMigration", "Sidecar", "Plugins"]);
    expect(kept.out).toBe("Sidecar: already on\nPlugins: on\n");
  });

  it("the one-line JSON patch it replaces fails on a CR without featureGates (the bug)", () => {
    const file = join(scratch, "bare.json");
    writeFileSync(file, JSON.stringify({ spec: { configuration: { developerConfiguration: {} } } }));
    const patch = '[{"op":"add","path":"/spec/configuration/developerConfiguration/featureGates/-","value":"Sidecar"}]';
    expect(() => execFileSync(fake, ["patch", "kubevirt", "kubevirt", "--type", "json", "-p", patch], { env: { ...process.env, FAKE_KUBEVIRT: file }, stdio: "pipe" })).toThrow(/missing path/);
  });
});
