// SPDX-License-Identifier: Apache-2.0
/**
 * A small kustomize for the tests (kubectl and kustomize are not available here): renders
 * deploy/k8s overlays with the features they use — `resources` (files and directories),
 * `namespace`, `images` and strategic-merge `patches` — and fails when a patch names a resource
 * that does not exist, or the kustomization uses a field this renderer does not implement.
 *
 * The strategic merge follows Kubernetes' patch strategies for the fields our patches touch:
 * maps merge recursively, `null` deletes, lists of containers, env, volumes, volumeMounts and
 * ports merge by their key, other lists are replaced.
 *
 * @see https://kubectl.docs.kubernetes.io/references/kustomize/kustomization/
 * @see https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

/** A Kubernetes object as parsed YAML. */
export type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; [k: string]: unknown }; [k: string]: unknown };

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const SUPPORTED = new Set(["apiVersion", "kind", "namespace", "resources", "images", "patches"]);

/** Merge keys of the lists our manifests patch (Kubernetes' `patchMergeKey`). */
const MERGE_KEYS: Record<string, string> = {
  containers: "name",
  initContainers: "name",
  env: "name",
  volumes: "name",
  volumeMounts: "mountPath",
  ports: "containerPort",
};

/** Parses every YAML document of a file; throws on YAML errors. */
export function readYamlDocuments(file: string): K8sObject[] {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  const objects: K8sObject[] = [];
  for (const doc of docs) {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join("; ")}`);
    const value = doc.toJS() as K8sObject | null;
    if (value !== null) objects.push(value);
  }
  return objects;
}

/** Deep strategic merge of `patch` into `base` (new object; inputs untouched). */
export function strategicMerge(base: Json, patch: Json, field = ""): Json {
  if (patch === null) return null;
  if (Array.isArray(patch)) {
    const key = MERGE_KEYS[field];
    if (key === undefined || !Array.isArray(base)) return structuredClone(patch);
    const out = base.map((item) => structuredClone(item));
    for (const item of patch) {
      const id = (item as Record<string, Json>)[key];
      const at = out.findIndex((existing) => (existing as Record<string, Json>)[key] === id);
      if (at < 0) out.push(structuredClone(item));
      else out[at] = strategicMerge(out[at]!, item, "");
    }
    return out;
  }
  if (typeof patch === "object") {
    const out: Record<string, Json> = typeof base === "object" && base !== null && !Array.isArray(base) ? structuredClone(base) : {};
    for (const [k, v] of Object.entries(patch)) {
      if (v === null) delete out[k];
      else out[k] = strategicMerge(out[k] ?? null, v, k);
    }
    return out;
  }
  return patch;
}

/** Renders a kustomization directory into its objects. */
export function renderKustomization(dir: string): K8sObject[] {
  const file = join(dir, "kustomization.yaml");
  if (!existsSync(file)) throw new Error(`${dir} has no kustomization.yaml`);
  const [k] = readYamlDocuments(file) as unknown as Array<Record<string, unknown>>;
  const unknown = Object.keys(k!).filter((key) => !SUPPORTED.has(key));
  if (unknown.length > 0) throw new Error(`${file}: this test renderer does not implement ${unknown.join(", ")}`);

  const objects: K8sObject[] = [];
  for (const entry of (k!.resources as string[] | undefined) ?? []) {
    const path = resolve(dir, entry);
    if (!existsSync(path)) throw new Error(`${file}: resource ${entry} does not exist`);
    objects.push(...(statSync(path).isDirectory() ? renderKustomization(path) : readYamlDocuments(path)));
  }

  for (const patchEntry of (k!.patches as Array<{ path?: string; patch?: string; target?: unknown }> | undefined) ?? []) {
    if (patchEntry.path === undefined || patchEntry.target !== undefined) throw new Error(`${file}: only strategic-merge patches given by path are implemented`);
    for (const patch of readYamlDocuments(resolve(dir, patchEntry.path))) {
      const at = objects.findIndex((o) => o.kind === patch.kind && o.metadata.name === patch.metadata.name);
      if (at < 0) throw new Error(`${file}: patch ${patchEntry.path} targets ${patch.kind}/${patch.metadata.name}, which the resources do not contain`);
      objects[at] = strategicMerge(objects[at] as unknown as Json, patch as unknown as Json) as unknown as K8sObject;
    }
  }

  const namespace = k!.namespace as string | undefined;
  if (namespace !== undefined) {
    for (const o of objects) if (o.kind !== "Namespace") o.metadata.namespace = namespace;
  }

  for (const image of (k!.images as Array<{ name: string; newName?: string; newTag?: string }> | undefined) ?? []) {
    for (const o of objects) {
      const spec = (o.spec as { template?: { spec?: { containers?: Array<{ image: string }>; initContainers?: Array<{ image: string }> } } } | undefined)?.template?.spec;
      for (const c of [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])]) {
        const [name] = c.image.split(":");
        if (name === image.name) c.image = `${image.newName ?? name}${image.newTag === undefined ? "" : `:${image.newTag}`}`;
      }
    }
  }
  return objects;
}

/** The one object of `kind`/`name`; throws when absent. */
export function find<T = K8sObject>(objects: readonly K8sObject[], kind: string, name: string): T {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (found === undefined) throw new Error(`no ${kind}/${name} in ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(", ")}`);
  return found as unknown as T;
}

/** The repository root. */
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
