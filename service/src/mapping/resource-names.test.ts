// SPDX-License-Identifier: Apache-2.0
/** Resource names (AIP-122): strict parsing with messages a person understands. */
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import { describe, expect, it } from "vitest";
import { BridgeError, checkVcpuIndex } from "./bridge-error.js";
import { parseVcpuName, parseVmName, vcpuName, vmName } from "./resource-names.js";
import { UUID, VM } from "./test-support.js";

function error(fn: () => unknown): KvmiArgumentError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KvmiArgumentError);
    return err as KvmiArgumentError;
  }
  throw new Error("expected a KvmiArgumentError");
}

describe("parseVmName", () => {
  it("accepts vms/{lowercase uuid} and round-trips with vmName", () => {
    expect(parseVmName(VM)).toBe(UUID);
    expect(vmName(parseVmName(VM))).toBe(VM);
  });

  it.each([
    ["", /vm is required/],
    ["vms", /is not a VM name: expected vms\/\{uuid\}/],
    [`vm/${UUID}`, /is not a VM name/],
    [`vms/${UUID}/`, /is not a VM name/],
    [`${VM}/vcpus/0`, /is not a VM name/],
    ["vms/not-a-uuid", /does not hold a VM UUID: expected 8-4-4-4-12 lowercase hex digits/],
    [`vms/${UUID.replaceAll("-", "")}`, /does not hold a VM UUID/],
    [`vms/${UUID.toUpperCase()}`, /must spell the VM UUID in lowercase/],
  ])("rejects %j", (name, message) => {
    const err = error(() => parseVmName(name));
    expect(err.field).toBe("vm");
    expect(err.message).toMatch(message);
  });

  it("names the field it was given", () => {
    expect(error(() => parseVmName("x", "name")).field).toBe("name");
  });
});

describe("parseVcpuName", () => {
  it("accepts vms/{uuid}/vcpus/{index} and round-trips with vcpuName", () => {
    expect(parseVcpuName(`${VM}/vcpus/0`)).toEqual({ vm: UUID, vcpu: 0 });
    expect(parseVcpuName(`${VM}/vcpus/65535`)).toEqual({ vm: UUID, vcpu: 65535 });
    expect(vcpuName(UUID, 17)).toBe(`${VM}/vcpus/17`);
  });

  it.each([
    ["", /name is required/],
    [VM, /is not a vCPU name: expected vms\/\{uuid\}\/vcpus\/\{index\}/],
    [`${VM}/cpus/0`, /is not a vCPU name/],
    [`${VM}/vcpus/`, /invalid vCPU index ""/],
    [`${VM}/vcpus/-1`, /invalid vCPU index "-1"/],
    [`${VM}/vcpus/01`, /invalid vCPU index "01"/],
    [`${VM}/vcpus/1.5`, /invalid vCPU index "1.5"/],
    [`${VM}/vcpus/0x1`, /invalid vCPU index "0x1"/],
    [`${VM}/vcpus/65536`, /above the largest possible index 65535/],
    ["vms/abc/vcpus/0", /does not hold a VM UUID/],
  ])("rejects %j", (name, message) => {
    const err = error(() => parseVcpuName(name));
    expect(err.field).toBe("name");
    expect(err.message).toMatch(message);
  });
});

describe("checkVcpuIndex", () => {
  it("accepts indexes below the vCPU count", () => {
    expect(() => checkVcpuIndex(UUID, 3, 4)).not.toThrow();
  });

  it("rejects others with VCPU_NOT_FOUND naming the valid range", () => {
    for (const [vcpu, count, message] of [
      [4, 4, /vms\/.*\/vcpus\/4 does not exist: valid indexes are 0\.\.3/],
      [0, 0, /the VM reports no online vCPUs yet/],
    ] as const) {
      let thrown: unknown;
      try {
        checkVcpuIndex(UUID, vcpu, count);
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toBeInstanceOf(BridgeError);
      expect((thrown as BridgeError).code).toBe("VCPU_NOT_FOUND");
      expect((thrown as BridgeError).field).toBe("name");
      expect((thrown as BridgeError).context).toEqual({ vm: UUID, vcpu });
      expect((thrown as BridgeError).message).toMatch(message);
    }
  });
});
