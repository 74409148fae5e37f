// SPDX-License-Identifier: Apache-2.0
/**
 * The emulated v9 kernel's receive thread against a codec-only tool over a real UNIX socket:
 * what closes the channel (kvmi-abi §2.7), what is answered and kept open (§2.9, §3.1), the one
 * event per vCPU rule (§3.3, §10), the ioctl errors outside the selftest's path (§2.4), and what
 * a tool disconnect leaves behind until UNHOOK (§2.8).
 */
import { afterEach, describe, expect, it } from "vitest";
import { KvmiRemoteError } from "@kvmi/kvm-bridge";
import { createGuest, createGuestPort, createKvmiExitHandler, KvmiVm } from "@kvmi/kvm-bridge/emulator";
import type { Guest, HostFeatures, Vcpu } from "@kvmi/kvm-bridge/emulator";
import { encode, errno, HEADER_BYTES, layouts, v9Ids, V9_COMMANDS, V9_EVENTS } from "@kvmi/kvm-bridge/wire";
import { bodyOffset, createWireToolPair, pokeField, pokePadding, waitUntil, within } from "../support/wire-tool.js";
import type { ToolEvent, WireTool, WireToolPair } from "../support/wire-tool.js";

const EPERM = 1;
const ENOENT = 2;
const EFAULT = 14;
const EEXIST = 17;

const CONTINUE = 0;
const RETRY = 1;
const CRASH = 2;
const WAIT_MS = 3000;
/** How long "nothing happens" is watched for. */
const QUIET_MS = 100;

const X86_CR4_PGE = 1n << 7n;
const KVM_HC_XEN_HVM_OP = 34n;
const KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT = 24n;

interface Hooked {
  readonly guest: Guest;
  readonly vcpu: Vcpu;
  readonly kernel: KvmiVm;
  readonly pair: WireToolPair;
  readonly tool: WireTool;
}

interface HookOptions {
  readonly vcpus?: number;
  readonly workload?: boolean;
  readonly start?: boolean;
  readonly features?: Partial<HostFeatures>;
}

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A guest, its kernel hooked to a fresh socket pair with everything allowed (what QEMU does by default). */
async function hooked(options: HookOptions = {}): Promise<Hooked> {
  const guest = createGuest({ memoryMiB: 16, vcpus: options.vcpus ?? 1, workload: options.workload ?? false });
  const kernel = new KvmiVm(createGuestPort(guest), options.features ? { features: options.features } : {});
  guest.setExitHandler(createKvmiExitHandler(kernel));
  if (options.start !== false) guest.start();
  const pair = await createWireToolPair();
  kernel.hook({ fd: pair.kernelEnd, padding: 0, uuid: new Uint8Array(16) });
  kernel.allowCommand({ allow: 1, id: -1 });
  kernel.allowEvent({ allow: 1, id: -1 });
  cleanups.push(async () => {
    await pair.close();
    await kernel.unhook();
    await guest.stop();
  });
  return { guest, vcpu: guest.vcpus[0]!, kernel, pair, tool: pair.tool };
}

function ioctl(call: () => unknown): number {
  try {
    call();
    return 0;
  } catch (err) {
    if (err instanceof KvmiRemoteError) return err.errno;
    throw err;
  }
}

/** The kernel shut the socket down; the per-VM state stays until UNHOOK (kvmi-abi §2.8 step 3). */
async function expectClosedByKernel(h: Hooked): Promise<void> {
  await within(h.tool.closed, WAIT_MS, "kernel closing the socket");
  expect(h.kernel.isHooked).toBe(true);
  const other = await createWireToolPair();
  cleanups.push(() => other.close());
  expect(ioctl(() => h.kernel.hook({ fd: other.kernelEnd, padding: 0, uuid: new Uint8Array(16) }))).toBe(EEXIST);
}

/** Pauses vCPU `index` and returns its PAUSE_VCPU event. */
async function pauseEvent(tool: WireTool, index = 0): Promise<ToolEvent> {
  expect((await tool.command("KVMI_VCPU_PAUSE", { wait: 1 }, index)).err).toBe(0);
  const event = await tool.nextEvent(WAIT_MS);
  expect(event.spec?.name).toBe("KVMI_EVENT_PAUSE_VCPU");
  expect(event.vcpu).toBe(index);
  return event;
}

