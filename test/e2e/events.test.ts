// SPDX-License-Identifier: Apache-2.0
/**
 * Every vCPU event type through the Session stream, end to end: the test drives the emulated guest
 * directly (`vm.guest.vcpus[i]` operations, no workload) so that each event is deterministic, the
 * controller answers on the stream, and the effect of the answer is checked in the guest: CONTINUE
 * (with `new_val` for CR and MSR), RETRY (after moving RIP with EventReply.registers, after
 * granting the access with SetPageAccess), and CRASH (the VM dies and its session ends
 * UNAVAILABLE). Replies an event type does not accept come back as ReplyRejected and the event
 * stays pending.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DescriptorType, EventType, State } from "@kvmi/proto";
import type { Event } from "@kvmi/proto";
import { errno, eventByKind } from "@kvmi/kvm-bridge/wire";
import type { Vcpu } from "@kvmi/kvm-bridge/emulator";
import {
  CONTINUE,
  E2E_DIALECT,
  CRASH,
  GrpcStatus,
  inlineFailure,
  RETRY,
  Role,
  settle,
  startHarness,
  streamFailure,
  waitUntil,
} from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";

const MAIN = 0;
const CRASHER = 1;
const MSR_LSTAR = 0xc0000082;
const INT3 = 0xcc;
const NOP = 0x90;
/** Code and data pages in low RAM (the boot page tables live above 1 MiB). */
const BP_GPA = 0x30000n;
const CODE_GPA = 0x31000n;
const PF_GPA = 0x40000n;

let h: Harness;
let ctl: SessionClient;

const vcpu = (n: number, i = MAIN): Vcpu => h.vms[i]!.guest.vcpus[n]!;
const vcpuName = (n: number, i = MAIN): string => h.vcpuName(i, n);

async function enable(session: SessionClient, type: EventType, n: number, i = MAIN, on = true): Promise<void> {
  await session.ok({ case: "controlVcpuEvents", value: { name: vcpuName(n, i), event: type, enable: on } });
}

/** Expects a ReplyRejected for (vcpu, seq) with `code` and `reason`; returns the decoded status. */
async function expectRejected(session: SessionClient, event: Event, code: GrpcStatus, reason: string) {
  const rejected = await session.next("replyRejected", (r) => r.vcpu === event.vcpu && r.seq === event.seq);
  const details = inlineFailure(rejected.status!);
  expect(details).toMatchObject({ code, reason });
  return details;
}

function bytesAt(i: number, gpa: bigint, length: number): number[] {
  const read = h.vms[i]!.guest.memory.read(gpa, length);
  if (!read.ok) throw new Error(`no guest memory at 0x${gpa.toString(16)}`);
  return [...read.bytes];
}

beforeAll(async () => {
  h = await startHarness({ vms: 2 });
  ctl = await h.attach(MAIN, Role.CONTROLLER);
  // Code for the breakpoint and single-step tests: INT3; NOP at BP_GPA, NOPs at CODE_GPA.
  h.vms[MAIN]!.guest.memory.write(BP_GPA, Uint8Array.of(NOP, NOP, NOP, NOP));
  h.vms[MAIN]!.guest.memory.write(CODE_GPA, new Uint8Array(16).fill(NOP));
});

afterAll(async () => {
  await h?.stop();
});

