// SPDX-License-Identifier: Apache-2.0
// The policy file: every validation error listed with its path, and the grant semantics (default
// deny, exact/glob/group identities, UUID/name/label selectors, implied verbs).
import { describe, expect, it } from "vitest";
import { compilePolicy, PolicyError } from "./policy.js";
import type { Identity } from "./identity.js";

const VM_A = "4c4c4544-0000-4000-8000-00000000000a";
const VM_B = "4c4c4544-0000-4000-8000-00000000000b";
const scanner: Identity = { name: "system:serviceaccount:introspection:scanner", source: "jwt", groups: [] };
const spiffe: Identity = { name: "spiffe://example.org/ns/intro/sa/debugger", source: "spiffe", groups: [] };
const oncall: Identity = { name: "alice", source: "jwt", groups: ["vmi-admins"] };
const local: Identity = { name: "local", source: "local", groups: [] };

function errorsOf(text: string): readonly string[] {
  try {
    compilePolicy(text, "policy.yaml");
  } catch (err) {
    expect(err).toBeInstanceOf(PolicyError);
    return (err as PolicyError).errors;
  }
  throw new Error("the policy was accepted");
}

describe("policy validation", () => {
  it("lists every error with its path at once", () => {
    const errors = errorsOf(`
version: 2
vmLabels:
  not-a-uuid: { team: red }
grants:
  - verbs: [read, fly]
    vms: some
  - identities: [alice]
    verbs: []
    vms: [{ uuid: nope }, { name: a, uuid: ${VM_A} }]
    colour: blue
`);
    expect(errors).toEqual([
      "/version: must be 1",
      '/vmLabels: key "not-a-uuid" is not a VM UUID',
      '/grants/0: needs "identities" or "groups"',
      "/grants/0/verbs/1: must be equal to one of the allowed values (list, read, observe, control, release, admin)",
      '/grants/0/vms: must be "all"',
      '/grants/1: unknown key "colour"',
      "/grants/1/verbs: must NOT have fewer than 1 items",
      "/grants/1/vms/0/uuid: is not a VM UUID",
      "/grants/1/vms/1: must NOT have more than 1 properties",
    ]);
  });

  it("reports YAML syntax errors and a missing grants list", () => {
    expect(errorsOf("version: 1\ngrants: [\n")[0]).toMatch(/^YAML /);
    expect(errorsOf("version: 1\n")).toEqual(["(top level): must have required property 'grants'"]);
    expect(errorsOf("version: 1\ngrants: []\ngrants: []\n")[0]).toMatch(/^YAML .*unique/i);
  });
});

describe("policy decisions", () => {
  const policy = compilePolicy(
    `
version: 1
vmLabels:
  ${VM_B}: { team: red }
grants:
  - identities: ["system:serviceaccount:introspection:*"]
    verbs: [read]
    vms: [{ labels: { kubevirt.io/namespace: "tenant-*" } }]
  - identities: ["spiffe://example.org/ns/intro/sa/debugger"]
    verbs: [control]
    vms: [{ uuid: ${VM_A.toUpperCase()} }, { labels: { team: red } }]
  - groups: [vmi-admins]
    verbs: [admin]
    vms: all
  - identities: [local]
    verbs: [list]
    vms: [{ name: "prod-*" }]
`,
    "policy.yaml",
  );
  const vmA = { uuid: VM_A, name: "tenant-a_web" };
  const vmB = { uuid: VM_B, name: "prod-db" };

  it("grants by glob identity and KubeVirt namespace label; read implies list but not control", () => {
    expect(policy.labelsOf(vmA)).toEqual({ "kubevirt.io/namespace": "tenant-a", "kubevirt.io/name": "web" });
    expect(policy.allows(scanner, "read", vmA)).toBe(true);
    expect(policy.allows(scanner, "list", vmA)).toBe(true);
    expect(policy.allows(scanner, "control", vmA)).toBe(false);
    expect(policy.allows(scanner, "observe", vmA)).toBe(false);
    expect(policy.allows(scanner, "read", vmB)).toBe(false);
    expect(policy.allows({ ...scanner, name: "system:serviceaccount:other:scanner" }, "read", vmA)).toBe(false);
  });

  it("grants by exact SPIFFE ID, UUID (any case) and static label; control implies observe and read, not release", () => {
    for (const verb of ["control", "observe", "read", "list"] as const) {
      expect(policy.allows(spiffe, verb, vmA)).toBe(true);
      expect(policy.allows(spiffe, verb, vmB)).toBe(true);
    }
    expect(policy.allows(spiffe, "release", vmA)).toBe(false);
    expect(policy.allows(spiffe, "admin", vmA)).toBe(false);
  });

  it("grants by group; admin implies every verb, also bridge-wide", () => {
    expect(policy.allows(oncall, "admin", undefined)).toBe(true);
    expect(policy.allows(oncall, "release", vmB)).toBe(true);
    expect(policy.allows({ ...oncall, groups: [] }, "list", vmB)).toBe(false);
  });

  it("matches display-name globs and denies everything else by default", () => {
    expect(policy.allows(local, "list", vmB)).toBe(true);
    expect(policy.allows(local, "list", vmA)).toBe(false);
    expect(policy.allows(local, "read", vmB)).toBe(false);
    expect(policy.allows({ name: "anonymous", source: "anonymous", groups: [] }, "list", vmB)).toBe(false);
    expect(policy.allows(spiffe, "list", undefined)).toBe(false);
  });
});
