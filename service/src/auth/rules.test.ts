// SPDX-License-Identifier: Apache-2.0
// Every RPC and every Session message has an authorization rule: this test walks the service
// descriptor and the Session oneofs, so adding an RPC or a session command without a rule fails.
import { IntrospectionService, SessionCommandSchema, SessionRequestSchema } from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import { COMMAND_MAPPINGS } from "../mapping/commands.js";
import type { AnyCommandMapping } from "../mapping/commands.js";
import { MUTATING_COMMANDS } from "../vm/vm-host.js";
import { COMMAND_VERBS, requestVm, RPC_RULES, SESSION_REQUEST_VERBS } from "./rules.js";

function oneofCases(schema: typeof SessionCommandSchema | typeof SessionRequestSchema, oneof: string): string[] {
  const group = schema.oneofs.find((o) => o.name === oneof);
  if (group === undefined) throw new Error(`${schema.typeName} has no oneof ${oneof}`);
  return group.fields.map((f) => f.localName);
}

describe("authorization rules", () => {
  it("has a rule for every RPC of IntrospectionService, and none for RPCs that do not exist", () => {
    const methods = IntrospectionService.methods.map((m) => m.localName);
    expect(methods.filter((m) => RPC_RULES[m] === undefined)).toEqual([]);
    expect(Object.keys(RPC_RULES).filter((m) => !methods.includes(m))).toEqual([]);
  });

  it("has a verb for every SessionCommand case", () => {
    const cases = oneofCases(SessionCommandSchema, "request");
    expect(cases.length).toBeGreaterThan(20);
    expect(cases.filter((c) => COMMAND_VERBS[c] === undefined)).toEqual([]);
  });

  it("has a rule for every SessionRequest message", () => {
    expect(oneofCases(SessionRequestSchema, "message").sort()).toEqual(Object.keys(SESSION_REQUEST_VERBS).sort());
  });

  it("asks control for exactly the commands that change the guest", () => {
    for (const mapping of Object.values<AnyCommandMapping>(COMMAND_MAPPINGS)) {
      expect(COMMAND_VERBS[mapping.method], mapping.method).toBe(MUTATING_COMMANDS.has(mapping.command) ? "control" : "read");
    }
  });

  it("finds the VM of vm-, VM-name- and vCPU-name-addressed requests, and refuses a bad name", () => {
    const uuid = "4c4c4544-0000-4000-8000-00000000000a";
    expect(requestVm({ vm: `vms/${uuid}` })).toBe(uuid);
    expect(requestVm({ name: `vms/${uuid}` })).toBe(uuid);
    expect(requestVm({ name: `vms/${uuid}/vcpus/3` })).toBe(uuid);
    expect(() => requestVm({ vm: "" })).toThrow(expect.objectContaining({ code: "KVMI_INVALID_ARGUMENT" }));
    expect(() => requestVm({})).toThrow(expect.objectContaining({ field: "name" }));
  });
});