describe("CR", () => {
  beforeAll(async () => {
    await enable(ctl, EventType.CR, 0);
    await ctl.ok({ case: "controlCr", value: { name: vcpuName(0), cr: 3, enable: true } });
  });

  it("CONTINUE with new_val = old_value blocks the write: CR3 stays unchanged", async () => {
    const old = vcpu(0).state.sregs.cr3;
    const write = vcpu(0).writeCr(3, old + 0x1000n);
    const event = await ctl.event((e) => e.type === EventType.CR);
    expect(event).toMatchObject({ vcpu: 0, name: vcpuName(0), vm: h.vmName(MAIN) });
    expect(event.payload).toMatchObject({ case: "cr", value: { cr: 3, oldValue: old, newValue: old + 0x1000n } });
    expect(event.arch?.sregs?.cr3).toBe(old);
    expect(event.replyDeadline).toBeDefined();
    ctl.reply(event, CONTINUE, { newVal: old });
    expect(await settle(write, "MOV CR3")).toEqual({ status: "done", value: old });
    expect(vcpu(0).state.sregs.cr3).toBe(old);
  });

  it("CONTINUE without new_val lets the guest's value through; with another new_val the CR gets that", async () => {
    const old = vcpu(0).state.sregs.cr3;
    const write = vcpu(0).writeCr(3, old + 0x2000n);
    ctl.reply(await ctl.event((e) => e.type === EventType.CR), CONTINUE);
    expect(await settle(write, "MOV CR3")).toEqual({ status: "done", value: old + 0x2000n });
    expect(vcpu(0).state.sregs.cr3).toBe(old + 0x2000n);

    const back = vcpu(0).writeCr(3, old + 0x3000n);
    const event = await ctl.event((e) => e.type === EventType.CR);
    expect(event.payload.value).toMatchObject({ oldValue: old + 0x2000n, newValue: old + 0x3000n });
    ctl.reply(event, CONTINUE, { newVal: old });
    expect(await settle(back, "MOV CR3")).toEqual({ status: "done", value: old });
    expect(vcpu(0).state.sregs.cr3).toBe(old);
  });

  it("RETRY is not accepted by CR events: ReplyRejected INVALID_ARGUMENT, the event stays pending", async () => {
    const old = vcpu(0).state.sregs.cr3;
    const write = vcpu(0).writeCr(3, old + 0x4000n);
    const event = await ctl.event((e) => e.type === EventType.CR);
    ctl.reply(event, RETRY);
    const details = await expectRejected(ctl, event, GrpcStatus.INVALID_ARGUMENT, "KVMI_INVALID_ARGUMENT");
    expect(details.fieldViolations).toEqual([expect.objectContaining({ field: "action" })]);
    expect(vcpu(0).currentExit).toBe("crWrite");
    ctl.reply(event, CONTINUE, { newVal: old });
    expect(await settle(write, "MOV CR3")).toEqual({ status: "done", value: old });
  });
});

describe("MSR", () => {
  beforeAll(async () => {
    await enable(ctl, EventType.MSR, 1);
    await ctl.ok({ case: "controlMsr", value: { name: vcpuName(1), msr: MSR_LSTAR, enable: true } });
  });

  it("CONTINUE with new_val = old_value blocks the WRMSR; without new_val it goes through", async () => {
    const old = vcpu(1).state.msrs.read(MSR_LSTAR)!;
    const blocked = vcpu(1).writeMsr(MSR_LSTAR, 0xffffffff81234560n);
    const event = await ctl.event((e) => e.type === EventType.MSR);
    expect(event).toMatchObject({ vcpu: 1 });
    expect(event.payload).toMatchObject({ case: "msr", value: { msr: MSR_LSTAR, oldValue: old, newValue: 0xffffffff81234560n } });
    expect(event.arch?.msrs?.lstar).toBe(old);
    ctl.reply(event, CONTINUE, { newVal: old });
    expect(await settle(blocked, "WRMSR")).toEqual({ status: "done", value: old });
    expect(vcpu(1).state.msrs.read(MSR_LSTAR)).toBe(old);

    const allowed = vcpu(1).writeMsr(MSR_LSTAR, 0xffffffff81234560n);
    ctl.reply(await ctl.event((e) => e.type === EventType.MSR), CONTINUE);
    expect(await settle(allowed, "WRMSR")).toEqual({ status: "done", value: 0xffffffff81234560n });
    expect(vcpu(1).state.msrs.read(MSR_LSTAR)).toBe(0xffffffff81234560n);
  });

  it("new_val replaces the value the guest wrote", async () => {
    const write = vcpu(1).writeMsr(MSR_LSTAR, 0xffffffff81000000n);
    ctl.reply(await ctl.event((e) => e.type === EventType.MSR), CONTINUE, { newVal: 0xffffffff82000000n });
    expect(await settle(write, "WRMSR")).toEqual({ status: "done", value: 0xffffffff82000000n });
    expect(vcpu(1).state.msrs.read(MSR_LSTAR)).toBe(0xffffffff82000000n);
  });
});

