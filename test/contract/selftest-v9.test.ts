// SPDX-License-Identifier: Apache-2.0
/**
 * The v9 kernel selftest (`tools/testing/selftests/kvm/x86_64/kvmi_test.c`, kvmi-abi §8) run
 * against the emulator: one VM with one vCPU and no workload, a 4 KiB test page mapped at
 * test_gva/test_gpa, the guest running so that vCPU jobs execute, and a tool built only from the
 * wire codec on the other end of a real UNIX socket pair. Each of the 32 steps is one `it`, in the
 * selftest's order, asserting the selftest's errnos, reply sizes, event sizes and guest effects.
 *
 * Messages with non-zero padding are encoded with the codec and then one padding byte is poked at
 * the offset the layout table gives (conventions §11: no magic offsets).
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KvmiRemoteError } from "@kvmi/kvm-bridge";
import { createGuest, createGuestPort, createKvmiExitHandler, KvmiVm } from "@kvmi/kvm-bridge/emulator";
import type { Guest, Vcpu } from "@kvmi/kvm-bridge/emulator";
import { encode, errno, HEADER_BYTES, layouts, v9Ids, V9_COMMANDS, V9_EVENTS, viewOf } from "@kvmi/kvm-bridge/wire";
import type { V9CommandName } from "@kvmi/kvm-bridge/wire";
import { bodyOffset, createWireToolPair, pokeField, pokePadding, waitUntil, within } from "../support/wire-tool.js";
import type { ToolEvent, ToolReply, WireTool, WireToolPair } from "../support/wire-tool.js";

// Linux errnos of the ioctls (KvmiRemoteError.errno), kvmi-abi §2.4. EEXIST has no KVM_E* twin.
const EPERM = 1;
const ENOENT = 2;
const EFAULT = 14;
const EEXIST = 17;
const EINVAL = 22;

// Wire values (kvmi_error_code.err), kvmi-abi §7.
const W_EPERM = -errno.KVM_EPERM;
const W_ENOENT = -errno.KVM_ENOENT;
const W_EINVAL = -errno.KVM_EINVAL;
const W_EBUSY = -errno.KVM_EBUSY;
const W_EOPNOTSUPP = -errno.KVM_EOPNOTSUPP;
const W_ENOSYS = -errno.KVM_ENOSYS;

const CONTINUE = 0;
const RETRY = 1;

const ERROR_CODE_BYTES = layouts.kvmiErrorCode.size;
const EVENT_BYTES = layouts.kvmiEvent.size;
const PAGE_BYTES = 4096;
const UNMAPPED = (1n << 64n) - 1n;

// Architectural constants the guest effects are checked with (Intel SDM).
const X86_CR4_OSXSAVE = 1n << 18n;
const XFEATURE_MASK_YMM = 1n << 2n;
const MSR_MISC_FEATURES_ENABLES = 0x140;
const UD_VECTOR = 6;
const BP_VECTOR = 3;
const INT3 = 0xcc;
const NOP = 0x90;
const KVM_HC_XEN_HVM_OP = 34n;
const KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT = 24n;
/** RAX a guest gets for an agent hypercall nobody consumed: -KVM_ENOSYS as u64 (kvmi-abi §5 id 2). */
const HYPERCALL_ENOSYS = (1n << 64n) - BigInt(errno.KVM_ENOSYS);

const TEST_GVA = 0x0000_7f00_0000_0000n;
/** Where the steps that execute code put it inside the test page (the PF step writes offset 0). */
const CODE_OFFSET = 0x100n;
const STEP_TIMEOUT_MS = 5000;

/** Runs an ioctl; returns 0 or the Linux errno it failed with. */
function ioctl(call: () => unknown): number {
  try {
    call();
    return 0;
  } catch (err) {
    if (err instanceof KvmiRemoteError) return err.errno;
    throw err;
  }
}

/** Bytes of the reply data a successful command carries (fixed layouts only). */
function replyDataBytes(name: V9CommandName): number {
  return V9_COMMANDS[name].reply.layout?.size ?? 0;
}

/**
 * The selftest's receive_cmd_reply(): same id and seq, `size == 8` on error,
 * `size == 8 + expected` on success; then the expected err.
 */
function expectReply(reply: ToolReply, name: V9CommandName | number, err: number, dataBytes?: number): void {
  const id = typeof name === "number" ? name : V9_COMMANDS[name].id;
  expect(reply.id).toBe(id);
  expect(reply.err).toBe(err);
  if (err !== 0) expect(reply.size).toBe(ERROR_CODE_BYTES);
  else expect(reply.size).toBe(ERROR_CODE_BYTES + (dataBytes ?? (typeof name === "number" ? 0 : replyDataBytes(name))));
}

/** Expects the next event to be `name` with `size == 544 + payload` on vCPU 0. */
async function expectEvent(tool: WireTool, name: keyof typeof V9_EVENTS): Promise<ToolEvent> {
  const event = await tool.nextEvent(STEP_TIMEOUT_MS);
  expect(event.spec?.name).toBe(name);
  expect(event.eventId).toBe(V9_EVENTS[name].id);
  expect(event.size).toBe(EVENT_BYTES + (V9_EVENTS[name].payload?.size ?? 0));
  return event;
}

/** Encodes `name` and sets one byte of padding field `field` of its request layout. */
function withPadding(tool: WireTool, name: V9CommandName, body: Record<string, unknown>, field: string, byte = 0, vcpu?: number) {
  const spec = V9_COMMANDS[name];
  const layout = spec.request.layout;
  if (layout === null) throw new Error(`${name} has no request layout`);
  return tool.raw(pokePadding(tool.encode(name, body, vcpu), layout, field, bodyOffset(spec), byte), spec);
}

