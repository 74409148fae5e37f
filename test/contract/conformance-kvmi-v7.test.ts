// SPDX-License-Identifier: Apache-2.0
/**
 * kvmi-v7 conformance: the emulator in the libkvmi product dialect, driven by a tool that behaves
 * on the wire as libkvmi does (test/support/libkvmi-tool.ts; docs/protocol/kvmi-v7.md). What a
 * libkvmi or LibVMI user does first is here: the automatic GET_VERSION, the vCPU count, max gfn,
 * memory, registers with MSRs, CR and hypercall events with replies, the pause batch, page access
 * in the default view, the commands this host cannot do, the reply switch, and the unhook.
 */
import { afterEach, describe, expect, it } from "vitest";
import { errno, kvmiV7, v9 } from "@kvmi/kvm-bridge/codec";
import type { Dialect } from "@kvmi/kvm-bridge/codec";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { startLibkvmiTool } from "../support/libkvmi-tool.js";
import type { LibkvmiConnection, LibkvmiTool } from "../support/libkvmi-tool.js";

const UUID = "6b1d8e2c-3f4a-4b5c-8d6e-7f8091a2b3c4";
/** LibVMI asks for these seven MSRs (a 592-byte GET_REGISTERS reply). */
const LIBVMI_MSRS = [0x174, 0x175, 0x176, 0xc0000080, 0xc0000081, 0xc0000082, 0xc0000084];

interface Lines {
  readonly warnings: string[];
}

function capturingLogger(lines: Lines) {
  const noop = (): void => undefined;
  const logger = {
    trace: noop,
    debug: noop,
    info: noop,
    warn: (_fields: Record<string, unknown>, message?: string) => void lines.warnings.push(message ?? ""),
    error: noop,
    child: () => logger,
  };
  return logger;
}

let tool: LibkvmiTool | undefined;
let vm: EmulatedVm | undefined;

afterEach(async () => {
  await vm?.stop();
  await tool?.close();
  vm = undefined;
  tool = undefined;
});

async function connectVm(dialect: Dialect, toolDialect: Dialect = dialect, lines?: Lines): Promise<LibkvmiConnection> {
  tool = await startLibkvmiTool(toolDialect);
  vm = createEmulatedVm(
    { kind: "unix", path: tool.path },
    { uuid: UUID, name: "v7-guest", vcpus: 2, dialect, reconnectMs: 60_000, ...(lines && { logger: capturingLogger(lines) }) },
  );
  vm.start();
  return tool.nextConnection();
}

