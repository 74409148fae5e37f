// SPDX-License-Identifier: Apache-2.0
/**
 * Controller and observer rules of the Session stream, end to end: one controller per VM (a second
 * one is refused with FAILED_PRECONDITION until the first leaves), observers get copies of events
 * but can neither answer them nor change guest state, the bridge answers an event itself when the
 * controller's deadline passes or the controller leaves (the vCPU never stays blocked), and the
 * session protocol's own errors (attach first, exactly once; valid role, VM and deadline).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EventType, State } from "@kvmi/proto";
import {
  CONTINUE,
  GrpcStatus,
  inlineFailure,
  Role,
  settle,
  startHarness,
  streamFailure,
  waitUntil,
  e2eEventId,
} from "../support/bridge-harness.js";
import type { Harness, SessionClient, SessionCommandRequest } from "../support/bridge-harness.js";

const MSR_LSTAR = 0xc0000082;

let h: Harness;
const vm = (i = 0): string => h.vmName(i);
const vcpuName = (n: number, i = 0): string => h.vcpuName(i, n);
const guestVcpu = (n: number) => h.vms[0]!.guest.vcpus[n]!;

beforeAll(async () => {
  h = await startHarness({ vms: 2 });
});

afterEach(async () => {
  await h.closeSessions();
});

afterAll(async () => {
  await h?.stop();
});

/** Sets up CR3 write events on vCPU 0 and starts a CR3 write; returns the (pending) guest operation. */
async function pendingCr3Write(controller: SessionClient, value: bigint) {
  await controller.ok({ case: "controlVcpuEvents", value: { name: vcpuName(0), event: EventType.CR, enable: true } });
  await controller.ok({ case: "controlCr", value: { name: vcpuName(0), cr: 3, enable: true } });
  return { write: guestVcpu(0).writeCr(3, value) };
}

describe("one controller per VM", () => {
  it("refuses a second controller with FAILED_PRECONDITION until the first leaves, then accepts it", async () => {
    const first = await h.attach(0, Role.CONTROLLER);
    expect(first.attached?.role).toBe(Role.CONTROLLER);
    expect(first.attached?.vm?.controllerAttached).toBe(true);
    expect(first.attached?.session?.eventDeadline).toBeDefined();

    const second = h.client.openSession();
    await expect(second.attach(vm(), Role.CONTROLLER)).rejects.toMatchObject({ code: GrpcStatus.FAILED_PRECONDITION });
    const refused = streamFailure(await second.closed());
    expect(refused.code).toBe(GrpcStatus.FAILED_PRECONDITION);
    expect(refused.details).toMatchObject({ reason: "CONTROLLER_PRESENT", vm: h.vms[0]!.uuid });
    expect(refused.details.preconditionViolations).toEqual([expect.objectContaining({ type: "CONTROLLER", subject: vm() })]);
    // issue 15: the controller's session id is never shown to another caller.
    expect(refused.message).not.toContain(first.id);

    // Another VM is unaffected, and observers are not limited.
    const other = await h.attach(1, Role.CONTROLLER);
    expect(other.attached?.vm?.name).toBe(vm(1));
    const observer = await h.attach(0, Role.OBSERVER);
    expect(observer.attached?.session?.eventDeadline).toBeUndefined();
    expect((await h.client.unary("getVm", { name: vm() })).vm).toMatchObject({ controllerAttached: true, observerCount: 1 });

    first.release();
    expect((await first.closed()).code).toBe(GrpcStatus.OK);
    await waitUntil(async () => !(await h.client.unary("getVm", { name: vm() })).vm?.controllerAttached, "the controller slot to free up");
    const third = await h.attach(0, Role.CONTROLLER);
    expect(third.id).not.toBe(first.id);
    expect((await h.client.unary("getVm", { name: vm() })).vm).toMatchObject({ controllerAttached: true, observerCount: 1 });
  });
});