async function enable(tool: WireTool, event: number, index = 0): Promise<void> {
  expect((await tool.command("KVMI_VCPU_CONTROL_EVENTS", { event_id: event, enable: 1 }, index)).err).toBe(0);
}

/** Returns `message` with `kvmi_msg_hdr.size` set to `size`. */
function withHdrSize(message: Uint8Array, size: number): Uint8Array {
  return pokeField(message, layouts.kvmiMsgHdr, "size", 0, size);
}

describe("emulated kernel: what closes the channel (kvmi-abi §2.7)", () => {
  it("a header announcing 8185 body bytes closes the socket", async () => {
    const h = await hooked();
    h.tool.send(encode(layouts.kvmiMsgHdr, { id: v9Ids.KVMI_GET_VERSION, size: 8185, seq: h.tool.nextSeq() }));
    await expectClosedByKernel(h);
  });

  it("WRITE_PHYSICAL shorter than 16 + size closes the socket", async () => {
    const h = await hooked();
    const spec = V9_COMMANDS.KVMI_VM_WRITE_PHYSICAL;
    const gpa = h.guest.allocator.alloc();
    // size says 32 but only 16 data bytes follow.
    const message = h.tool.encode("KVMI_VM_WRITE_PHYSICAL", { gpa, data: new Uint8Array(16).fill(0xab) });
    h.tool.send(pokeField(message, layouts.kvmiVmWritePhysical, "size", bodyOffset(spec), 32));
    await expectClosedByKernel(h);
    const page = h.guest.memory.read(gpa, 16);
    expect(page.ok && page.bytes.every((b) => b === 0)).toBe(true);
  });

  it("WRITE_PHYSICAL whose fixed part is cut short closes the socket (16 + size > message)", async () => {
    const h = await hooked();
    const message = h.tool.encode("KVMI_VM_WRITE_PHYSICAL", { gpa: 0x100000n, data: new Uint8Array(0) });
    const cut = layouts.kvmiVmWritePhysical.size / 2;
    h.tool.send(withHdrSize(message.subarray(0, HEADER_BYTES + cut), cut));
    await expectClosedByKernel(h);
  });

  it("GET_REGISTERS with a truncated msrs_idx array closes the socket", async () => {
    const h = await hooked();
    const message = h.tool.encode("KVMI_VCPU_GET_REGISTERS", { msrs_idx: [0x174, 0x175] }, 0);
    // nmsrs stays 2, the second index is cut off.
    h.tool.send(withHdrSize(message.subarray(0, message.length - 4), message.length - 4 - HEADER_BYTES));
    await expectClosedByKernel(h);
  });

  it("GET_REGISTERS carrying only the vCPU header closes the socket (8 + 8 + 4 * nmsrs > message)", async () => {
    const h = await hooked();
    const message = h.tool.encode("KVMI_VCPU_GET_REGISTERS", { msrs_idx: [] }, 0);
    const vcpuOnly = layouts.kvmiVcpuHdr.size;
    h.tool.send(withHdrSize(message.subarray(0, HEADER_BYTES + vcpuOnly), vcpuOnly));
    await expectClosedByKernel(h);
  });

  it("SET_XSAVE shorter than the vCPU header closes the socket", async () => {
    const h = await hooked();
    const message = h.tool.encode("KVMI_VCPU_SET_XSAVE", { region: new Uint8Array(0) }, 0);
    const short = layouts.kvmiVcpuHdr.size / 2;
    h.tool.send(withHdrSize(message.subarray(0, HEADER_BYTES + short), short));
    await expectClosedByKernel(h);
  });

  it("an unsolicited event reply closes the socket", async () => {
    const h = await hooked();
    expect((await h.tool.command("KVMI_GET_VERSION")).err).toBe(0);
    h.tool.reply({ spec: V9_EVENTS.KVMI_EVENT_PAUSE_VCPU, seq: 1, vcpu: 0 }, CONTINUE);
    await expectClosedByKernel(h);
  });

  it("an event reply with the wrong seq closes the socket and the blocked vCPU continues", async () => {
    const h = await hooked();
    await enable(h.tool, v9Ids.KVMI_EVENT_HYPERCALL);
    const op = h.vcpu.hypercall(KVM_HC_XEN_HVM_OP, KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT, 0n);
    const event = await h.tool.nextEvent(WAIT_MS);
    expect(event.spec?.name).toBe("KVMI_EVENT_HYPERCALL");
    h.tool.reply({ ...event, seq: event.seq + 1 }, CONTINUE);
    await expectClosedByKernel(h);
    expect((await within(op, WAIT_MS, "released hypercall")).status).toBe("done");
  });

  it("RETRY to a CR event (CONTINUE and CRASH only) closes the socket; the write goes through", async () => {
    const h = await hooked();
    await enable(h.tool, v9Ids.KVMI_EVENT_CR);
    expect((await h.tool.command("KVMI_VCPU_CONTROL_CR", { cr: 4, enable: 1 }, 0)).err).toBe(0);
    const target = h.vcpu.state.sregs.cr4 ^ X86_CR4_PGE;
    const op = h.vcpu.writeCr(4, target);
    const event = await h.tool.nextEvent(WAIT_MS);
    expect(event.spec?.name).toBe("KVMI_EVENT_CR");
    h.tool.reply(event, RETRY, { new_val: event.payload?.["old_value"] });
    await expectClosedByKernel(h);
    // Released as CONTINUE without reply data (kvmi-abi §2.8): the guest's own value is loaded.
    expect(await within(op, WAIT_MS, "released MOV CR4")).toEqual({ status: "done", value: target });
  });

  it("an unknown action value closes the socket", async () => {
    const h = await hooked();
    const event = await pauseEvent(h.tool);
    h.tool.reply(event, 3);
    await expectClosedByKernel(h);
  });

  it("non-zero kvmi_event_reply padding closes the socket", async () => {
    const h = await hooked();
    const event = await pauseEvent(h.tool);
    const base = HEADER_BYTES + layouts.kvmiVcpuHdr.size;
    h.tool.send(pokePadding(h.tool.encodeReply(event, CONTINUE), layouts.kvmiEventReply, "padding2", base, 3));
    await expectClosedByKernel(h);
  });

  it("event reply data larger than the event expects closes the socket", async () => {
    const h = await hooked();
    const event = await pauseEvent(h.tool);
    const reply = h.tool.encodeReply(event, CONTINUE);
    const longer = new Uint8Array(reply.length + layouts.kvmiEventCrReply.size);
    longer.set(reply);
    h.tool.send(withHdrSize(longer, longer.length - HEADER_BYTES));
    await expectClosedByKernel(h);
  });

  it("after the kernel closed the socket no event is sent and restrictions stay until UNHOOK (§2.8)", async () => {
    const h = await hooked();
    const gpa = h.guest.allocator.alloc();
    const gfn = gpa >> 12n;
    const setAccess = await h.tool.command("KVMI_VM_SET_PAGE_ACCESS", { entries: [{ gpa, access: 1, visible: 0 }] });
    expect(setAccess.err).toBe(0);
    await enable(h.tool, v9Ids.KVMI_EVENT_PF);
    h.tool.send(encode(layouts.kvmiMsgHdr, { id: 1, size: 8185, seq: h.tool.nextSeq() }));
    await expectClosedByKernel(h);
    expect(h.guest.memory.getPageAccess(gfn)).toBe(1);
    // The write to the restricted page no longer raises an event: it just completes.
    expect(await within(h.vcpu.writeMemory({ gpa }, new Uint8Array([1, 2, 3])), WAIT_MS, "write")).toMatchObject({ status: "done" });
    await within(h.kernel.unhook(), WAIT_MS, "UNHOOK");
    expect(h.guest.memory.getPageAccess(gfn)).toBe(7);
  });
});