describe("kvmi-sim --dialect kvmi-v7 under a libkvmi-like tool", () => {
  it("answers the automatic GET_VERSION at the tool's seq with version 1 and the kvmi-v7 feature bytes", async () => {
    const c = await connectVm(kvmiV7);
    expect(c.identity.uuid).toBe(UUID);
    expect(c.identity.name).toBe("v7-guest");
    expect(c.version["version"]).toBe(1);
    // No EPT views, VMFUNC, EPTP switching or #VE on this host.
    expect(c.version["features"]).toEqual({ spp: 0, vmfunc: 0, eptp: 0, ve: 0 });
    expect(c.problems).toEqual([]);
  });

  it("reports the vCPU count, max gfn, and reads back a physical write with u64 sizes", async () => {
    const c = await connectVm(kvmiV7);
    expect((await c.command("GET_VM_INFO", {}))["vcpu_count"]).toBe(2);
    const maxGfn = (await c.command("GET_MAX_GFN", {}))["gfn"] as bigint;
    expect(maxGfn).toBe(vm!.guest.memory.maxGfn());
    const gpa = 0x7000n;
    const pattern = Uint8Array.from({ length: 64 }, (_, i) => (i * 7 + 3) & 0xff);
    await c.command("WRITE_PHYSICAL", { gpa, size: pattern.length, data: pattern });
    expect(vm!.guest.memory.read(gpa, pattern.length)).toEqual({ ok: true, bytes: pattern });
    const read = await c.command("READ_PHYSICAL", { gpa, size: pattern.length });
    expect(read["data"]).toEqual(pattern);
    // Crossing a page, or 0 bytes, is EINVAL; beyond RAM is ENOENT.
    await expect(c.command("READ_PHYSICAL", { gpa: 0xff8n, size: 16 })).rejects.toMatchObject({ err: -errno.KVM_EINVAL });
    await expect(c.command("READ_PHYSICAL", { gpa: maxGfn << 12n, size: 8 })).rejects.toMatchObject({ err: -errno.KVM_ENOENT });
  });

  it("pauses every vCPU with libkvmi's batch: one reply, then one PAUSE_VCPU event per vCPU", async () => {
    const c = await connectVm(kvmiV7);
    await c.pauseAll(2);
    const paused = new Set<number>();
    for (let i = 0; i < 2; i++) {
      const event = await c.nextEventOf("PAUSE_VCPU");
      paused.add(event.vcpu);
      // While the vCPU waits, GET_REGISTERS with LibVMI's MSRs has exactly 472 + 16 * 7 bytes.
      const regs = await c.command("GET_REGISTERS", { msrs_idx: LIBVMI_MSRS }, event.vcpu);
      expect((regs["entries"] as unknown[]).length).toBe(7);
      expect((regs["regs"] as { rip: bigint }).rip).toBe((event.arch["regs"] as { rip: bigint }).rip);
      c.reply(event, "CONTINUE");
    }
    expect([...paused].sort()).toEqual([0, 1]);
    expect(c.problems).toEqual([]);
    expect(c.closed).toBeUndefined();
  });

  it("delivers CR3 writes as CR events (event id 1 on message id 1) and applies new_val from the reply", async () => {
    const c = await connectVm(kvmiV7);
    await c.command("CONTROL_VCPU_EVENTS", { event_id: kvmiV7.events.find((e) => e.kind === "CR")!.id, enable: 1 }, 0);
    await c.command("CONTROL_CR", { cr: 3, enable: 1 }, 0);
    const event = await c.nextEventOf("CR", 10_000);
    expect(event.eventId).toBe(1);
    expect(event.payload!["cr"]).toBe(3);
    const newValue = event.payload!["new_value"] as bigint;
    c.reply(event, "CONTINUE", { new_val: newValue });
    await c.command("CONTROL_CR", { cr: 3, enable: 0 }, 0);
    expect(c.problems).toEqual([]);
  });

  it("delivers the agent hypercall and the kvmi-v7 arch carries the default EPT view", async () => {
    const c = await connectVm(kvmiV7);
    const hypercall = kvmiV7.events.find((e) => e.kind === "HYPERCALL")!;
    await c.command("CONTROL_VCPU_EVENTS", { event_id: hypercall.id, enable: 1 }, 0);
    const event = await c.nextEventOf("HYPERCALL", 15_000);
    expect(event.arch["view"]).toBe(0);
    expect((event.arch["regs"] as { rax: bigint }).rax).toBe(34n);
    c.reply(event, "CONTINUE");
  });

  it("restricts page access in view 0, reads it back with GET_PAGE_ACCESS, and refuses other views", async () => {
    const c = await connectVm(kvmiV7);
    await c.command("SET_PAGE_ACCESS", { view: 0, entries: [{ gpa: 0x9000n, access: 5 }] });
    expect(vm!.guest.memory.restrictions().get(0x9n)).toBe(5);
    const got = await c.command("GET_PAGE_ACCESS", { view: 0, gpa: [0x9000n, 0xa000n] });
    expect([...(got["access"] as Uint8Array)]).toEqual([5, 7]);
    await expect(c.command("SET_PAGE_ACCESS", { view: 1, entries: [{ gpa: 0x9000n, access: 7 }] })).rejects.toMatchObject({
      err: -errno.KVM_EOPNOTSUPP,
    });
  });

  it("knows the product-only commands but answers those this host cannot do with EOPNOTSUPP", async () => {
    const c = await connectVm(kvmiV7);
    const querySpp = kvmiV7.commands.find((s) => s.op === "CONTROL_SPP")!;
    await c.command("CHECK_COMMAND", { id: querySpp.id });
    await expect(c.command("CONTROL_SPP", { enable: 1 })).rejects.toMatchObject({ err: -errno.KVM_EOPNOTSUPP });
    expect((await c.command("GET_EPT_VIEW", {}, 0))["view"]).toBe(0);
    // An id the dialect does not have at all.
    await expect(c.command("CHECK_COMMAND", { id: 40 })).rejects.toMatchObject({ err: -errno.KVM_ENOENT });
  });

  it("keeps replies off between CONTROL_CMD_RESPONSE{0} and {1}: failures are silent, a data reply closes", async () => {
    const c = await connectVm(kvmiV7);
    // {enable 0, now 0}: this command itself is still answered.
    await c.command("CONTROL_CMD_RESPONSE", { enable: 0, now: 0 });
    // A failing command while replies are off: no reply; the connection lives on.
    const control = kvmiV7.commands.find((s) => s.op === "CONTROL_CMD_RESPONSE")!;
    await expect(c.command("READ_PHYSICAL", { gpa: 0n, size: 0 })).rejects.toThrow(/no reply/);
    expect(c.closed).toBeUndefined();
    // {enable 1, now 1} is answered; afterwards everything is again.
    expect(control.id).toBe(27);
    await c.command("CONTROL_CMD_RESPONSE", { enable: 1, now: 1 });
    expect((await c.command("GET_VM_INFO", {}))["vcpu_count"]).toBe(2);
    // A command that returns data while replies are off makes the kernel close the socket.
    await c.command("CONTROL_CMD_RESPONSE", { enable: 0, now: 0 });
    await expect(c.command("GET_VM_INFO", {})).rejects.toThrow(/closed/);
  });

  it("sends UNHOOK when the device manager pauses the VM, and the VM goes on when the tool closes", async () => {
    const c = await connectVm(kvmiV7);
    const unhook = kvmiV7.events.find((e) => e.kind === "UNHOOK")!;
    await c.command("CONTROL_VM_EVENTS", { event_id: unhook.id, enable: 1 });
    const outcome = vm!.runAction("pause");
    const event = await c.nextEventOf("UNHOOK");
    expect(event.eventId).toBe(0);
    c.close();
    await expect(outcome).resolves.toMatchObject({ action: "pause", preunhook: "ok", closedBy: "tool" });
  });
});

