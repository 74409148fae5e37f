// SPDX-License-Identifier: Apache-2.0
/**
 * The v12 series' selftest steps (tools/testing/selftests/kvm/x86_64/kvmi_test.c of v12 follows
 * v9's order; docs/protocol/v12.md lists what changed) against `kvmi-sim --dialect v12`, driven by
 * a codec-only tool through QEMU's handshake. What is specific to v12 is asserted on the wire:
 * the VM/vCPU id spaces, `max_msg_size` in GET_VERSION, `kvmi_event_hdr` framing (UNHOOK is 8 + 8
 * bytes), VM_PAUSE_VCPU naming its vCPU in the body, the `kvm_xsave` bodies, and no GET_MAX_GFN.
 */
import { afterEach, describe, expect, it } from "vitest";
import { commandByOp, errno, eventByKind, v12 } from "@kvmi/kvm-bridge/codec";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { startLibkvmiTool } from "../support/libkvmi-tool.js";
import type { LibkvmiConnection, LibkvmiTool } from "../support/libkvmi-tool.js";

let tool: LibkvmiTool | undefined;
let vm: EmulatedVm | undefined;

afterEach(async () => {
  await vm?.stop();
  await tool?.close();
  vm = undefined;
  tool = undefined;
});

async function connect(): Promise<LibkvmiConnection> {
  tool = await startLibkvmiTool(v12);
  vm = createEmulatedVm({ kind: "unix", path: tool.path }, { vcpus: 1, dialect: v12, reconnectMs: 60_000 });
  vm.start();
  return tool.nextConnection();
}

const id = (kind: Parameters<typeof eventByKind>[1]): number => eventByKind(v12, kind)!.id;