describe("emulated kernel: answered and kept open (kvmi-abi §2.9, §3.1)", () => {
  it("an unknown id is answered -KVM_ENOSYS echoing id and seq, after consuming an 8184-byte body", async () => {
    const h = await hooked();
    const seq = h.tool.nextSeq();
    const message = new Uint8Array(HEADER_BYTES + 8184).fill(0x77);
    message.set(encode(layouts.kvmiMsgHdr, { id: 0xbeef, size: 8184, seq }));
    expect(await h.tool.raw(message)).toMatchObject({ id: 0xbeef, seq, err: -errno.KVM_ENOSYS, size: 8 });
    // In v9 the id space ends at 25: 26 is unknown too.
    expect((await h.tool.raw(encode(layouts.kvmiMsgHdr, { id: 26, size: 0, seq: h.tool.nextSeq() }))).err).toBe(-errno.KVM_ENOSYS);
    expect((await h.tool.command("KVMI_GET_VERSION")).err).toBe(0);
    expect(h.tool.isSocketClosed).toBe(false);
  });

  it("counts every frame it takes off the socket by message id, refused ones included (receivedFrames)", async () => {
    const h = await hooked();
    expect(h.kernel.receivedFrames(v9Ids.KVMI_GET_VERSION)).toBe(0);
    await h.tool.command("KVMI_GET_VERSION");
    await h.tool.command("KVMI_GET_VERSION");
    h.kernel.allowCommand({ allow: 0, id: v9Ids.KVMI_VM_GET_INFO });
    expect((await h.tool.command("KVMI_VM_GET_INFO")).err).toBe(-errno.KVM_EPERM);
    expect((await h.tool.raw(encode(layouts.kvmiMsgHdr, { id: 26, size: 0, seq: h.tool.nextSeq() }))).err).toBe(-errno.KVM_ENOSYS);
    expect(h.kernel.receivedFrames(v9Ids.KVMI_GET_VERSION)).toBe(2);
    expect(h.kernel.receivedFrames(v9Ids.KVMI_VM_GET_INFO)).toBe(1);
    expect(h.kernel.receivedFrames(26)).toBe(1);
    expect(h.kernel.receivedFrames(v9Ids.KVMI_VM_READ_PHYSICAL)).toBe(0);
  });

  it("a disallowed command is -KVM_EPERM; event replies are accepted whatever the mask", async () => {
    const h = await hooked();
    const event = await pauseEvent(h.tool);
    h.kernel.allowCommand({ allow: 0, id: -1 });
    const refused = await h.tool.command("KVMI_VM_GET_INFO");
    expect(refused).toMatchObject({ id: v9Ids.KVMI_VM_GET_INFO, err: -errno.KVM_EPERM, size: 8 });
    expect((await h.tool.command("KVMI_VCPU_GET_INFO", {}, 0)).err).toBe(-errno.KVM_EPERM);
    h.tool.reply(event, CONTINUE);
    h.kernel.allowCommand({ allow: 1, id: -1 });
    // The reply was taken: the vCPU is free to send the next PAUSE_VCPU event.
    const next = await pauseEvent(h.tool);
    expect(next.seq).toBe(event.seq + 1);
    h.tool.reply(next, CONTINUE);
    expect(h.tool.eventReplyErrors).toEqual([]);
    expect(h.tool.isSocketClosed).toBe(false);
  });

  it("a vCPU index >= the vCPU count is -KVM_EINVAL, for jobs, VCPU_PAUSE and event replies", async () => {
    const h = await hooked({ vcpus: 2 });
    expect((await h.tool.command("KVMI_VCPU_GET_INFO", {}, 1)).err).toBe(0);
    expect(await h.tool.command("KVMI_VCPU_GET_INFO", {}, 2)).toMatchObject({ err: -errno.KVM_EINVAL, size: 8 });
    expect((await h.tool.command("KVMI_VCPU_PAUSE", { wait: 1 }, 2)).err).toBe(-errno.KVM_EINVAL);
    expect((await h.tool.command("KVMI_VCPU_CONTROL_EVENTS", { event_id: 2, enable: 1 }, 0xffff)).err).toBe(-errno.KVM_EINVAL);
    // Non-zero kvmi_vcpu_hdr padding is EINVAL at dispatch too.
    const spec = V9_COMMANDS.KVMI_VCPU_GET_INFO;
    const padded = pokePadding(h.tool.encode("KVMI_VCPU_GET_INFO", {}, 0), layouts.kvmiVcpuHdr, "padding1", HEADER_BYTES);
    expect((await h.tool.raw(padded, spec)).err).toBe(-errno.KVM_EINVAL);
  });

  it("an event reply for a bad vCPU is answered with an id-0, size-8 error and the event stays pending", async () => {
    const h = await hooked();
    const event = await pauseEvent(h.tool);
    h.tool.reply({ ...event, vcpu: 7 }, CONTINUE);
    const padded = pokePadding(h.tool.encodeReply(event, CONTINUE), layouts.kvmiVcpuHdr, "padding2", HEADER_BYTES);
    h.tool.send(padded);
    await waitUntil(() => h.tool.eventReplyErrors.length === 2, WAIT_MS, "two event-reply errors");
    expect(h.tool.eventReplyErrors).toEqual([
      { seq: event.seq, err: -errno.KVM_EINVAL },
      { seq: event.seq, err: -errno.KVM_EINVAL },
    ]);
    expect(h.tool.received.filter((m) => m.id === 0 && m.size === 8)).toHaveLength(2);
    // Still waiting: SET_REGISTERS is accepted only while an event is pending.
    const regs = event.arch["regs"] as Record<string, bigint>;
    expect((await h.tool.command("KVMI_VCPU_SET_REGISTERS", regs, 0)).err).toBe(0);
    h.tool.reply(event, CONTINUE);
    await waitUntil(() => !h.kernel.vcpu(0)!.isWaitingForReply, WAIT_MS, "event completed");
    expect((await h.tool.command("KVMI_VCPU_SET_REGISTERS", regs, 0)).err).toBe(-errno.KVM_EOPNOTSUPP);
    expect(h.tool.isSocketClosed).toBe(false);
  });

  it("a vCPU not started yet (KVM_MP_STATE_UNINITIALIZED) is -KVM_EAGAIN, but VCPU_PAUSE never is", async () => {
    // With the workload, APs wait for INIT/SIPI; the guest is not started, so vCPU 1 stays uninitialized.
    const h = await hooked({ vcpus: 2, workload: true, start: false });
    expect(h.guest.vcpus[1]!.state.initialized).toBe(false);
    expect(await h.tool.command("KVMI_VCPU_GET_INFO", {}, 1)).toMatchObject({ err: -errno.KVM_EAGAIN, size: 8 });
    expect((await h.tool.command("KVMI_VCPU_CONTROL_EVENTS", { event_id: 2, enable: 1 }, 1)).err).toBe(-errno.KVM_EAGAIN);
    // VCPU_PAUSE is handled by the receive thread: no EAGAIN (kvmi-abi §4 id 9, §10).
    expect((await h.tool.command("KVMI_VCPU_PAUSE", { wait: 0 }, 1)).err).toBe(0);
  });

  it("SET_XSAVE with more than 4096 bytes is -KVM_EINVAL", async () => {
    const h = await hooked();
    const region = new Uint8Array(layouts.kvmXsave.size + 4);
    const spec = V9_COMMANDS.KVMI_VCPU_SET_XSAVE;
    const message = new Uint8Array(bodyOffset(spec) + region.length);
    message.set(encode(layouts.kvmiMsgHdr, { id: spec.id, size: message.length - HEADER_BYTES, seq: h.tool.nextSeq() }));
    expect((await h.tool.raw(message, spec)).err).toBe(-errno.KVM_EINVAL);
  });

  it("SET_PAGE_ACCESS with a count larger than the message is -KVM_EINVAL, not a close", async () => {
    const h = await hooked();
    const spec = V9_COMMANDS.KVMI_VM_SET_PAGE_ACCESS;
    const message = h.tool.encode("KVMI_VM_SET_PAGE_ACCESS", { entries: [{ gpa: 0n, access: 7, visible: 0 }] });
    const reply = await h.tool.raw(pokeField(message, layouts.kvmiVmSetPageAccess, "count", bodyOffset(spec), 2), spec);
    expect(reply.err).toBe(-errno.KVM_EINVAL);
    expect((await h.tool.command("KVMI_GET_VERSION")).err).toBe(0);
  });
});