describe("BREAKPOINT", () => {
  beforeAll(async () => {
    // The controller plants the INT3 through the bridge (the ledger records the original byte).
    await ctl.ok({ case: "writePhysicalMemory", value: { vm: h.vmName(MAIN), gpa: BP_GPA, data: Uint8Array.of(INT3) } });
    await enable(ctl, EventType.BREAKPOINT, 0);
  });

  it("RETRY after moving RIP past the INT3 with EventReply.registers: the next instruction runs, no #BP", async () => {
    const delivered = vcpu(0).deliveredExceptionCount;
    const run = vcpu(0).executeAt(BP_GPA);
    const event = await ctl.event((e) => e.type === EventType.BREAKPOINT);
    expect(event.payload).toMatchObject({ case: "breakpoint", value: { gpa: BP_GPA, insnLen: 1 } });
    expect(event.arch?.regs?.rip).toBe(BP_GPA);
    ctl.reply(event, RETRY, { registers: { ...event.arch!.regs!, rip: BP_GPA + 1n } });
    const outcome = await settle(run, "execution at the breakpoint");
    expect(outcome).toMatchObject({ status: "done", value: { gva: BP_GPA + 1n, insnLen: 1 } });
    expect([...(outcome as { value: { bytes: Uint8Array } }).value.bytes]).toEqual([NOP]);
    expect(vcpu(0).state.regs.rip).toBe(BP_GPA + 2n);
    expect(vcpu(0).deliveredExceptionCount).toBe(delivered);
  });

  it("CONTINUE re-injects #BP into the guest", async () => {
    const run = vcpu(0).executeAt(BP_GPA);
    ctl.reply(await ctl.event((e) => e.type === EventType.BREAKPOINT), CONTINUE);
    expect(await settle(run, "execution at the breakpoint")).toMatchObject({ status: "exception", exception: { nr: 3 } });
    await waitUntil(() => vcpu(0).deliveredExceptions.at(-1)?.nr === 3, "#BP delivered to the guest");
  });

  it("new_val on a BREAKPOINT is rejected and the event stays pending until a valid reply", async () => {
    const run = vcpu(0).executeAt(BP_GPA);
    const event = await ctl.event((e) => e.type === EventType.BREAKPOINT);
    ctl.reply(event, RETRY, { newVal: 1n });
    const details = await expectRejected(ctl, event, GrpcStatus.INVALID_ARGUMENT, "KVMI_INVALID_ARGUMENT");
    expect(details.fieldViolations).toEqual([expect.objectContaining({ field: "new_val" })]);
    ctl.reply({ vcpu: 0, seq: event.seq + 1000 }, CONTINUE);
    const unknown = await ctl.next("replyRejected", (r) => r.seq === event.seq + 1000);
    expect(inlineFailure(unknown.status!)).toMatchObject({ code: GrpcStatus.NOT_FOUND, reason: "EVENT_NOT_PENDING", vcpu: 0 });
    expect(vcpu(0).currentExit).toBe("breakpoint");
    ctl.reply(event, RETRY, { registers: { ...event.arch!.regs!, rip: BP_GPA + 1n } });
    expect(await settle(run, "execution at the breakpoint")).toMatchObject({ status: "done", value: { gva: BP_GPA + 1n } });
    // A second reply to the answered event is not forwarded (idempotent per vcpu and seq).
    ctl.reply(event, CONTINUE);
    const repeat = await ctl.next("replyRejected", (r) => r.seq === event.seq);
    expect(inlineFailure(repeat.status!).reason).toBe("EVENT_NOT_PENDING");
  });
});

describe("PF", () => {
  const gfn = PF_GPA >> 12n;
  const restrict = (access: number) =>
    ctl.ok({ case: "setPageAccess", value: { vm: h.vmName(MAIN), entries: [{ gpa: PF_GPA, access }] } });

  beforeAll(async () => {
    await enable(ctl, EventType.PF, 0);
  });

  it("RETRY after SetPageAccess granted the access: the write lands", async () => {
    await restrict(5); // R and X, no W
    expect(h.vms[MAIN]!.guest.memory.getPageAccess(gfn)).toBe(5);
    const write = vcpu(0).writeMemory({ gva: PF_GPA + 0x10n }, Uint8Array.of(1, 2, 3, 4));
    const event = await ctl.event((e) => e.type === EventType.PF);
    expect(event.payload).toMatchObject({ case: "pageFault", value: { gpa: PF_GPA + 0x10n, gva: PF_GPA + 0x10n, access: 2 } });
    expect(bytesAt(MAIN, PF_GPA + 0x10n, 4)).toEqual([0, 0, 0, 0]);
    await restrict(7); // on the same stream, while the vCPU waits
    ctl.reply(event, RETRY);
    expect(await settle(write, "the guest write")).toEqual({ status: "done", value: undefined });
    expect(bytesAt(MAIN, PF_GPA + 0x10n, 4)).toEqual([1, 2, 3, 4]);
  });

  it("RETRY without granting faults again; CONTINUE lets KVM carry out the access", async () => {
    await restrict(5);
    const write = vcpu(0).writeMemory({ gva: PF_GPA + 0x20n }, Uint8Array.of(5, 6));
    const first = await ctl.event((e) => e.type === EventType.PF);
    ctl.reply(first, RETRY);
    const second = await ctl.event((e) => e.type === EventType.PF);
    expect(second.seq).toBeGreaterThan(first.seq);
    expect(bytesAt(MAIN, PF_GPA + 0x20n, 2)).toEqual([0, 0]);
    ctl.reply(second, CONTINUE);
    expect(await settle(write, "the guest write")).toEqual({ status: "done", value: undefined });
    expect(bytesAt(MAIN, PF_GPA + 0x20n, 2)).toEqual([5, 6]);
    expect(h.vms[MAIN]!.guest.memory.getPageAccess(gfn)).toBe(5);
    await restrict(7);
  });
});