describe("observers", () => {
  it("receive copies of events, cannot answer them, and the controller's answer still counts", async () => {
    const controller = await h.attach(0, Role.CONTROLLER);
    const observer = await h.attach(0, Role.OBSERVER);
    const old = guestVcpu(0).state.sregs.cr3;
    const { write } = await pendingCr3Write(controller, old + 0x1000n);

    const event = await controller.event((e) => e.type === EventType.CR);
    const copy = await observer.event((e) => e.type === EventType.CR);
    expect({ vcpu: copy.vcpu, seq: copy.seq, payload: copy.payload }).toEqual({ vcpu: event.vcpu, seq: event.seq, payload: event.payload });
    expect(copy.replyDeadline).toBeUndefined();
    expect(event.replyDeadline).toBeDefined();

    observer.reply(copy, CONTINUE, { newVal: old + 0x1000n });
    const rejected = await observer.next("replyRejected");
    expect(rejected).toMatchObject({ vcpu: copy.vcpu, seq: copy.seq });
    expect(inlineFailure(rejected.status!)).toMatchObject({ code: GrpcStatus.PERMISSION_DENIED, reason: "NOT_CONTROLLER", vcpu: 0 });
    expect(guestVcpu(0).currentExit).toBe("crWrite"); // still waiting: the observer's reply was not forwarded

    controller.reply(event, CONTINUE, { newVal: old });
    expect(await settle(write, "MOV CR3")).toEqual({ status: "done", value: old });
  });

  it("may run read-only commands but no command that changes guest state (PERMISSION_DENIED, never sent)", async () => {
    await h.attach(0, Role.CONTROLLER);
    const observer = await h.attach(0, Role.OBSERVER);
    const readOnly: SessionCommandRequest[] = [
      { case: "getVersion", value: { vm: vm() } },
      { case: "readPhysicalMemory", value: { vm: vm(), gpa: 0x1000n, size: 8 } },
      { case: "getRegisters", value: { name: vcpuName(0) } },
      { case: "translateGva", value: { name: vcpuName(0), gva: 0x1000n } },
      { case: "getXsave", value: { name: vcpuName(1) } },
      { case: "batchReadMemory", value: { vm: vm(), ranges: [{ address: 0x1000n, length: 16n, space: 1 }] } },
    ];
    for (const request of readOnly) await observer.ok(request);

    const mutating: Array<[string, SessionCommandRequest]> = [
      ["KVMI_VM_CONTROL_EVENTS", { case: "controlVmEvents", value: { vm: vm(), event: EventType.UNHOOK, enable: false } }],
      ["KVMI_VM_WRITE_PHYSICAL", { case: "writePhysicalMemory", value: { vm: vm(), gpa: 0x1000n, data: Uint8Array.of(0xcc) } }],
      ["KVMI_VCPU_PAUSE", { case: "pauseVcpu", value: { name: vcpuName(0) } }],
      ["KVMI_VCPU_CONTROL_EVENTS", { case: "controlVcpuEvents", value: { name: vcpuName(0), event: EventType.CR, enable: true } }],
      ["KVMI_VCPU_SET_REGISTERS", { case: "setRegisters", value: { name: vcpuName(0), regs: {} } }],
      ["KVMI_VM_CONTROL_CLEANUP", { case: "controlCleanup", value: { vm: vm(), enable: true } }],
      ["KVMI_VCPU_CONTROL_CR", { case: "controlCr", value: { name: vcpuName(0), cr: 3, enable: true } }],
      ["KVMI_VCPU_INJECT_EXCEPTION", { case: "injectException", value: { name: vcpuName(0), vector: 6 } }],
      ["KVMI_VCPU_SET_XSAVE", { case: "setXsave", value: { name: vcpuName(0), region: new Uint8Array(512) } }],
      ["KVMI_VCPU_CONTROL_MSR", { case: "controlMsr", value: { name: vcpuName(0), msr: MSR_LSTAR, enable: true } }],
      ["KVMI_VM_SET_PAGE_ACCESS", { case: "setPageAccess", value: { vm: vm(), entries: [{ gpa: 0x1000n, access: 1 }] } }],
      ["KVMI_VCPU_CONTROL_SINGLESTEP", { case: "controlSingleStep", value: { name: vcpuName(0), enable: true } }],
    ];
    const before = await h.metrics();
    for (const [command, request] of mutating) {
      const result = await observer.command(request);
      expect(result.result.case, command).toBe("error");
      const details = inlineFailure(result.result.value as never);
      expect(details).toMatchObject({ code: GrpcStatus.PERMISSION_DENIED, reason: "NOT_CONTROLLER", command, vm: h.vms[0]!.uuid });
    }
    const after = await h.metrics();
    for (const [command] of mutating) {
      expect(after.value("kvmi_bridge_commands_total", { command }), command).toBe(before.value("kvmi_bridge_commands_total", { command }));
    }
    // And the guest saw none of it.
    const kernel = h.vms[0]!.kernel;
    expect(kernel.vcpu(0)!.enabledEvents.size).toBe(0);
    expect(kernel.vcpu(0)!.crMask.size + kernel.vcpu(0)!.msrWrites.size).toBe(0);
    expect(kernel.vcpu(0)!.singlestep).toBe(false);
    expect(kernel.vmEvents().has(e2eEventId("UNHOOK"))).toBe(true);
    expect(h.vms[0]!.guest.memory.getPageAccess(1n)).toBe(7);
    expect(h.vms[0]!.guest.memory.read(0x1000n, 1)).toMatchObject({ ok: true, bytes: Uint8Array.of(0) });
  });
});

