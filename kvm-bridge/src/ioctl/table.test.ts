// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { kvmIntrospectionFeature, kvmIntrospectionHook } from "../wire/layouts/ioctl.js";
import { _IOC_NONE, _IOC_SIZE, _IOC_WRITE } from "./ioc.js";
import {
  introspectionCapNumbers,
  KVM_API_VERSION,
  KVM_CAP_INTROSPECTION,
  KVM_CHECK_EXTENSION,
  KVM_CREATE_VM,
  KVM_GET_API_VERSION,
  KVMI_IOCTL_TABLES,
  KVMI_V9_IOCTLS,
  KVMIO,
  kvmiIoctlTable,
} from "./table.js";

// Numbers copied from kvmi-abi §1.2 / §2.4 and include/uapi/linux/kvm.h.
describe("ioctl table", () => {
  it("has the plain KVM ioctls", () => {
    expect(KVMIO).toBe(0xae);
    expect(KVM_API_VERSION).toBe(12);
    expect(KVM_GET_API_VERSION.number).toBe(0xae00);
    expect(KVM_CREATE_VM.number).toBe(0xae01);
    expect(KVM_CHECK_EXTENSION.number).toBe(0xae03);
    for (const spec of [KVM_GET_API_VERSION, KVM_CREATE_VM, KVM_CHECK_EXTENSION]) {
      expect(spec.dir).toBe(_IOC_NONE);
      expect(spec.arg).toBeNull();
    }
  });

  it("lists v9 first, with the numbers of kvmi-abi §2.4", () => {
    expect(KVMI_IOCTL_TABLES[0]).toBe(KVMI_V9_IOCTLS);
    expect(KVMI_V9_IOCTLS.capIntrospection).toBe(184);
    expect(KVM_CAP_INTROSPECTION).toBe(184);
    const io = KVMI_V9_IOCTLS.ioctls;
    expect(io.KVM_INTROSPECTION_HOOK.number).toBe(0x4018aec3);
    expect(io.KVM_INTROSPECTION_UNHOOK.number).toBe(0xaec4);
    expect(io.KVM_INTROSPECTION_COMMAND.number).toBe(0x4008aec5);
    expect(io.KVM_INTROSPECTION_EVENT.number).toBe(0x4008aec6);
    expect(io.KVM_INTROSPECTION_PREUNHOOK.number).toBe(0xaec7);
    expect(io.KVM_INTROSPECTION_HOOK.arg).toBe(kvmIntrospectionHook);
    expect(io.KVM_INTROSPECTION_COMMAND.arg).toBe(kvmIntrospectionFeature);
    expect(io.KVM_INTROSPECTION_EVENT.arg).toBe(kvmIntrospectionFeature);
    expect(io.KVM_INTROSPECTION_UNHOOK.arg).toBeNull();
    expect(io.KVM_INTROSPECTION_PREUNHOOK.arg).toBeNull();
    expect(io.KVM_INTROSPECTION_PREUNHOOK.mainlineCollision).toMatch(/KVM_RESET_DIRTY_RINGS/);
    expect(KVMI_V9_IOCTLS.capMainlineCollision?.name).toBe("KVM_CAP_LAST_CPU");
    expect(KVMI_V9_IOCTLS.bridgeSupported).toBe(true);
  });

  it("derives every size field from the argument layout", () => {
    for (const table of KVMI_IOCTL_TABLES) {
      for (const spec of Object.values(table.ioctls)) {
        expect(spec.fd).toBe("vm");
        expect(_IOC_SIZE(spec.number)).toBe(spec.arg?.size ?? 0);
        expect(spec.dir).toBe(spec.arg === null ? _IOC_NONE : _IOC_WRITE);
      }
    }
    expect(kvmIntrospectionHook.size).toBe(24);
    expect(kvmIntrospectionFeature.size).toBe(8);
  });

  it("keeps the other dialects' numbers from kvmi-abi §1.2, as table-only entries", () => {
    const nrs = (id: Parameters<typeof kvmiIoctlTable>[0]): number[] =>
      Object.values(kvmiIoctlTable(id).ioctls).map((s) => s.nr);
    expect(nrs("v8")).toEqual([0xc3, 0xc4, 0xc5, 0xc6, 0xc7]);
    expect(nrs("v10-v11")).toEqual([0xc8, 0xc9, 0xca, 0xcb, 0xcc]);
    expect(nrs("v12")).toEqual([0xc8, 0xc9, 0xca, 0xcb, 0xcc]);
    expect(nrs("kvmi-v7-2.11.93")).toEqual([0xff, 0xfb, 0xfd, 0xfc, 0xfe]);
    expect(nrs("kvmi-v7")).toEqual([0xff, 0xfb, 0xfd, 0xfc, 0xfe]);
    expect(kvmiIoctlTable("v10-v11").ioctls.KVM_INTROSPECTION_HOOK.number).toBe(0x4018aec8);
    expect(kvmiIoctlTable("v12").ioctls.KVM_INTROSPECTION_PREUNHOOK.number).toBe(0xaecc);
    expect(kvmiIoctlTable("kvmi-v7").ioctls.KVM_INTROSPECTION_HOOK.number).toBe(0x4018aeff);
    const caps = Object.fromEntries(KVMI_IOCTL_TABLES.map((t) => [t.id, t.capIntrospection]));
    expect(caps).toEqual({ v9: 184, v8: 180, "v10-v11": 193, v12: 206, "kvmi-v7-2.11.93": 999, "kvmi-v7": 180 });
    expect(KVMI_IOCTL_TABLES.filter((t) => t.bridgeSupported).map((t) => t.id)).toEqual(["v9", "v12", "kvmi-v7-2.11.93", "kvmi-v7"]);
    // Exactly the dialects the codec speaks: the bridge never issues numbers it has no wire table for.
    for (const table of KVMI_IOCTL_TABLES) expect(table.bridgeSupported, table.id).toBe(table.wire !== null);
  });

  it("groups dialects by capability number", () => {
    const groups = introspectionCapNumbers().map((g) => [g.cap, g.dialects.map((t) => t.id)]);
    expect(groups).toEqual([
      [180, ["v8", "kvmi-v7"]],
      [184, ["v9"]],
      [193, ["v10-v11"]],
      [206, ["v12"]],
      [999, ["kvmi-v7-2.11.93"]],
    ]);
  });

  it("only lists newer-mainline capabilities above the dialect's own number", () => {
    for (const table of KVMI_IOCTL_TABLES) {
      for (const newer of table.newerMainlineCaps) expect(newer.cap).toBeGreaterThan(table.capIntrospection);
    }
  });
});

describe("ioctl tables and the codec's dialect tables", () => {
  it("take their numbers and capability from the dialect table they name (one source)", () => {
    const linked = KVMI_IOCTL_TABLES.filter((t) => t.wire !== null);
    expect(linked.map((t) => `${t.id}:${t.wire!.name}`)).toEqual(["v9:v9", "v12:v12", "kvmi-v7-2.11.93:kvmi-v7", "kvmi-v7:kvmi-v7"]);
    for (const table of linked) {
      const wire = table.wire!.ioctls;
      expect(table.ioctls.KVM_INTROSPECTION_HOOK.nr, table.id).toBe(wire.hook);
      expect(table.ioctls.KVM_INTROSPECTION_UNHOOK.nr, table.id).toBe(wire.unhook);
      expect(table.ioctls.KVM_INTROSPECTION_COMMAND.nr, table.id).toBe(wire.command);
      expect(table.ioctls.KVM_INTROSPECTION_EVENT.nr, table.id).toBe(wire.event);
      expect(table.ioctls.KVM_INTROSPECTION_PREUNHOOK.nr, table.id).toBe(wire.preunhook);
      expect(wire.capIntrospection, table.id).toContain(table.capIntrospection);
    }
  });
});