describe("emulated kernel: events (kvmi-abi §3.3, §10)", () => {
  it("a vCPU never has a second event outstanding; the next one follows the reply", async () => {
    const h = await hooked();
    await enable(h.tool, v9Ids.KVMI_EVENT_HYPERCALL);
    const first = h.vcpu.hypercall(KVM_HC_XEN_HVM_OP, KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT, 0n);
    const second = h.vcpu.hypercall(KVM_HC_XEN_HVM_OP, KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT, 0n);
    const event = await h.tool.nextEvent(WAIT_MS);
    expect(event.spec?.name).toBe("KVMI_EVENT_HYPERCALL");
    // A pause and an injection requested while blocked: answered (jobs run), but no second event yet.
    expect((await h.tool.command("KVMI_VCPU_PAUSE", { wait: 1 }, 0)).err).toBe(0);
    expect((await h.tool.command("KVMI_VCPU_INJECT_EXCEPTION", { nr: 6, error_code: 0, address: 0n }, 0)).err).toBe(0);
    expect(await h.tool.noEventFor(QUIET_MS)).toBe(true);
    h.tool.reply(event, CONTINUE);
    expect((await within(first, WAIT_MS, "first hypercall")).status).toBe("done");
    // Then one at a time: TRAP first (high priority), then PAUSE_VCPU, then the second hypercall.
    const order: string[] = [];
    for (let i = 0; i < 3; i++) {
      const next = await h.tool.nextEvent(WAIT_MS);
      order.push(next.spec!.name);
      expect(await h.tool.noEventFor(20)).toBe(true);
      h.tool.reply(next, CONTINUE);
    }
    expect(order).toEqual(["KVMI_EVENT_TRAP", "KVMI_EVENT_PAUSE_VCPU", "KVMI_EVENT_HYPERCALL"]);
    expect((await within(second, WAIT_MS, "second hypercall")).status).toBe("done");
  });

  it("PAUSE_VCPU goes out only after every queued vCPU command has run (§3.3)", async () => {
    const h = await hooked();
    const socket = h.tool.socket;
    // One write: the receive thread queues all the jobs before the vCPU gets to run.
    socket.cork();
    const before = [0, 1, 2].map(() => h.tool.command("KVMI_VCPU_GET_INFO", {}, 0));
    const pause = h.tool.command("KVMI_VCPU_PAUSE", { wait: 1 }, 0);
    const after = [0, 1].map(() => h.tool.command("KVMI_VCPU_GET_INFO", {}, 0));
    socket.uncork();
    for (const reply of await Promise.all([...before, pause, ...after])) expect(reply.err).toBe(0);
    const event = await h.tool.nextEvent(WAIT_MS);
    expect(event.spec?.name).toBe("KVMI_EVENT_PAUSE_VCPU");
    const order = h.tool.received.map((m) => (m.id === 0 ? "event" : m.id));
    expect(order.lastIndexOf(v9Ids.KVMI_VCPU_GET_INFO)).toBeLessThan(order.indexOf("event"));
    h.tool.reply(event, CONTINUE);
  });

  it("vCPU commands wait while the VM is stopped; VM commands do not (§2.5)", async () => {
    const h = await hooked();
    await h.guest.stop();
    const job = h.tool.command("KVMI_VCPU_GET_INFO", {}, 0, WAIT_MS);
    let answered = false;
    void job.then(() => (answered = true));
    expect((await h.tool.command("KVMI_VM_GET_INFO")).err).toBe(0);
    await new Promise((resolve) => setTimeout(resolve, QUIET_MS));
    expect(answered).toBe(false);
    h.guest.resume();
    expect((await within(job, WAIT_MS, "job after resume")).err).toBe(0);
  });

  it("different vCPUs can have events outstanding at the same time", async () => {
    const h = await hooked({ vcpus: 2 });
    const a = await pauseEvent(h.tool, 0);
    const b = await pauseEvent(h.tool, 1);
    expect(new Set([a.vcpu, b.vcpu])).toEqual(new Set([0, 1]));
    expect(b.seq).toBe(a.seq + 1);
    h.tool.reply(b, CONTINUE);
    h.tool.reply(a, CONTINUE);
    await waitUntil(
      () => !h.kernel.vcpu(0)!.isWaitingForReply && !h.kernel.vcpu(1)!.isWaitingForReply,
      WAIT_MS,
      "both replies processed",
    );
  });

  it("event seqs come from the kernel's own counter (first event 1), independent of the tool's", async () => {
    const h = await hooked();
    const first = await pauseEvent(h.tool);
    expect(first.seq).toBe(1);
    h.tool.reply(first, CONTINUE);
    const second = await pauseEvent(h.tool);
    expect(second.seq).toBe(2);
    h.tool.reply(second, CONTINUE);
  });

  it("CRASH kills the VM (v9: SIGTERM to every vCPU thread)", async () => {
    const h = await hooked();
    const event = await pauseEvent(h.tool);
    h.tool.reply(event, CRASH);
    await waitUntil(() => h.guest.runState === "crashed", WAIT_MS, "guest crashed");
  });
});