describe("HYPERCALL", () => {
  it("is delivered with the guest registers; CONTINUE returns 0 to the guest", async () => {
    await enable(ctl, EventType.HYPERCALL, 0);
    const call = vcpu(0).hypercall(34n, 24n, 0n);
    const event = await ctl.event((e) => e.type === EventType.HYPERCALL);
    expect(event.payload.case).toBe("hypercall");
    expect(event.arch?.regs).toMatchObject({ rax: 34n, rdi: 24n, rsi: 0n });
    ctl.reply(event, CONTINUE);
    expect(await settle(call, "VMCALL")).toEqual({ status: "done", value: 0n });
  });

  it("is not sent for a vCPU without the event: the guest gets -KVM_ENOSYS", async () => {
    const call = vcpu(1).hypercall(34n, 24n, 0n);
    expect(await settle(call, "VMCALL")).toEqual({ status: "done", value: (1n << 64n) - BigInt(errno.KVM_ENOSYS) });
    await ctl.queue.expectNone((r) => r.message.case === "event" && r.message.value.type === EventType.HYPERCALL, 50, "HYPERCALL event");
  });
});

describe("XSETBV", () => {
  it("reports the XCR0 change after it happened; CONTINUE lets the guest go on", async () => {
    await enable(ctl, EventType.XSETBV, 0);
    const old = vcpu(0).state.xsave.xcr0;
    const set = vcpu(0).xsetbv(0, 0x3n);
    const event = await ctl.event((e) => e.type === EventType.XSETBV);
    // A dialect whose XSETBV event carries no payload (kvmi-v7) leaves the fields 0 (event.proto).
    const reported = (eventByKind(E2E_DIALECT, "XSETBV")?.payload ?? null) === null ? { xcr: 0, oldValue: 0n, newValue: 0n } : { xcr: 0, oldValue: old, newValue: 0x3n };
    expect(event.payload).toMatchObject({ case: "xsetbv", value: reported });
    expect(vcpu(0).state.xsave.xcr0).toBe(0x3n);
    ctl.reply(event, CONTINUE);
    expect(await settle(set, "XSETBV")).toEqual({ status: "done", value: 0x3n });
    const back = vcpu(0).xsetbv(0, old);
    ctl.reply(await ctl.event((e) => e.type === EventType.XSETBV), CONTINUE);
    expect(await settle(back, "XSETBV")).toEqual({ status: "done", value: old });
  });
});

describe("DESCRIPTOR", () => {
  beforeAll(async () => {
    await enable(ctl, EventType.DESCRIPTOR, 0);
  });

  it("RETRY without moving RIP re-executes the instruction (a second event); CONTINUE performs it", async () => {
    const idt = { ...vcpu(0).state.sregs.idt };
    const sidt = vcpu(0).descriptorOp("sidt");
    const first = await ctl.event((e) => e.type === EventType.DESCRIPTOR);
    expect(first.payload).toMatchObject({ case: "descriptor", value: { descriptor: DescriptorType.IDTR, write: false } });
    ctl.reply(first, RETRY);
    const second = await ctl.event((e) => e.type === EventType.DESCRIPTOR);
    expect(second.seq).toBeGreaterThan(first.seq);
    ctl.reply(second, CONTINUE);
    expect(await settle(sidt, "SIDT")).toEqual({ status: "done", value: { table: idt } });
  });

  it("RETRY after moving RIP skips a load: LGDT never happens", async () => {
    const gdt = { ...vcpu(0).state.sregs.gdt };
    const lgdt = vcpu(0).descriptorOp("lgdt", { base: 0x12345000n, limit: 0x7f }, { at: CODE_GPA });
    const event = await ctl.event((e) => e.type === EventType.DESCRIPTOR);
    expect(event.payload).toMatchObject({ case: "descriptor", value: { descriptor: DescriptorType.GDTR, write: true } });
    ctl.reply(event, RETRY, { registers: { ...event.arch!.regs!, rip: CODE_GPA + 8n } });
    expect(await settle(lgdt, "LGDT")).toEqual({ status: "skipped" });
    expect(vcpu(0).state.sregs.gdt).toEqual(gdt);
  });
});