describe("v12 selftest steps against kvmi-sim --dialect v12", () => {
  it("uses the split id spaces: VM commands even, vCPU commands odd, no GET_MAX_GFN", () => {
    for (const spec of v12.commands) expect(spec.id % 2, spec.name).toBe(spec.scope === "vm" ? 0 : 1);
    expect(commandByOp(v12, "GET_MAX_GFN")).toBeUndefined();
    expect(commandByOp(v12, "SET_PAGE_ACCESS")!.id).toBe(20);
    expect(commandByOp(v12, "PAUSE_VCPU")!.id).toBe(16);
  });

  it("test_cmd_get_version: version 1, max_msg_size 8184, the singlestep feature", async () => {
    const c = await connect();
    expect(c.version).toEqual({ version: 1, max_msg_size: 8184, features: { singlestep: 1 } });
  });

  it("test_cmd_vm_check_command / check_event / vm_get_info", async () => {
    const c = await connect();
    await c.command("CHECK_COMMAND", { id: commandByOp(v12, "GET_VM_INFO")!.id });
    // 22 was VM_SET_PAGE_ACCESS before v12 dropped GET_MAX_GFN: no command now.
    await expect(c.command("CHECK_COMMAND", { id: 22 })).rejects.toMatchObject({ err: -errno.KVM_ENOENT });
    await c.command("CHECK_EVENT", { id: id("UNHOOK") });
    await expect(c.command("CHECK_EVENT", { id: 0xffff })).rejects.toMatchObject({ err: -errno.KVM_ENOENT });
    expect((await c.command("GET_VM_INFO", {}))["vcpu_count"]).toBe(1);
  });

  it("test_event_unhook: UNHOOK comes on message id 0 as kvmi_event_hdr alone", async () => {
    const c = await connect();
    await c.command("CONTROL_VM_EVENTS", { event_id: id("UNHOOK"), enable: 1 });
    const outcome = vm!.runAction("pause");
    const event = await c.nextEventOf("UNHOOK");
    expect(event.eventId).toBe(0);
    expect(event.vcpu).toBe(0);
    c.close();
    await expect(outcome).resolves.toMatchObject({ preunhook: "ok", closedBy: "tool" });
  });

  it("test_memory_access: write, read back, size 0 EINVAL, beyond RAM ENOENT", async () => {
    const c = await connect();
    const page = Uint8Array.from({ length: 4096 }, (_, i) => (i * 13) & 0xff);
    await c.command("WRITE_PHYSICAL", { gpa: 0x5000n, size: 4096, data: page });
    expect((await c.command("READ_PHYSICAL", { gpa: 0x5000n, size: 4096 }))["data"]).toEqual(page);
    await expect(c.command("READ_PHYSICAL", { gpa: 0x5000n, size: 0 })).rejects.toMatchObject({ err: -errno.KVM_EINVAL });
    const beyond = vm!.guest.memory.maxGfn() << 12n;
    await expect(c.command("READ_PHYSICAL", { gpa: beyond, size: 8 })).rejects.toMatchObject({ err: -errno.KVM_ENOENT });
  });

  it("test_cmd_vcpu_get_info: vCPU 0 answers, vCPU 99 is EINVAL", async () => {
    const c = await connect();
    expect((await c.command("GET_VCPU_INFO", {}, 0))["tsc_speed"]).toBeTypeOf("bigint");
    await expect(c.command("GET_VCPU_INFO", {}, 99)).rejects.toMatchObject({ err: -errno.KVM_EINVAL });
  });

  it("test_pause: VM_PAUSE_VCPU with the vCPU in the body, then a PAUSE event; wait=2 EINVAL", async () => {
    const c = await connect();
    for (let round = 0; round < 2; round++) {
      await c.command("PAUSE_VCPU", { wait: 1 }, 0);
      const event = await c.nextEventOf("PAUSE_VCPU");
      expect(event.eventId).toBe(id("PAUSE_VCPU"));
      expect(event.vcpu).toBe(0);
      // test_cmd_vcpu_set_registers: allowed while the event waits.
      await c.command("SET_REGISTERS", event.arch["regs"] as Record<string, unknown>, 0);
      c.reply(event, "CONTINUE");
    }
    await expect(c.command("PAUSE_VCPU", { wait: 2 }, 0)).rejects.toMatchObject({ err: -errno.KVM_EINVAL });
    await expect(c.command("PAUSE_VCPU", { wait: 1 }, 7)).rejects.toMatchObject({ err: -errno.KVM_EINVAL });
  });

  it("test_cmd_vcpu_get_registers / set_registers outside an event / get_cpuid", async () => {
    const c = await connect();
    const regs = await c.command("GET_REGISTERS", { msrs_idx: [] }, 0);
    expect(regs["mode"]).toBe(8);
    await expect(c.command("SET_REGISTERS", regs["regs"] as Record<string, unknown>, 0)).rejects.toMatchObject({
      err: -errno.KVM_EOPNOTSUPP,
    });
    await expect(c.command("GET_REGISTERS", { msrs_idx: [0xffffffff] }, 0)).rejects.toMatchObject({ err: -errno.KVM_EINVAL });
    expect((await c.command("GET_CPUID", { function: 0, index: 0 }, 0))["eax"]).toBeTypeOf("number");
  });

  it("test_event_hypercall: vCPU events carry kvmi_event_hdr and arrive on message id 1", async () => {
    const c = await connect();
    await c.command("CONTROL_VCPU_EVENTS", { event_id: id("HYPERCALL"), enable: 1 }, 0);
    const event = await c.nextEventOf("HYPERCALL", 15_000);
    expect(event.eventId).toBe(id("HYPERCALL"));
    expect((event.arch["regs"] as { rax: bigint }).rax).toBe(34n);
    c.reply(event, "CONTINUE");
  });

  it("test_cmd_vcpu_control_cr: a CR3 event answered with new_val; cr 99 EINVAL", async () => {
    const c = await connect();
    await c.command("CONTROL_VCPU_EVENTS", { event_id: id("CR"), enable: 1 }, 0);
    await c.command("CONTROL_CR", { cr: 3, enable: 1 }, 0);
    const event = await c.nextEventOf("CR", 10_000);
    expect(event.payload!["cr"]).toBe(3);
    c.reply(event, "CONTINUE", { new_val: event.payload!["new_value"] });
    await expect(c.command("CONTROL_CR", { cr: 99, enable: 1 }, 0)).rejects.toMatchObject({ err: -errno.KVM_EINVAL });
  });

  it("test_cmd_vcpu_get_xcr / xsave (struct kvm_xsave bodies) / get_mtrr_type / translate_gva", async () => {
    const c = await connect();
    expect((await c.command("GET_XCR", { xcr: 0 }, 0))["value"]).toBeTypeOf("bigint");
    const xsave = await c.command("GET_XSAVE", {}, 0);
    expect((xsave["region"] as Uint8Array).length).toBe(4096);
    await c.command("SET_XSAVE", { region: xsave["region"] }, 0);
    expect((await c.command("GET_MTRR_TYPE", { gpa: 0x1000n }, 0))["type"]).toBeTypeOf("number");
    expect((await c.command("TRANSLATE_GVA", { gva: (1n << 64n) - 1n }, 0))["gpa"]).toBe((1n << 64n) - 1n);
  });

  it("test_cmd_vm_set_page_access: entries without `visible`", async () => {
    const c = await connect();
    await c.command("SET_PAGE_ACCESS", { entries: [{ gpa: 0n, access: 0 }] });
    expect(vm!.guest.memory.restrictions().get(0n)).toBe(0);
    await c.command("SET_PAGE_ACCESS", { entries: [{ gpa: 0n, access: 7 }] });
    expect(vm!.guest.memory.restrictions().has(0n)).toBe(false);
  });
});