describe("the bridge answers for the controller", () => {
  it("answers CONTINUE (with the guest's value) when the controller's deadline passes; a late reply is rejected", async () => {
    const controller = await h.attach(0, Role.CONTROLLER, { eventDeadlineMs: 100 });
    expect(controller.attached?.session?.eventDeadline).toMatchObject({ seconds: 0n, nanos: 100_000_000 });
    const before = (await h.metrics()).value("kvmi_bridge_event_auto_replies_total", { event: "cr", reason: "deadline" });
    const old = guestVcpu(0).state.sregs.cr3;
    const { write } = await pendingCr3Write(controller, old + 0x1000n);
    const event = await controller.event((e) => e.type === EventType.CR);
    const deadline = Number(event.replyDeadline!.seconds) * 1000 + event.replyDeadline!.nanos / 1e6;
    const received = Number(event.receiveTime!.seconds) * 1000 + event.receiveTime!.nanos / 1e6;
    expect(deadline - received).toBeGreaterThanOrEqual(90);
    expect(deadline - received).toBeLessThan(200);
    expect(await settle(write, "MOV CR3 answered by the bridge", 2000)).toEqual({ status: "done", value: old + 0x1000n });
    controller.reply(event, CONTINUE, { newVal: old });
    const late = await controller.next("replyRejected", (r) => r.seq === event.seq);
    expect(inlineFailure(late.status!)).toMatchObject({ code: GrpcStatus.NOT_FOUND, reason: "EVENT_NOT_PENDING" });
    expect(guestVcpu(0).state.sregs.cr3).toBe(old + 0x1000n);
    const after = (await h.metrics()).value("kvmi_bridge_event_auto_replies_total", { event: "cr", reason: "deadline" });
    expect(after - before).toBe(1);
    // Put CR3 back for the next tests.
    const back = guestVcpu(0).writeCr(3, old);
    controller.reply(await controller.event((e) => e.type === EventType.CR), CONTINUE);
    await settle(back, "MOV CR3");
  });

  it("answers the pending event and undoes the controller's hooks when the controller goes away", async () => {
    const controller = await h.attach(0, Role.CONTROLLER);
    const old = guestVcpu(0).state.sregs.cr3;
    const { write } = await pendingCr3Write(controller, old + 0x2000n);
    await controller.event((e) => e.type === EventType.CR);
    controller.cancel();
    expect(await settle(write, "MOV CR3 answered after the controller left", 2000)).toEqual({ status: "done", value: old + 0x2000n });
    const kernel = h.vms[0]!.kernel;
    await waitUntil(() => kernel.vcpu(0)!.enabledEvents.size === 0 && kernel.vcpu(0)!.crMask.size === 0, "the CR interception undone");
    // Nothing intercepts any more: the next write is not an event.
    expect(await settle(guestVcpu(0).writeCr(3, old), "MOV CR3 without interception")).toEqual({ status: "done", value: old });
  });
});