describe("SINGLESTEP", () => {
  it("follows each instruction while single-stepping and stops when it is turned off", async () => {
    await ctl.ok({ case: "controlSingleStep", value: { name: vcpuName(1), enable: true } });
    const step = vcpu(1).executeAt(CODE_GPA);
    const event = await ctl.event((e) => e.type === EventType.SINGLESTEP);
    expect(event).toMatchObject({ vcpu: 1, payload: { case: "singleStep", value: { failed: false } } });
    expect(event.arch?.regs?.rip).toBe(CODE_GPA + 1n);
    ctl.reply(event, CONTINUE);
    expect(await settle(step, "the stepped NOP")).toMatchObject({ status: "done", value: { gva: CODE_GPA } });
    await ctl.ok({ case: "controlSingleStep", value: { name: vcpuName(1), enable: false } });
    expect(await settle(vcpu(1).executeAt(CODE_GPA), "an unstepped NOP")).toMatchObject({ status: "done" });
    await ctl.queue.expectNone((r) => r.message.case === "event" && r.message.value.type === EventType.SINGLESTEP, 50, "SINGLESTEP event");
  });
});

describe("TRAP", () => {
  it("reports the exception InjectException queued; CONTINUE delivers it (with CR2 for #PF)", async () => {
    await ctl.ok({ case: "injectException", value: { name: vcpuName(0), vector: 14, errorCode: 2, address: 0xdead000n } });
    const event = await ctl.event((e) => e.type === EventType.TRAP);
    expect(event.payload).toMatchObject({ case: "trap", value: { vector: 14, errorCode: 2, address: 0xdead000n } });
    ctl.reply(event, CONTINUE);
    await waitUntil(() => vcpu(0).deliveredExceptions.at(-1)?.nr === 14, "#PF delivered to the guest");
    expect(vcpu(0).deliveredExceptions.at(-1)).toMatchObject({ nr: 14, error_code: 2, address: 0xdead000n });
  });
});

describe("PAUSE_VCPU", () => {
  it("follows each PauseVcpu, once per request", async () => {
    await ctl.ok({ case: "pauseVcpu", value: { name: vcpuName(1), wait: true } });
    await ctl.ok({ case: "pauseVcpu", value: { name: vcpuName(1) } });
    for (let i = 0; i < 2; i++) {
      const event = await ctl.event((e) => e.type === EventType.PAUSE_VCPU);
      expect(event).toMatchObject({ vcpu: 1, payload: { case: "pauseVcpu" } });
      if (i === 0) {
        // PAUSE_VCPU accepts only CONTINUE and CRASH.
        ctl.reply(event, RETRY);
        await expectRejected(ctl, event, GrpcStatus.INVALID_ARGUMENT, "KVMI_INVALID_ARGUMENT");
      }
      ctl.reply(event, CONTINUE);
    }
    await ctl.queue.expectNone((r) => r.message.case === "event" && r.message.value.type === EventType.PAUSE_VCPU, 100, "a third PAUSE_VCPU event");
  });
});

// -------------------------------------------------------------------------------------------------
// CRASH: v9 kills the VM (SIGTERM to QEMU); the session ends UNAVAILABLE. The VM is then reset and
// hooks again with the next generation, ready for the next event type.

interface Trigger {
  /** Makes the crash VM's controller ready for the event. */
  readonly setup: (session: SessionClient) => Promise<void>;
  /** Starts the guest operation that raises the event (or undefined when a command raises it). */
  readonly fire: (session: SessionClient) => Promise<unknown> | undefined;
}

