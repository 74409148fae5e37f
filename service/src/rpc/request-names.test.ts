// SPDX-License-Identifier: Apache-2.0
// request-names.ts against a registry stand-in: display names, the vm/vcpu fields beside the
// deprecated name, and the errors for unknown, ambiguous and contradictory names.
import { describe, expect, it } from "vitest";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import type { VmRecord, VmRegistry } from "@kvmi/kvm-bridge";
import { BridgeError } from "../mapping/bridge-error.js";
import { normalizeRequestNames, resolveDisplayName } from "./request-names.js";

const A = "11111111-1111-4111-8111-111111111111";
const B = "22222222-2222-4222-8222-222222222222";
const C = "33333333-3333-4333-8333-333333333333";
const D = "44444444-4444-4444-8444-444444444444";

function registry(records: Array<Pick<VmRecord, "uuid" | "name" | "state">>): VmRegistry {
  return { list: () => records as VmRecord[] } as unknown as VmRegistry;
}
const vms = registry([
  { uuid: A, name: "web", state: "hooked" },
  { uuid: B, name: "twin", state: "hooked" },
  { uuid: C, name: "twin", state: "hooked" },
  { uuid: D, name: "web", state: "unhooked" }, // an older generation's record: the connected one wins
]);

describe("resolveDisplayName", () => {
  it("resolves VM and vCPU names and leaves other values alone", () => {
    expect(resolveDisplayName("vms/-/by-name/web", vms, "vm")).toBe(`vms/${A}`);
    expect(resolveDisplayName("vms/-/by-name/web/vcpus/3", vms, "vcpu")).toBe(`vms/${A}/vcpus/3`);
    expect(resolveDisplayName(`vms/${B}`, vms, "vm")).toBe(`vms/${B}`);
    expect(resolveDisplayName("garbage", vms, "vm")).toBe("garbage");
  });

  it("refuses unknown and ambiguous names", () => {
    expect(() => resolveDisplayName("vms/-/by-name/nobody", vms, "vm")).toThrow(BridgeError);
    expect(() => resolveDisplayName("vms/-/by-name/twin", vms, "vm")).toThrow(KvmiArgumentError);
    expect(() => resolveDisplayName("vms/-/by-name/twin", vms, "vm")).toThrow(/2 VMs have it/);
    expect(() => resolveDisplayName("vms/-/by-name/", vms, "vm")).toThrow(/no display name/);
  });
});

describe("normalizeRequestNames", () => {
  it("copies the new fields into the ones the handlers read, resolving display names", () => {
    const vcpuRequest = { name: "", vcpu: "vms/-/by-name/web/vcpus/0" };
    normalizeRequestNames(vcpuRequest, vms);
    expect(vcpuRequest).toEqual({ name: `vms/${A}/vcpus/0`, vcpu: `vms/${A}/vcpus/0` });
    const legacy = { name: `vms/${A}/vcpus/1`, vcpu: "" };
    normalizeRequestNames(legacy, vms);
    expect(legacy.name).toBe(`vms/${A}/vcpus/1`);
    const getVm = { name: "", vm: "vms/-/by-name/web" };
    normalizeRequestNames(getVm, vms);
    expect(getVm.name).toBe(`vms/${A}`);
    const command = { vm: "vms/-/by-name/web", gpa: 0n };
    normalizeRequestNames(command, vms);
    expect(command.vm).toBe(`vms/${A}`);
    // A numeric `vcpu` (EventReply, MemoryRange) is not a name.
    const reply = { vcpu: 3, seq: 1 };
    normalizeRequestNames(reply, vms);
    expect(reply).toEqual({ vcpu: 3, seq: 1 });
  });

  it("refuses a new field and a deprecated name that disagree", () => {
    expect(() => normalizeRequestNames({ name: `vms/${A}`, vm: `vms/${B}` }, vms)).toThrow(/disagree/);
    expect(() => normalizeRequestNames({ name: `vms/${A}/vcpus/0`, vcpu: `vms/${A}/vcpus/1` }, vms)).toThrow(/disagree/);
  });
});