describe("a tool of another dialect", () => {
  it("gets one log line naming kvmi-v7 when a libkvmi tool meets a v9 kernel", async () => {
    const lines: Lines = { warnings: [] };
    // The tool's automatic GET_VERSION (id 2, empty) is a short CHECK_COMMAND in v9; the reply it
    // gets has no version, and the start fails as libkvmi's does.
    tool = await startLibkvmiTool(kvmiV7);
    vm = createEmulatedVm({ kind: "unix", path: tool.path }, { uuid: UUID, vcpus: 1, dialect: v9, reconnectMs: 60_000, logger: capturingLogger(lines) });
    vm.start();
    await expect(tool.nextConnection(3000)).rejects.toThrow(/no VM connected/);
    const hint = lines.warnings.find((l) => l.includes("another KVMI dialect"));
    expect(hint).toMatch(/kvmi-v7 \(KVMI_GET_VERSION\)/);
    expect(hint).toMatch(/this VM's dialect/);
  });

  it("does not complain about a tool that speaks the VM's own dialect", async () => {
    const lines: Lines = { warnings: [] };
    const c = await connectVm(kvmiV7, kvmiV7, lines);
    await c.command("GET_VM_INFO", {});
    expect(lines.warnings.filter((l) => l.includes("another KVMI dialect"))).toEqual([]);
  });
});