describe("emulated kernel: ioctls and host features (kvmi-abi §2.4, §4)", () => {
  it("with kvm.introspection off every ioctl is EPERM", () => {
    const guest = createGuest({ memoryMiB: 8, vcpus: 1, workload: false });
    const kernel = new KvmiVm(createGuestPort(guest), { introspectionEnabled: false });
    expect(ioctl(() => kernel.hook({ fd: null, padding: 0, uuid: new Uint8Array(16) }))).toBe(EPERM);
    expect(ioctl(() => kernel.allowCommand({ allow: 1, id: -1 }))).toBe(EPERM);
    expect(ioctl(() => kernel.allowEvent({ allow: 1, id: -1 }))).toBe(EPERM);
    expect(ioctl(() => kernel.preunhook())).toBe(EPERM);
    return expect(kernel.unhook()).rejects.toMatchObject({ errno: EPERM });
  });

  it("argument checks come before the hooked check; PREUNHOOK unhooked is EFAULT, without UNHOOK enabled ENOENT", async () => {
    const guest = createGuest({ memoryMiB: 8, vcpus: 1, workload: false });
    const kernel = new KvmiVm(createGuestPort(guest));
    expect(ioctl(() => kernel.allowCommand({ allow: 1, id: 26 }))).toBe(22);
    expect(ioctl(() => kernel.allowCommand({ allow: 1, id: -2 }))).toBe(22);
    expect(ioctl(() => kernel.allowEvent({ allow: 1, id: 11 }))).toBe(22);
    expect(ioctl(() => kernel.allowCommand({ allow: 1, id: 25 }))).toBe(EFAULT);
    expect(ioctl(() => kernel.preunhook())).toBe(EFAULT);
    await kernel.unhook(); // 0 even when not hooked
    const h = await hooked();
    expect(ioctl(() => h.kernel.preunhook())).toBe(ENOENT);
  });

  it("DESCRIPTOR without descriptor exits is EOPNOTSUPP; BREAKPOINT while userspace holds #BP is EBUSY", async () => {
    const h = await hooked({ features: { descriptorExits: false, userspaceBreakpoints: true } });
    const control = (event_id: number) => h.tool.command("KVMI_VCPU_CONTROL_EVENTS", { event_id, enable: 1 }, 0);
    expect((await control(v9Ids.KVMI_EVENT_DESCRIPTOR)).err).toBe(-errno.KVM_EOPNOTSUPP);
    expect((await control(v9Ids.KVMI_EVENT_BREAKPOINT)).err).toBe(-errno.KVM_EBUSY);
    expect((await control(v9Ids.KVMI_EVENT_HYPERCALL)).err).toBe(0);
  });
});