describe("the session protocol", () => {
  it("ends the stream with FAILED_PRECONDITION for a command before attach and for a second attach", async () => {
    const early = h.client.openSession();
    early.send({ case: "command", value: { id: 1n, request: { case: "getVersion", value: { vm: vm() } } } });
    const status = streamFailure(await early.closed());
    expect(status.code).toBe(GrpcStatus.FAILED_PRECONDITION);
    expect(status.details.reason).toBe("SESSION_STATE");

    const twice = await h.attach(0, Role.OBSERVER);
    twice.send({ case: "attach", value: { vm: vm(), role: Role.OBSERVER } });
    const second = streamFailure(await twice.closed());
    expect(second).toMatchObject({ code: GrpcStatus.FAILED_PRECONDITION, details: { reason: "SESSION_STATE" } });
  });

  it("rejects an unknown VM (NOT_FOUND), a missing role and an out-of-range event deadline (INVALID_ARGUMENT)", async () => {
    const cases: Array<[string, number, (s: SessionClient) => Promise<unknown>, string]> = [
      ["unknown VM", GrpcStatus.NOT_FOUND, (s) => s.attach("vms/00000000-0000-4000-8000-000000000000", Role.OBSERVER), "VM_NOT_FOUND"],
      ["no role", GrpcStatus.INVALID_ARGUMENT, (s) => s.attach(vm(), Role.UNSPECIFIED), "KVMI_INVALID_ARGUMENT"],
      ["5 ms deadline", GrpcStatus.INVALID_ARGUMENT, (s) => s.attach(vm(), Role.CONTROLLER, { eventDeadlineMs: 5 }), "KVMI_INVALID_ARGUMENT"],
    ];
    for (const [what, code, attach, reason] of cases) {
      const session = h.client.openSession();
      await expect(attach(session), what).rejects.toMatchObject({ code });
      expect(streamFailure(await session.closed()).details.reason, what).toBe(reason);
    }
  });

  it("answers a reused in-flight id with INVALID_ARGUMENT and the 65th command in flight with RESOURCE_EXHAUSTED", async () => {
    const session = await h.attach(0, Role.OBSERVER);
    const max = session.attached!.session!.maxInflightCommands;
    expect(max).toBe(64);
    const guest = h.vms[0]!.guest;
    await guest.stop(); // vCPU commands now wait in the kernel: they stay in flight
    try {
      const send = (id: bigint): void => session.send({ case: "command", value: { id, request: { case: "getRegisters", value: { name: vcpuName(1) } } } });
      for (let id = 1n; id <= BigInt(max); id++) send(id);
      for (const attempt of [1, 2]) {
        send(1n);
        const refused = await session.next("commandResult", (r) => r.id === 1n);
        expect(refused.result.case, `attempt ${attempt}`).toBe("error");
        expect(inlineFailure(refused.result.value as never)).toMatchObject({ code: GrpcStatus.INVALID_ARGUMENT, command: "KVMI_VCPU_GET_REGISTERS", vcpu: 1 });
      }
      send(BigInt(max) + 1n);
      const exhausted = await session.next("commandResult", (r) => r.id === BigInt(max) + 1n);
      expect(inlineFailure(exhausted.result.value as never)).toMatchObject({ code: GrpcStatus.RESOURCE_EXHAUSTED, reason: "TOO_MANY_IN_FLIGHT" });
    } finally {
      guest.resume();
    }
    // Every command that was in flight completes with its own result, the first one included.
    const results = await Promise.all(Array.from({ length: max }, (_, i) => session.next("commandResult", (r) => r.id === BigInt(i + 1))));
    expect(results.every((r) => r.result.case === "getRegisters")).toBe(true);
  });

  it("answers a command naming another VM with INVALID_ARGUMENT and keeps the session", async () => {
    const session = await h.attach(0, Role.OBSERVER);
    const result = await session.command({ case: "getVmInfo", value: { vm: vm(1) } });
    expect(result.result.case).toBe("error");
    expect(inlineFailure(result.result.value as never)).toMatchObject({ code: GrpcStatus.INVALID_ARGUMENT, command: "KVMI_VM_GET_INFO" });
    expect((await session.ok({ case: "getVmInfo", value: { vm: vm() } }))).toMatchObject({ case: "getVmInfo", value: { vcpuCount: 2 } });
    session.end();
    expect((await session.closed()).code).toBe(GrpcStatus.OK);
    expect((await h.client.unary("getVm", { name: vm() })).vm?.state).toBe(State.HOOKED);
  });
});