describe("KVMI v9 selftest (kvmi-abi §8) against the emulator", () => {
  let guest: Guest;
  let vcpu: Vcpu;
  let kernel: KvmiVm;
  let pair: WireToolPair;
  let tool: WireTool;
  let testGpa: bigint;
  const uuid = new Uint8Array(16).fill(0x5a);
  let features: { singlestep: number };

  const vcpuCommand = (name: V9CommandName, body: Record<string, unknown> = {}) => tool.command(name, body, 0);
  const allowEvent = (id: number, allow: 0 | 1) => kernel.allowEvent({ allow, id });
  const allowCommand = (id: number, allow: 0 | 1) => kernel.allowCommand({ allow, id });
  const enableVcpuEvent = async (id: number, enable: 0 | 1) =>
    expectReply(await vcpuCommand("KVMI_VCPU_CONTROL_EVENTS", { event_id: id, enable }), "KVMI_VCPU_CONTROL_EVENTS", 0);
  const writeCode = (bytes: number[]) => {
    expect(guest.memory.write(testGpa + CODE_OFFSET, Uint8Array.from(bytes)).ok).toBe(true);
  };

  beforeAll(async () => {
    guest = createGuest({ memoryMiB: 16, vcpus: 1, workload: false });
    vcpu = guest.vcpus[0]!;
    kernel = new KvmiVm(createGuestPort(guest));
    guest.setExitHandler(createKvmiExitHandler(kernel));
    testGpa = guest.allocator.alloc();
    guest.bootAddressSpace.map(TEST_GVA, testGpa);
    guest.start();
    pair = await createWireToolPair();
    tool = pair.tool;
  });

  afterAll(async () => {
    await pair?.close();
    await kernel?.unhook();
    await guest?.stop();
  });

  it("1. hook_introspection: EFAULT before HOOK, EINVAL, EEXIST, EPERM for always-allowed commands", async () => {
    expect(ioctl(() => kernel.allowCommand({ allow: 1, id: -1 }))).toBe(EFAULT);
    expect(ioctl(() => kernel.allowEvent({ allow: 1, id: -1 }))).toBe(EFAULT);

    expect(ioctl(() => kernel.hook({ fd: pair.kernelEnd, padding: 1, uuid }))).toBe(EINVAL);
    expect(ioctl(() => kernel.hook({ fd: null, padding: 0, uuid }))).toBe(EINVAL);
    // The failed fd left per-vCPU state behind: EEXIST until the vCPU has run once.
    expect(ioctl(() => kernel.hook({ fd: pair.kernelEnd, padding: 0, uuid }))).toBe(EEXIST);
    expect(await within(vcpu.halt(0), STEP_TIMEOUT_MS, "one vCPU entry")).toMatchObject({ status: "done" });

    expect(ioctl(() => kernel.hook({ fd: pair.kernelEnd, padding: 0, uuid }))).toBe(0);
    expect(ioctl(() => kernel.hook({ fd: pair.kernelEnd, padding: 0, uuid }))).toBe(EEXIST);

    expect(ioctl(() => allowCommand(v9Ids.KVMI_GET_VERSION, 0))).toBe(EPERM);
    expect(ioctl(() => allowCommand(v9Ids.KVMI_VM_CHECK_COMMAND, 0))).toBe(EPERM);
    expect(ioctl(() => allowCommand(v9Ids.KVMI_VM_CHECK_EVENT, 0))).toBe(EPERM);
    expect(ioctl(() => kernel.allowCommand({ allow: 2, id: -1 }))).toBe(EINVAL);
    expect(ioctl(() => allowCommand(-1, 0))).toBe(0);
    // "Disallow all" keeps exactly the three always-allowed commands (kvmi-abi §9).
    expectReply(await tool.command("KVMI_GET_VERSION"), "KVMI_GET_VERSION", 0);
    expectReply(await tool.command("KVMI_VM_CHECK_COMMAND", { id: v9Ids.KVMI_VM_GET_INFO }), "KVMI_VM_CHECK_COMMAND", W_EPERM);
    expectReply(await tool.command("KVMI_VM_GET_INFO"), "KVMI_VM_GET_INFO", W_EPERM);
    expect(ioctl(() => allowCommand(-1, 1))).toBe(0);
    expectReply(await tool.command("KVMI_VM_CHECK_COMMAND", { id: v9Ids.KVMI_VM_GET_INFO }), "KVMI_VM_CHECK_COMMAND", 0);

    expect(ioctl(() => kernel.allowEvent({ allow: 2, id: -1 }))).toBe(EINVAL);
    expect(ioctl(() => allowEvent(-1, 0))).toBe(0);
    expectReply(await tool.command("KVMI_VM_CHECK_EVENT", { id: v9Ids.KVMI_EVENT_UNHOOK }), "KVMI_VM_CHECK_EVENT", W_EPERM);
    expect(ioctl(() => allowEvent(-1, 1))).toBe(0);
    expectReply(await tool.command("KVMI_VM_CHECK_EVENT", { id: v9Ids.KVMI_EVENT_UNHOOK }), "KVMI_VM_CHECK_EVENT", 0);
  });

  it("2. test_cmd_invalid: message id 0xffff gets -KVM_ENOSYS echoing id and seq", async () => {
    const seq = tool.nextSeq();
    const reply = await tool.raw(encode(layouts.kvmiMsgHdr, { id: 0xffff, size: 0, seq }));
    expect(reply).toMatchObject({ id: 0xffff, seq, err: W_ENOSYS, size: ERROR_CODE_BYTES });
    // With a body: it is consumed first, and the stream stays in step.
    const withBody = new Uint8Array(HEADER_BYTES + 24);
    withBody.set(encode(layouts.kvmiMsgHdr, { id: 0xffff, size: 24, seq: tool.nextSeq() }));
    withBody.fill(0xee, HEADER_BYTES);
    expect((await tool.raw(withBody)).err).toBe(W_ENOSYS);
    expectReply(await tool.command("KVMI_GET_VERSION"), "KVMI_GET_VERSION", 0);
  });

  it("3. test_cmd_get_version: version 1 and the hardware features", async () => {
    const reply = await tool.command("KVMI_GET_VERSION");
    expectReply(reply, "KVMI_GET_VERSION", 0);
    expect(reply.value?.["version"]).toBe(1);
    features = reply.value?.["features"] as { singlestep: number };
    expect(features.singlestep).toBe(1);
  });

  it("4. test_cmd_vm_check_command: 0, EINVAL (padding), ENOENT (0xffff), EPERM (disallowed)", async () => {
    const name = "KVMI_VM_CHECK_COMMAND";
    expectReply(await tool.command(name, { id: v9Ids.KVMI_VM_GET_INFO }), name, 0);
    expectReply(await withPadding(tool, name, { id: v9Ids.KVMI_VM_GET_INFO }, "padding1"), name, W_EINVAL);
    expectReply(await withPadding(tool, name, { id: v9Ids.KVMI_VM_GET_INFO }, "padding2", 3), name, W_EINVAL);
    expectReply(await tool.command(name, { id: 0xffff }), name, W_ENOENT);
    allowCommand(v9Ids.KVMI_VM_GET_INFO, 0);
    expectReply(await tool.command(name, { id: v9Ids.KVMI_VM_GET_INFO }), name, W_EPERM);
    allowCommand(v9Ids.KVMI_VM_GET_INFO, 1);
    expectReply(await tool.command(name, { id: v9Ids.KVMI_VM_GET_INFO }), name, 0);
  });

  it("5. test_cmd_vm_check_event: padding checked first, ENOENT, 0, EPERM", async () => {
    const name = "KVMI_VM_CHECK_EVENT";
    expectReply(await withPadding(tool, name, { id: 0xffff }, "padding1"), name, W_EINVAL);
    expectReply(await tool.command(name, { id: 0xffff }), name, W_ENOENT);
    expectReply(await tool.command(name, { id: v9Ids.KVMI_EVENT_UNHOOK }), name, 0);
    expectReply(await withPadding(tool, name, { id: v9Ids.KVMI_EVENT_UNHOOK }, "padding2"), name, W_EINVAL);
    allowEvent(v9Ids.KVMI_EVENT_UNHOOK, 0);
    expectReply(await tool.command(name, { id: v9Ids.KVMI_EVENT_UNHOOK }), name, W_EPERM);
    allowEvent(v9Ids.KVMI_EVENT_UNHOOK, 1);
  });

  it("6. test_cmd_vm_get_info: vcpu_count == 1", async () => {
    const reply = await tool.command("KVMI_VM_GET_INFO");
    expectReply(reply, "KVMI_VM_GET_INFO", 0);
    expect(reply.value?.["vcpu_count"]).toBe(1);
  });

  it("7. test_event_unhook: PREUNHOOK sends one 544-byte UNHOOK event (the first event: seq 1)", async () => {
    const name = "KVMI_VM_CONTROL_EVENTS";
    expectReply(await tool.command(name, { event_id: v9Ids.KVMI_EVENT_UNHOOK, enable: 1 }), name, 0);
    expect(ioctl(() => kernel.preunhook())).toBe(0);
    const event = await expectEvent(tool, "KVMI_EVENT_UNHOOK");
    expect(event.size).toBe(EVENT_BYTES);
    expect(event.seq).toBe(1);
    expect(event.vcpu).toBe(0);
    expect((event.arch["regs"] as Record<string, bigint>)["rip"]).toBe(0n);
    expectReply(await tool.command(name, { event_id: v9Ids.KVMI_EVENT_UNHOOK, enable: 0 }), name, 0);
    // Disabled again: PREUNHOOK is ENOENT and nothing is sent.
    expect(ioctl(() => kernel.preunhook())).toBe(ENOENT);
    expect(await tool.noEventFor(50)).toBe(true);
  });

  it("8. test_cmd_vm_control_events: 0, EINVAL (padding, enable=2, id 0xffff), EPERM", async () => {
    const name = "KVMI_VM_CONTROL_EVENTS";
    const unhook = v9Ids.KVMI_EVENT_UNHOOK;
    expectReply(await tool.command(name, { event_id: unhook, enable: 1 }), name, 0);
    expectReply(await tool.command(name, { event_id: unhook, enable: 0 }), name, 0);
    expectReply(await withPadding(tool, name, { event_id: unhook, enable: 1 }, "padding1"), name, W_EINVAL);
    expectReply(await withPadding(tool, name, { event_id: unhook, enable: 1 }, "padding2", 2), name, W_EINVAL);
    expectReply(await tool.command(name, { event_id: unhook, enable: 2 }), name, W_EINVAL);
    expectReply(await tool.command(name, { event_id: 0xffff, enable: 1 }), name, W_EINVAL);
    // A vCPU event is not a VM event (kvmi-abi §5 notes).
    expectReply(await tool.command(name, { event_id: v9Ids.KVMI_EVENT_CR, enable: 1 }), name, W_EINVAL);
    allowEvent(unhook, 0);
    expectReply(await tool.command(name, { event_id: unhook, enable: 1 }), name, W_EPERM);
    allowEvent(unhook, 1);
  });

  it("9. test_memory_access: write/read a page, EINVAL for size 0 and padding, ENOENT past max_gfn", async () => {
    const pattern = new Uint8Array(randomBytes(PAGE_BYTES));
    expectReply(await tool.command("KVMI_VM_WRITE_PHYSICAL", { gpa: testGpa, data: pattern }), "KVMI_VM_WRITE_PHYSICAL", 0);
    const inGuest = guest.memory.read(testGpa, PAGE_BYTES);
    expect(inGuest.ok && Buffer.from(inGuest.bytes).equals(Buffer.from(pattern))).toBe(true);

    const read = await tool.command("KVMI_VM_READ_PHYSICAL", { gpa: testGpa, size: PAGE_BYTES });
    expectReply(read, "KVMI_VM_READ_PHYSICAL", 0, PAGE_BYTES);
    expect(Buffer.from(read.value?.["data"] as Uint8Array).equals(Buffer.from(pattern))).toBe(true);

    expectReply(await tool.command("KVMI_VM_READ_PHYSICAL", { gpa: testGpa, size: 0 }), "KVMI_VM_READ_PHYSICAL", W_EINVAL);
    expectReply(
      await withPadding(tool, "KVMI_VM_READ_PHYSICAL", { gpa: testGpa, size: 8 }, "padding1"),
      "KVMI_VM_READ_PHYSICAL",
      W_EINVAL,
    );
    expectReply(
      await tool.command("KVMI_VM_WRITE_PHYSICAL", { gpa: testGpa, data: new Uint8Array(0) }),
      "KVMI_VM_WRITE_PHYSICAL",
      W_EINVAL,
    );
    expectReply(
      await withPadding(tool, "KVMI_VM_WRITE_PHYSICAL", { gpa: testGpa, data: new Uint8Array(8) }, "padding2"),
      "KVMI_VM_WRITE_PHYSICAL",
      W_EINVAL,
    );
    // The rejected writes changed nothing.
    const after = guest.memory.read(testGpa, 8);
    expect(after.ok && Buffer.from(after.bytes).equals(Buffer.from(pattern.subarray(0, 8)))).toBe(true);

    const maxGfn = await tool.command("KVMI_VM_GET_MAX_GFN");
    const outside = (maxGfn.value?.["gfn"] as bigint) << 12n;
    expectReply(
      await tool.command("KVMI_VM_WRITE_PHYSICAL", { gpa: outside, data: new Uint8Array(1) }),
      "KVMI_VM_WRITE_PHYSICAL",
      W_ENOENT,
    );
    expectReply(await tool.command("KVMI_VM_READ_PHYSICAL", { gpa: outside, size: 1 }), "KVMI_VM_READ_PHYSICAL", W_ENOENT);
  });

  it("10. test_cmd_vcpu_get_info: vCPU 0 answers tsc_speed, vCPU 99 is EINVAL", async () => {
    const reply = await vcpuCommand("KVMI_VCPU_GET_INFO");
    expectReply(reply, "KVMI_VCPU_GET_INFO", 0);
    expect(reply.value?.["tsc_speed"]).toBe(vcpu.state.tscHz);
    expectReply(await tool.command("KVMI_VCPU_GET_INFO", {}, 99), "KVMI_VCPU_GET_INFO", W_EINVAL);
  });

  it("11. test_pause: two PAUSE/PAUSE_VCPU rounds, EINVAL (wait=2, padding), EPERM", async () => {
    const name = "KVMI_VCPU_PAUSE";
    for (let round = 0; round < 2; round++) {
      expectReply(await vcpuCommand(name, { wait: 1 }), name, 0);
      const event = await expectEvent(tool, "KVMI_EVENT_PAUSE_VCPU");
      expect(event.size).toBe(EVENT_BYTES);
      expect(event.vcpu).toBe(0);
      tool.reply(event, CONTINUE);
    }
    expectReply(await vcpuCommand(name, { wait: 2 }), name, W_EINVAL);
    expectReply(await withPadding(tool, name, { wait: 1 }, "padding3", 0, 0), name, W_EINVAL);
    allowEvent(v9Ids.KVMI_EVENT_PAUSE_VCPU, 0);
    expectReply(await vcpuCommand(name, { wait: 0 }), name, W_EPERM);
    allowEvent(v9Ids.KVMI_EVENT_PAUSE_VCPU, 1);
    // None of the refused pauses produced an event.
    expect(await tool.noEventFor(50)).toBe(true);
  });

  it("12. test_cmd_vcpu_control_events: 0, EINVAL (padding, enable=2, id 0xffff), EPERM", async () => {
    const name = "KVMI_VCPU_CONTROL_EVENTS";
    const id = v9Ids.KVMI_EVENT_PAUSE_VCPU;
    await enableVcpuEvent(id, 1);
    await enableVcpuEvent(id, 0);
    expectReply(await withPadding(tool, name, { event_id: id, enable: 1 }, "padding1", 0, 0), name, W_EINVAL);
    expectReply(await vcpuCommand(name, { event_id: id, enable: 2 }), name, W_EINVAL);
    expectReply(await vcpuCommand(name, { event_id: 0xffff, enable: 1 }), name, W_EINVAL);
    // UNHOOK is a VM event: not accepted here.
    expectReply(await vcpuCommand(name, { event_id: v9Ids.KVMI_EVENT_UNHOOK, enable: 1 }), name, W_EINVAL);
    allowEvent(id, 0);
    expectReply(await vcpuCommand(name, { event_id: id, enable: 1 }), name, W_EPERM);
    allowEvent(id, 1);
  });

  it("13. test_cmd_vcpu_get_registers: 472 bytes with nmsrs=0, EINVAL (padding, bad MSR, oversized)", async () => {
    const name = "KVMI_VCPU_GET_REGISTERS";
    const reply = await vcpuCommand(name, { msrs_idx: [] });
    expectReply(reply, name, 0, layouts.kvmiVcpuGetRegistersReply.size);
    expect(reply.size).toBe(ERROR_CODE_BYTES + 472);
    expect(reply.value?.["mode"]).toBe(8);
    expect((reply.value?.["regs"] as Record<string, bigint>)["rip"]).toBe(vcpu.state.regs.rip);
    expect((reply.value?.["sregs"] as Record<string, bigint>)["cr3"]).toBe(guest.bootAddressSpace.cr3);

    expectReply(await withPadding(tool, name, { msrs_idx: [] }, "padding2", 0, 0), name, W_EINVAL);
    expectReply(await vcpuCommand(name, { msrs_idx: [0xffffffff] }), name, W_EINVAL);
    // The selftest's "oversized" case resends the same request (a bug in kvmi_test.c).
    expectReply(await vcpuCommand(name, { msrs_idx: [0xffffffff] }), name, W_EINVAL);
    // The real oversized case: 482 MSRs would make a reply larger than KVMI_MSG_SIZE (kvmi-abi §4 id 11).
    const nmsrs = 482;
    const spec = V9_COMMANDS[name];
    const start = bodyOffset(spec);
    const bytes = new Uint8Array(start + layouts.kvmiVcpuGetRegisters.size + 4 * nmsrs);
    bytes.set(encode(layouts.kvmiMsgHdr, { id: spec.id, size: bytes.length - HEADER_BYTES, seq: tool.nextSeq() }));
    const view = viewOf(bytes);
    for (let i = 0; i < nmsrs; i++) view.setUint32(start + layouts.kvmiVcpuGetRegisters.size + 4 * i, 0x174, true);
    expectReply(await tool.raw(pokeField(bytes, layouts.kvmiVcpuGetRegisters, "nmsrs", start, nmsrs), spec), name, W_EINVAL);
    // 481 MSRs still fit: 8 + 472 + 16 * 481 = 8176 <= 8184.
    const fits = await vcpuCommand(name, { msrs_idx: Array.from({ length: 481 }, () => 0x174) });
    expectReply(fits, name, 0, 472 + 16 * 481);
  });

  it("14. test_cmd_vcpu_set_registers: EOPNOTSUPP outside an event, applied at the reply of a PAUSE event", async () => {
    const name = "KVMI_VCPU_SET_REGISTERS";
    const current = (await vcpuCommand("KVMI_VCPU_GET_REGISTERS", { msrs_idx: [] })).value?.["regs"] as Record<string, bigint>;
    expectReply(await vcpuCommand(name, current), name, W_EOPNOTSUPP);

    expectReply(await vcpuCommand("KVMI_VCPU_PAUSE", { wait: 1 }), "KVMI_VCPU_PAUSE", 0);
    const event = await expectEvent(tool, "KVMI_EVENT_PAUSE_VCPU");
    const regs = { ...(event.arch["regs"] as Record<string, bigint>) };
    const before = vcpu.state.regs.r15;
    expectReply(await vcpuCommand(name, { ...regs, r15: before ^ 0x5a5an }), name, 0);
    // kvmi-abi §3.4: the registers land when the reply is processed, not before.
    expect(vcpu.state.regs.r15).toBe(before);
    tool.reply(event, CONTINUE);
    await waitUntil(() => vcpu.state.regs.r15 === (before ^ 0x5a5an), STEP_TIMEOUT_MS, "SET_REGISTERS applied");
  });

  it("15. test_cmd_vcpu_get_cpuid: leaf 0 index 0", async () => {
    const reply = await vcpuCommand("KVMI_VCPU_GET_CPUID", { function: 0, index: 0 });
    expectReply(reply, "KVMI_VCPU_GET_CPUID", 0);
    expect(reply.value?.["eax"]).toBe(vcpu.state.cpuid.get(0, 0)?.eax);
  });

  it("16. test_event_hypercall: VMCALL(34, 24, 0) gives a 544-byte HYPERCALL event and RAX = 0", async () => {
    await enableVcpuEvent(v9Ids.KVMI_EVENT_HYPERCALL, 1);
    const op = vcpu.hypercall(KVM_HC_XEN_HVM_OP, KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT, 0n);
    const event = await expectEvent(tool, "KVMI_EVENT_HYPERCALL");
    expect(event.size).toBe(EVENT_BYTES);
    expect(event.payload).toBeUndefined();
    expect((event.arch["regs"] as Record<string, bigint>)["rax"]).toBe(KVM_HC_XEN_HVM_OP);
    tool.reply(event, CONTINUE);
    expect(await within(op, STEP_TIMEOUT_MS, "hypercall")).toEqual({ status: "done", value: 0n });
    expect(vcpu.state.regs.rax).toBe(0n);
    await enableVcpuEvent(v9Ids.KVMI_EVENT_HYPERCALL, 0);
    // Disabled: no event, and the guest gets -KVM_ENOSYS.
    const unconsumed = await within(vcpu.hypercall(KVM_HC_XEN_HVM_OP, KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT, 0n), STEP_TIMEOUT_MS, "hypercall");
    expect(unconsumed).toEqual({ status: "done", value: HYPERCALL_ENOSYS });
    expect(tool.queuedEvents).toBe(0);
  });

  it("17. test_event_breakpoint: gpa and insn_len, RIP += insn_len via SET_REGISTERS, RETRY", async () => {
    writeCode([INT3, NOP]);
    const gva = TEST_GVA + CODE_OFFSET;
    await enableVcpuEvent(v9Ids.KVMI_EVENT_BREAKPOINT, 1);
    const delivered = vcpu.deliveredExceptionCount;
    const op = vcpu.executeAt(gva);
    const event = await expectEvent(tool, "KVMI_EVENT_BREAKPOINT");
    expect(event.payload).toMatchObject({ gpa: testGpa + CODE_OFFSET, insn_len: 1 });
    const regs = event.arch["regs"] as Record<string, bigint>;
    expect(regs["rip"]).toBe(gva);
    const insnLen = BigInt(event.payload?.["insn_len"] as number);
    expectReply(await vcpuCommand("KVMI_VCPU_SET_REGISTERS", { ...regs, rip: regs["rip"]! + insnLen }), "KVMI_VCPU_SET_REGISTERS", 0);
    tool.reply(event, RETRY);
    const outcome = await within(op, STEP_TIMEOUT_MS, "INT3");
    // RETRY: nothing injected, the guest went on at the moved RIP (the NOP).
    expect(outcome).toMatchObject({ status: "done", value: { gva: gva + 1n, insnLen: 1 } });
    expect(vcpu.deliveredExceptionCount).toBe(delivered);
    await enableVcpuEvent(v9Ids.KVMI_EVENT_BREAKPOINT, 0);
  });

  it("18. test_cmd_vm_control_cleanup: EINVAL (padding, enable=2), 0 for enable 1 and 0", async () => {
    const name = "KVMI_VM_CONTROL_CLEANUP";
    expectReply(await withPadding(tool, name, { enable: 1 }, "padding1"), name, W_EINVAL);
    expectReply(await withPadding(tool, name, { enable: 1 }, "padding3", 3), name, W_EINVAL);
    expectReply(await tool.command(name, { enable: 2 }), name, W_EINVAL);
    expectReply(await tool.command(name, { enable: 1 }), name, 0);
    expectReply(await tool.command(name, { enable: 0 }), name, 0);
  });

  it("19. test_cmd_vcpu_control_cr: CR4.OSXSAVE write reported, blocked by new_val = old; EINVAL cases", async () => {
    const name = "KVMI_VCPU_CONTROL_CR";
    // The selftest guest starts with CR4.OSXSAVE clear; ours boots like Linux with it set.
    const start = vcpu.state.sregs.cr4;
    if ((start & X86_CR4_OSXSAVE) !== 0n) {
      expect(await within(vcpu.writeCr(4, start & ~X86_CR4_OSXSAVE), STEP_TIMEOUT_MS, "clear OSXSAVE")).toMatchObject({ status: "done" });
    }
    const old = vcpu.state.sregs.cr4;
    await enableVcpuEvent(v9Ids.KVMI_EVENT_CR, 1);
    expectReply(await vcpuCommand(name, { cr: 4, enable: 1 }), name, 0);

    const op = vcpu.writeCr(4, old | X86_CR4_OSXSAVE);
    const event = await expectEvent(tool, "KVMI_EVENT_CR");
    expect(event.payload).toEqual({ cr: 4, old_value: old, new_value: old | X86_CR4_OSXSAVE });
    tool.reply(event, CONTINUE, { new_val: event.payload?.["old_value"] });
    expect(await within(op, STEP_TIMEOUT_MS, "MOV CR4")).toEqual({ status: "done", value: old });
    expect(vcpu.state.sregs.cr4).toBe(old);

    expectReply(await vcpuCommand(name, { cr: 4, enable: 2 }), name, W_EINVAL);
    expectReply(await withPadding(tool, name, { cr: 4, enable: 1 }, "padding1", 0, 0), name, W_EINVAL);
    expectReply(await vcpuCommand(name, { cr: 99, enable: 1 }), name, W_EINVAL);

    expectReply(await vcpuCommand(name, { cr: 4, enable: 0 }), name, 0);
    await enableVcpuEvent(v9Ids.KVMI_EVENT_CR, 0);
    // Without the CR selected, the write goes straight through.
    expect(await within(vcpu.writeCr(4, start), STEP_TIMEOUT_MS, "restore CR4")).toEqual({ status: "done", value: start });
    expect(tool.queuedEvents).toBe(0);
  });

  it("20. test_cmd_vcpu_inject_exception: #UD gives TRAP nr 6; a pending #BP wins over #UD (TRAP nr 3)", async () => {
    const name = "KVMI_VCPU_INJECT_EXCEPTION";
    const delivered = vcpu.deliveredExceptionCount;
    expectReply(await vcpuCommand(name, { nr: UD_VECTOR, error_code: 0, address: 0n }), name, 0);
    const trap = await expectEvent(tool, "KVMI_EVENT_TRAP");
    expect(trap.payload?.["nr"]).toBe(UD_VECTOR);
    // One inject/TRAP pair at a time (kvmi-abi §4 id 16).
    expectReply(await vcpuCommand(name, { nr: UD_VECTOR, error_code: 0, address: 0n }), name, W_EBUSY);
    tool.reply(trap, CONTINUE);
    await waitUntil(() => vcpu.deliveredExceptionCount === delivered + 1, STEP_TIMEOUT_MS, "#UD delivered");
    expect(vcpu.deliveredExceptions.at(-1)?.nr).toBe(UD_VECTOR);

    writeCode([INT3, NOP]);
    const gva = TEST_GVA + CODE_OFFSET;
    await enableVcpuEvent(v9Ids.KVMI_EVENT_BREAKPOINT, 1);
    const op = vcpu.executeAt(gva);
    const bp = await expectEvent(tool, "KVMI_EVENT_BREAKPOINT");
    const regs = bp.arch["regs"] as Record<string, bigint>;
    expectReply(await vcpuCommand("KVMI_VCPU_SET_REGISTERS", { ...regs, rip: regs["rip"]! + 1n }), "KVMI_VCPU_SET_REGISTERS", 0);
    expectReply(await vcpuCommand(name, { nr: UD_VECTOR, error_code: 0, address: 0n }), name, 0);
    tool.reply(bp, CONTINUE); // re-injects #BP
    const trap3 = await expectEvent(tool, "KVMI_EVENT_TRAP");
    expect(trap3.payload?.["nr"]).toBe(BP_VECTOR);
    tool.reply(trap3, CONTINUE);
    expect(await within(op, STEP_TIMEOUT_MS, "INT3")).toMatchObject({ status: "exception", exception: { nr: BP_VECTOR } });
    await waitUntil(() => vcpu.deliveredExceptionCount === delivered + 2, STEP_TIMEOUT_MS, "#BP delivered");
    // One more entry: the requested #UD was dropped, not delivered late.
    await within(vcpu.halt(0), STEP_TIMEOUT_MS, "one vCPU entry");
    expect(vcpu.deliveredExceptions.slice(-2).map((e) => e.nr)).toEqual([UD_VECTOR, BP_VECTOR]);
    expect(vcpu.deliveredExceptionCount).toBe(delivered + 2);
    await enableVcpuEvent(v9Ids.KVMI_EVENT_BREAKPOINT, 0);
  });

  it("21. test_cmd_vm_get_max_gfn: 1 + highest GFN", async () => {
    const reply = await tool.command("KVMI_VM_GET_MAX_GFN");
    expectReply(reply, "KVMI_VM_GET_MAX_GFN", 0);
    expect(reply.value?.["gfn"]).toBe(guest.memory.maxGfn());
  });

  it("22. test_event_xsetbv: toggling XCR0.AVX gives an XSETBV event with its payload", async () => {
    const old = vcpu.state.xsave.xcr0;
    await enableVcpuEvent(v9Ids.KVMI_EVENT_XSETBV, 1);
    const op = vcpu.xsetbv(0, old ^ XFEATURE_MASK_YMM);
    const event = await expectEvent(tool, "KVMI_EVENT_XSETBV");
    expect(event.payload).toEqual({ xcr: 0, old_value: old, new_value: old ^ XFEATURE_MASK_YMM });
    tool.reply(event, CONTINUE);
    expect(await within(op, STEP_TIMEOUT_MS, "XSETBV")).toMatchObject({ status: "done" });
    await enableVcpuEvent(v9Ids.KVMI_EVENT_XSETBV, 0);
    await within(vcpu.xsetbv(0, old), STEP_TIMEOUT_MS, "restore XCR0");
    expect(vcpu.state.xsave.xcr0).toBe(old);
  });

  it("23. test_cmd_vcpu_get_xcr: XCR0, EINVAL (padding[6], xcr 1)", async () => {
    const name = "KVMI_VCPU_GET_XCR";
    const reply = await vcpuCommand(name, { xcr: 0 });
    expectReply(reply, name, 0);
    expect(reply.value?.["value"]).toBe(vcpu.state.xsave.xcr0);
    expectReply(await withPadding(tool, name, { xcr: 0 }, "padding", 6, 0), name, W_EINVAL);
    expectReply(await vcpuCommand(name, { xcr: 1 }), name, W_EINVAL);
  });

  it("24. test_cmd_vcpu_xsave: GET_XSAVE returns 4096 bytes, SET_XSAVE takes them back", async () => {
    const reply = await vcpuCommand("KVMI_VCPU_GET_XSAVE");
    expectReply(reply, "KVMI_VCPU_GET_XSAVE", 0, layouts.kvmXsave.size);
    const region = reply.value?.["region"] as Uint8Array;
    expect(region.length).toBe(4096);
    expectReply(await vcpuCommand("KVMI_VCPU_SET_XSAVE", { region }), "KVMI_VCPU_SET_XSAVE", 0);
  });

  it("25. test_cmd_vcpu_get_mtrr_type: the type of test_gpa", async () => {
    const reply = await vcpuCommand("KVMI_VCPU_GET_MTRR_TYPE", { gpa: testGpa });
    expectReply(reply, "KVMI_VCPU_GET_MTRR_TYPE", 0);
    expect(reply.value?.["type"]).toBe(vcpu.state.mtrrType(testGpa));
  });

  it("26. test_event_descriptor: SGDT gives write 0, LGDT gives write 1", async () => {
    await enableVcpuEvent(v9Ids.KVMI_EVENT_DESCRIPTOR, 1);
    const store = vcpu.descriptorOp("sgdt");
    const first = await expectEvent(tool, "KVMI_EVENT_DESCRIPTOR");
    expect(first.payload).toEqual({ descriptor: v9Ids.KVMI_DESC_GDTR, write: 0 });
    tool.reply(first, CONTINUE);
    const stored = await within(store, STEP_TIMEOUT_MS, "SGDT");
    expect(stored.status).toBe("done");
    const table = stored.status === "done" ? stored.value.table! : { base: 0n, limit: 0 };

    const load = vcpu.descriptorOp("lgdt", { base: table.base, limit: table.limit });
    const second = await expectEvent(tool, "KVMI_EVENT_DESCRIPTOR");
    expect(second.payload).toEqual({ descriptor: v9Ids.KVMI_DESC_GDTR, write: 1 });
    tool.reply(second, CONTINUE);
    expect(await within(load, STEP_TIMEOUT_MS, "LGDT")).toMatchObject({ status: "done" });
    await enableVcpuEvent(v9Ids.KVMI_EVENT_DESCRIPTOR, 0);
  });

  it("27. test_cmd_vcpu_control_msr: WRMSR 0x140 reported, blocked by new_val = old; EINVAL cases", async () => {
    const name = "KVMI_VCPU_CONTROL_MSR";
    await enableVcpuEvent(v9Ids.KVMI_EVENT_MSR, 1);
    expectReply(await vcpuCommand(name, { enable: 1, msr: MSR_MISC_FEATURES_ENABLES }), name, 0);
    const old = vcpu.state.msrs.read(MSR_MISC_FEATURES_ENABLES)!;
    const op = vcpu.writeMsr(MSR_MISC_FEATURES_ENABLES, old | 1n);
    const event = await expectEvent(tool, "KVMI_EVENT_MSR");
    expect(event.payload).toEqual({ msr: MSR_MISC_FEATURES_ENABLES, old_value: old, new_value: old | 1n });
    tool.reply(event, CONTINUE, { new_val: event.payload?.["old_value"] });
    expect(await within(op, STEP_TIMEOUT_MS, "WRMSR")).toEqual({ status: "done", value: old });
    expect(vcpu.state.msrs.read(MSR_MISC_FEATURES_ENABLES)).toBe(old);

    expectReply(await vcpuCommand(name, { enable: 2, msr: MSR_MISC_FEATURES_ENABLES }), name, W_EINVAL);
    expectReply(await withPadding(tool, name, { enable: 1, msr: MSR_MISC_FEATURES_ENABLES }, "padding2", 1, 0), name, W_EINVAL);
    expectReply(await vcpuCommand(name, { enable: 1, msr: 0xffffffff }), name, W_EINVAL);
    expectReply(await vcpuCommand(name, { enable: 0, msr: MSR_MISC_FEATURES_ENABLES }), name, 0);
    await enableVcpuEvent(v9Ids.KVMI_EVENT_MSR, 0);
  });

  it("28. test_cmd_vm_set_page_access: gpa 0 access 0, then access 7", async () => {
    const name = "KVMI_VM_SET_PAGE_ACCESS";
    const entry = (access: number) => ({ entries: [{ gpa: 0n, access, visible: 0 }] });
    expectReply(await tool.command(name, entry(0)), name, 0);
    expect(guest.memory.getPageAccess(0n)).toBe(0);
    expectReply(await tool.command(name, entry(7)), name, 0);
    expect(guest.memory.getPageAccess(0n)).toBe(7);
  });

  it("29. test_event_pf: a write to an R-only test page, RW granted, RETRY lands the write", async () => {
    const name = "KVMI_VM_SET_PAGE_ACCESS";
    const setAccess = (access: number) => tool.command(name, { entries: [{ gpa: testGpa, access, visible: 0 }] });
    expectReply(await setAccess(v9Ids.KVMI_PAGE_ACCESS_R), name, 0);
    await enableVcpuEvent(v9Ids.KVMI_EVENT_PF, 1);
    const data = new Uint8Array(randomBytes(16));
    const op = vcpu.writeMemory({ gva: TEST_GVA }, data);
    const event = await expectEvent(tool, "KVMI_EVENT_PF");
    expect(event.payload).toMatchObject({ gva: TEST_GVA, gpa: testGpa, access: v9Ids.KVMI_PAGE_ACCESS_W });
    const before = guest.memory.read(testGpa, data.length);
    expect(before.ok && Buffer.from(before.bytes).equals(Buffer.from(data))).toBe(false);
    expectReply(await setAccess(v9Ids.KVMI_PAGE_ACCESS_R | v9Ids.KVMI_PAGE_ACCESS_W), name, 0);
    tool.reply(event, RETRY);
    expect(await within(op, STEP_TIMEOUT_MS, "guest write")).toMatchObject({ status: "done" });
    const after = guest.memory.read(testGpa, data.length);
    expect(after.ok && Buffer.from(after.bytes).equals(Buffer.from(data))).toBe(true);
    expectReply(await setAccess(7), name, 0);
    expect(guest.memory.getPageAccess(testGpa >> 12n)).toBe(7);
    await enableVcpuEvent(v9Ids.KVMI_EVENT_PF, 0);
  });

  it("30. test_cmd_vcpu_control_singlestep: SINGLESTEP failed=0; EINVAL cases; EOPNOTSUPP without support", async () => {
    const name = "KVMI_VCPU_CONTROL_SINGLESTEP";
    expect(features.singlestep).toBe(1);
    writeCode([NOP, NOP]);
    const gva = TEST_GVA + CODE_OFFSET;
    await enableVcpuEvent(v9Ids.KVMI_EVENT_SINGLESTEP, 1);
    expectReply(await vcpuCommand(name, { enable: 1 }), name, 0);
    const op = vcpu.executeAt(gva);
    const event = await expectEvent(tool, "KVMI_EVENT_SINGLESTEP");
    expect(event.payload).toEqual({ failed: 0 });
    expectReply(await vcpuCommand(name, { enable: 0 }), name, 0);
    tool.reply(event, CONTINUE);
    expect(await within(op, STEP_TIMEOUT_MS, "stepped NOP")).toMatchObject({ status: "done", value: { gva } });
    // Stepping is off again: the next instruction runs without an event.
    expect(await within(vcpu.executeAt(gva + 1n), STEP_TIMEOUT_MS, "NOP")).toMatchObject({ status: "done" });
    expect(tool.queuedEvents).toBe(0);
    expectReply(await withPadding(tool, name, { enable: 1 }, "padding", 0, 0), name, W_EINVAL);
    expectReply(await vcpuCommand(name, { enable: 2 }), name, W_EINVAL);
    await enableVcpuEvent(v9Ids.KVMI_EVENT_SINGLESTEP, 0);

    // A host without the monitor trap flag (e.g. SVM).
    const other = createGuest({ memoryMiB: 8, vcpus: 1, workload: false });
    const otherKernel = new KvmiVm(createGuestPort(other), { features: { singlestep: false } });
    other.setExitHandler(createKvmiExitHandler(otherKernel));
    other.start();
    const otherPair = await createWireToolPair();
    try {
      otherKernel.hook({ fd: otherPair.kernelEnd, padding: 0, uuid });
      otherKernel.allowCommand({ allow: 1, id: -1 });
      otherKernel.allowEvent({ allow: 1, id: -1 });
      const version = await otherPair.tool.command("KVMI_GET_VERSION");
      expect(version.value?.["features"]).toEqual({ singlestep: 0 });
      expectReply(await otherPair.tool.command(name, { enable: 1 }, 0), name, W_EOPNOTSUPP);
    } finally {
      await otherPair.close();
      await otherKernel.unhook();
      await other.stop();
    }
  });

  it("31. test_cmd_translate_gva: test_gva -> test_gpa, -1 -> ~0", async () => {
    const name = "KVMI_VCPU_TRANSLATE_GVA";
    const mapped = await vcpuCommand(name, { gva: TEST_GVA });
    expectReply(mapped, name, 0);
    expect(mapped.value?.["gpa"]).toBe(testGpa);
    const unmapped = await vcpuCommand(name, { gva: UNMAPPED });
    expectReply(unmapped, name, 0);
    expect(unmapped.value?.["gpa"]).toBe(UNMAPPED);
  });

  it("32. unhook_introspection: UNHOOK returns 0 and the socket is shut down", async () => {
    expect(tool.unexpected).toEqual([]);
    expect(tool.eventReplyErrors).toEqual([]);
    await within(kernel.unhook(), STEP_TIMEOUT_MS, "UNHOOK");
    expect(kernel.isHooked).toBe(false);
    await within(tool.closed, STEP_TIMEOUT_MS, "socket shutdown");
    // UNHOOK is 0 even when not hooked (kvmi-abi §2.4).
    await within(kernel.unhook(), STEP_TIMEOUT_MS, "second UNHOOK");
  });
});
