// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { KvmiArgumentError } from "../errors.js";
import {
  _IO,
  _IOC,
  _IOC_DIR,
  _IOC_NONE,
  _IOC_NR,
  _IOC_READ,
  _IOC_SIZE,
  _IOC_TYPE,
  _IOC_WRITE,
  _IOR,
  _IOW,
  _IOWR,
  formatIoctlNumber,
} from "./ioc.js";

// Expected numbers are copied from kernel headers / kvmi-abi §2.4, never computed by the code under test.
describe("_IOC family (asm-generic/ioctl.h on x86_64)", () => {
  it("packs dir, size, type and nr like the C macros", () => {
    expect(_IO(0xae, 0x00)).toBe(0xae00); // KVM_GET_API_VERSION
    expect(_IO(0xae, 0x01)).toBe(0xae01); // KVM_CREATE_VM
    expect(_IO(0xae, 0x03)).toBe(0xae03); // KVM_CHECK_EXTENSION
    expect(_IOW(0xae, 0xc3, 24)).toBe(0x4018aec3); // KVM_INTROSPECTION_HOOK
    expect(_IO(0xae, 0xc4)).toBe(0xaec4); // KVM_INTROSPECTION_UNHOOK
    expect(_IOW(0xae, 0xc5, 8)).toBe(0x4008aec5); // KVM_INTROSPECTION_COMMAND
    expect(_IOW(0xae, 0xc6, 8)).toBe(0x4008aec6); // KVM_INTROSPECTION_EVENT
    expect(_IO(0xae, 0xc7)).toBe(0xaec7); // KVM_INTROSPECTION_PREUNHOOK
  });

  it("keeps read-direction numbers unsigned", () => {
    expect(_IOR(0xae, 0x81, 144)).toBe(0x8090ae81); // KVM_GET_REGS, sizeof(struct kvm_regs) = 144
    expect(_IOWR(0xae, 0x02, 4)).toBe(0xc004ae02); // KVM_GET_MSR_INDEX_LIST, sizeof(struct kvm_msr_list) = 4
    expect(_IOC(3, 0xff, 0xff, 0x3fff)).toBe(0xffffffff);
    expect(_IOC(_IOC_READ, 0xae, 0x81, 144)).toBeGreaterThan(0);
  });

  it("decodes what it encodes", () => {
    const n = 0x4018aec3;
    expect(_IOC_DIR(n)).toBe(_IOC_WRITE);
    expect(_IOC_TYPE(n)).toBe(0xae);
    expect(_IOC_NR(n)).toBe(0xc3);
    expect(_IOC_SIZE(n)).toBe(24);
    expect(_IOC_DIR(0xc004ae02)).toBe(_IOC_READ | _IOC_WRITE);
    expect(_IOC_SIZE(0xaec7)).toBe(0);
    expect(_IOC_DIR(0xaec7)).toBe(_IOC_NONE);
  });

  it("rejects fields that do not fit their bit width", () => {
    expect(() => _IOW(0xae, 0x100, 8)).toThrow(KvmiArgumentError);
    expect(() => _IOW(0x1ae, 0xc3, 8)).toThrow(KvmiArgumentError);
    expect(() => _IOW(0xae, 0xc3, 0x4000)).toThrow(/size must be an integer in \[0, 16383\]/);
    expect(() => _IOW(0xae, 0xc3, -1)).toThrow(KvmiArgumentError);
    expect(() => _IOW(0xae, 0xc3, 1.5)).toThrow(KvmiArgumentError);
  });

  it("formats numbers like the headers", () => {
    expect(formatIoctlNumber(0x4018aec3)).toBe("0x4018AEC3");
    expect(formatIoctlNumber(0xaec7)).toBe("0xAEC7");
  });
});