const crashTriggers: ReadonlyArray<readonly [string, EventType, Trigger]> = [
  ["BREAKPOINT", EventType.BREAKPOINT, {
    setup: async (s) => {
      h.vms[CRASHER]!.guest.memory.write(BP_GPA, Uint8Array.of(INT3));
      await enable(s, EventType.BREAKPOINT, 0, CRASHER);
    },
    fire: () => vcpu(0, CRASHER).executeAt(BP_GPA),
  }],
  ["CR", EventType.CR, {
    setup: async (s) => {
      await enable(s, EventType.CR, 0, CRASHER);
      await s.ok({ case: "controlCr", value: { name: vcpuName(0, CRASHER), cr: 3, enable: true } });
    },
    fire: () => vcpu(0, CRASHER).writeCr(3, vcpu(0, CRASHER).state.sregs.cr3 + 0x1000n),
  }],
  ["MSR", EventType.MSR, {
    setup: async (s) => {
      await enable(s, EventType.MSR, 0, CRASHER);
      await s.ok({ case: "controlMsr", value: { name: vcpuName(0, CRASHER), msr: MSR_LSTAR, enable: true } });
    },
    fire: () => vcpu(0, CRASHER).writeMsr(MSR_LSTAR, 0xffffffff81000000n),
  }],
  ["PF", EventType.PF, {
    setup: async (s) => {
      await enable(s, EventType.PF, 0, CRASHER);
      await s.ok({ case: "setPageAccess", value: { vm: h.vmName(CRASHER), entries: [{ gpa: PF_GPA, access: 1 }] } });
    },
    fire: () => vcpu(0, CRASHER).writeMemory({ gpa: PF_GPA }, Uint8Array.of(1)),
  }],
  ["HYPERCALL", EventType.HYPERCALL, {
    setup: (s) => enable(s, EventType.HYPERCALL, 0, CRASHER),
    fire: () => vcpu(0, CRASHER).hypercall(34n, 24n, 0n),
  }],
  ["XSETBV", EventType.XSETBV, {
    setup: (s) => enable(s, EventType.XSETBV, 0, CRASHER),
    fire: () => vcpu(0, CRASHER).xsetbv(0, 0x3n),
  }],
  ["DESCRIPTOR", EventType.DESCRIPTOR, {
    setup: (s) => enable(s, EventType.DESCRIPTOR, 0, CRASHER),
    fire: () => vcpu(0, CRASHER).descriptorOp("str"),
  }],
  ["SINGLESTEP", EventType.SINGLESTEP, {
    setup: async (s) => {
      h.vms[CRASHER]!.guest.memory.write(CODE_GPA, Uint8Array.of(NOP));
      await s.ok({ case: "controlSingleStep", value: { name: vcpuName(0, CRASHER), enable: true } });
    },
    fire: () => vcpu(0, CRASHER).executeAt(CODE_GPA),
  }],
  ["TRAP", EventType.TRAP, {
    setup: async () => undefined,
    fire: (s) => void s.ok({ case: "injectException", value: { name: vcpuName(0, CRASHER), vector: 6 } }),
  }],
  ["PAUSE_VCPU", EventType.PAUSE_VCPU, {
    setup: async () => undefined,
    fire: (s) => void s.ok({ case: "pauseVcpu", value: { name: vcpuName(0, CRASHER) } }),
  }],
];

describe("CRASH", () => {
  let generation = 1n;

  it.each(crashTriggers)("CRASH on %s kills the VM; its session ends UNAVAILABLE", async (_name, type, trigger) => {
    const emulated = h.vms[CRASHER]!;
    const session = await h.attach(CRASHER, Role.CONTROLLER);
    await trigger.setup(session);
    const operation = trigger.fire(session);
    const event = await session.event((e) => e.type === type);
    expect(event.vm).toBe(h.vmName(CRASHER));
    session.reply(event, CRASH);

    const ended = streamFailure(await session.closed());
    expect(ended.code).toBe(GrpcStatus.UNAVAILABLE);
    expect(ended.details).toMatchObject({ reason: "KVMI_SESSION_LOST", vm: emulated.uuid });
    expect(emulated.guest.runState).toBe("crashed");
    expect(emulated.guest.crashReason).toMatch(/CRASH/);
    if (operation !== undefined) expect(await settle(operation, "the crashed operation")).toEqual({ status: "aborted", reason: "crashed" });
    const { vm } = await h.client.unary("getVm", { name: h.vmName(CRASHER) });
    expect(vm?.state).toBe(State.DISCONNECTED);

    // QEMU is gone; a new one (reset + start) hooks the same UUID again, one generation later.
    await waitUntil(() => !emulated.deviceManager.isHooked && !emulated.kernel.isHooked, "the device manager to let go");
    await emulated.reset();
    emulated.start();
    generation += 1n;
    expect((await h.waitHooked(CRASHER, Number(generation))).generation).toBe(generation);
  });
});
