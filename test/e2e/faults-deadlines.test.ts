// SPDX-License-Identifier: Apache-2.0
/**
 * Deadlines, end to end:
 *
 * - every pending vCPU event has one, per event type (`--event-timeout-ms 200`,
 *   `--event-timeouts cr=100,msr=600`); when it passes the bridge answers with the safe default
 *   (CONTINUE with the value the guest wrote) and counts it; a controller that hangs (its process
 *   SIGSTOPped) never stalls the guest;
 * - every command has one (the gRPC deadline, else `--request-timeout-ms 800`): a command whose reply
 *   never comes (the vCPU is stopped) fails with DEADLINE_EXCEEDED, leaves the pending table, and its
 *   late reply is dropped without closing the VM's socket.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EventType } from "@kvmi/proto";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { e2eCommandId, expectGrpcError, GrpcStatus, inlineFailure, Role, settle, startHarness, waitUntil } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";
import { SPOTS, startControllerProcess } from "../support/fault-tools.js";
import type { ControllerProcess } from "../support/fault-tools.js";

const DEFAULT_EVENT_MS = 200;
const CR_EVENT_MS = 100;
const MSR_EVENT_MS = 600;
const REQUEST_TIMEOUT_MS = 800;

let h: Harness;
let child: ControllerProcess | undefined;

const vm = () => h.vms[0]!;
const host = () => h.bridge.hosts.get(vm().uuid)!;
const ms = (t: Timestamp | undefined): number => Number(t!.seconds) * 1000 + t!.nanos / 1e6;

beforeAll(async () => {
  h = await startHarness({
    vms: [{ vcpus: 3 }],
    bridgeArgs: [
      "--event-timeout-ms", String(DEFAULT_EVENT_MS),
      "--event-timeouts", `cr=${CR_EVENT_MS},msr=${MSR_EVENT_MS}`,
      "--request-timeout-ms", String(REQUEST_TIMEOUT_MS),
    ],
  });
});

afterEach(async () => {
  if (vm().guest.runState === "paused") vm().guest.resume();
  await child?.stop();
  child = undefined;
  await h.closeSessions();
});

afterAll(async () => {
  await h?.stop();
});

/** Milliseconds until `operation` settles. */
async function timed<T>(operation: Promise<T>, what: string): Promise<{ value: T; ms: number }> {
  const started = Date.now();
  const value = await settle(operation, what, 5000);
  return { value, ms: Date.now() - started };
}

describe("event deadlines", () => {
  it("gives each event type its configured deadline and answers CONTINUE with the guest's value when it passes", async () => {
    const controller = await h.attach(0, Role.CONTROLLER);
    expect(controller.attached?.session?.eventDeadline).toMatchObject({ seconds: 0n, nanos: DEFAULT_EVENT_MS * 1e6 });
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, 0), event: EventType.CR, enable: true } });
    await controller.ok({ case: "controlCr", value: { name: h.vcpuName(0, 0), cr: 3, enable: true } });
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, 1), event: EventType.MSR, enable: true } });
    await controller.ok({ case: "controlMsr", value: { name: h.vcpuName(0, 1), msr: SPOTS.MSR_LSTAR, enable: true } });
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, 2), event: EventType.HYPERCALL, enable: true } });
    const before = await h.metrics();

    const [v0, v1, v2] = vm().guest.vcpus;
    const cr3 = v0!.state.sregs.cr3;
    const lstar = 0xffffffff81111110n;
    const [cr, msr, hypercall] = await Promise.all([
      timed(v0!.writeCr(3, cr3 + 0x1000n), "MOV CR3"),
      timed(v1!.writeMsr(SPOTS.MSR_LSTAR, lstar), "WRMSR"),
      timed(v2!.hypercall(34n, 24n, 0n), "VMCALL"),
    ]);
    expect(cr.value).toEqual({ status: "done", value: cr3 + 0x1000n });
    expect(msr.value).toEqual({ status: "done", value: lstar });
    expect(hypercall.value).toEqual({ status: "done", value: 0n });
    expect(cr.ms).toBeGreaterThanOrEqual(CR_EVENT_MS - 10);
    expect(hypercall.ms).toBeGreaterThanOrEqual(DEFAULT_EVENT_MS - 10);
    expect(msr.ms).toBeGreaterThanOrEqual(MSR_EVENT_MS - 10);
    expect(cr.ms).toBeLessThan(msr.ms);
    expect(msr.ms).toBeLessThan(MSR_EVENT_MS + 1500);

    // The deadlines the controller was told.
    for (const [type, deadline] of [[EventType.CR, CR_EVENT_MS], [EventType.MSR, MSR_EVENT_MS], [EventType.HYPERCALL, DEFAULT_EVENT_MS]] as const) {
      const event = await controller.event((e) => e.type === type);
      expect(ms(event.replyDeadline) - ms(event.receiveTime), EventType[type]).toBeGreaterThanOrEqual(deadline - 10);
      expect(ms(event.replyDeadline) - ms(event.receiveTime), EventType[type]).toBeLessThan(deadline + 50);
      // Too late: the bridge answered already.
      controller.reply(event, 0);
      const late = await controller.next("replyRejected", (r) => r.seq === event.seq);
      expect(inlineFailure(late.status!).reason).toBe("EVENT_NOT_PENDING");
    }
    const after = await h.metrics();
    for (const event of ["cr", "msr", "hypercall"]) {
      const labels = { event, reason: "deadline" };
      expect(after.value("kvmi_bridge_event_auto_replies_total", labels) - before.value("kvmi_bridge_event_auto_replies_total", labels), event).toBe(1);
    }
    await settle(v0!.writeCr(3, cr3), "MOV CR3 back").catch(() => undefined);
  });

  it("keeps the guest running on deadlines while the controller's process hangs (SIGSTOP)", async () => {
    const name = h.vmName(0);
    child = await startControllerProcess(h.bridge.grpcTarget, name, [
      { case: "controlVcpuEvents", value: { name: h.vcpuName(0, 0), event: EventType.HYPERCALL, enable: true } },
      { case: "controlVcpuEvents", value: { name: h.vcpuName(0, 1), event: EventType.HYPERCALL, enable: true } },
    ]);
    child.child.kill("SIGSTOP");
    try {
      const [v0, v1] = vm().guest.vcpus;
      const started = Date.now();
      // Five events per vCPU, one after the other: each waits for its deadline, none for the client.
      const run = async (v: typeof v0) => {
        for (let i = 0; i < 5; i++) expect(await settle(v!.hypercall(34n, 24n, 0n), "VMCALL", 2000)).toEqual({ status: "done", value: 0n });
      };
      await Promise.all([run(v0), run(v1)]);
      const elapsed = Date.now() - started;
      expect(elapsed).toBeGreaterThanOrEqual(5 * DEFAULT_EVENT_MS - 50);
      expect(elapsed).toBeLessThan(5 * DEFAULT_EVENT_MS + 2500);
    } finally {
      child.child.kill("SIGCONT");
    }
  });
});

describe("command deadlines", () => {
  it("fails a command whose reply never comes with DEADLINE_EXCEEDED at the gRPC deadline and cleans the pending table; the late reply is dropped", async () => {
    const OLD_RAX = 0x01d0_01d0n;
    const NEW_RAX = 0x0e30_0e30n;
    const state = vm().guest.vcpus[1]!.state;
    await vm().guest.stop(); // vCPU commands now wait in the kernel: no reply comes
    state.regs.rax = OLD_RAX;
    const framesBefore = vm().kernel.receivedFrames(e2eCommandId("GET_REGISTERS"));
    const started = Date.now();
    const err = await h.client.unary("getRegisters", { name: h.vcpuName(0, 1) }, { deadlineMs: 150 }).then(
      () => undefined,
      (e: unknown) => e as { code: number },
    );
    expect(err?.code).toBe(GrpcStatus.DEADLINE_EXCEEDED);
    await waitUntil(() => host().channel.pendingCommands === 0, "the pending table empty", { timeoutMs: 2000 });
    // Cleaned at the client's deadline, not at the bridge's own (longer) request timeout.
    expect(Date.now() - started).toBeLessThan(REQUEST_TIMEOUT_MS);
    // The old command waits in the vCPU's job queue; a job queued behind it changes RAX, so the old
    // reply (RAX = OLD_RAX) and a fresh one (NEW_RAX) differ.
    expect(vm().kernel.receivedFrames(e2eCommandId("GET_REGISTERS"))).toBe(framesBefore + 1);
    vm().kernel.vcpu(1)!.queueJob(() => void (state.regs.rax = NEW_RAX));
    vm().guest.resume();
    // The vCPU answers the old command now; the bridge drops that reply and keeps the socket: the
    // next call gets the vCPU's state as it is, not the stale reply.
    const regs = await h.client.unary("getRegisters", { name: h.vcpuName(0, 1) });
    expect(regs.regs?.rax).toBe(NEW_RAX);
    expect(regs.regs?.rax).toBe(state.regs.rax);
    expect(regs.regs?.rip).toBe(state.regs.rip);
    expect(host().channel.isOpen).toBe(true);
    expect(host().channel.pendingCommands).toBe(0);
  });

  it("uses --request-timeout-ms when the client's deadline is longer: DEADLINE_EXCEEDED with KVMI_TIMEOUT, unary and on the session", async () => {
    const observer = await h.attach(0, Role.OBSERVER);
    await vm().guest.stop();
    const started = Date.now();
    const failure = await expectGrpcError(h.client.unary("getRegisters", { name: h.vcpuName(0, 2) }, { deadlineMs: 5000 }), GrpcStatus.DEADLINE_EXCEEDED);
    const elapsed = Date.now() - started;
    expect(failure.details).toMatchObject({ reason: "KVMI_TIMEOUT", command: "KVMI_VCPU_GET_REGISTERS", vcpu: 2 });
    expect(elapsed).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 20);
    expect(elapsed).toBeLessThan(REQUEST_TIMEOUT_MS + 1500);

    const result = await observer.command({ case: "getRegisters", value: { name: h.vcpuName(0, 2) } }, 3000);
    expect(result.result.case).toBe("error");
    expect(inlineFailure(result.result.value as never)).toMatchObject({ code: GrpcStatus.DEADLINE_EXCEEDED, reason: "KVMI_TIMEOUT", vcpu: 2 });
    await waitUntil(() => host().channel.pendingCommands === 0, "the pending table empty", { timeoutMs: 1000 });
    vm().guest.resume();
    expect((await observer.ok({ case: "getRegisters", value: { name: h.vcpuName(0, 2) } })).case).toBe("getRegisters");
    expect(host().channel.isOpen).toBe(true);
  });

  it("counts a timed-out command as status timeout in kvmi_bridge_commands_total", async () => {
    const labels = { command: "KVMI_VCPU_GET_REGISTERS", status: "timeout" };
    const before = (await h.metrics()).value("kvmi_bridge_commands_total", labels);
    await vm().guest.stop();
    await expectGrpcError(h.client.unary("getRegisters", { name: h.vcpuName(0, 0) }, { deadlineMs: 5000 }), GrpcStatus.DEADLINE_EXCEEDED);
    vm().guest.resume();
    const scrape = await h.metrics();
    const statuses = ["ok", "timeout", "transport", "error", "session_lost"].map((s) => `${s}=${scrape.value("kvmi_bridge_commands_total", { ...labels, status: s })}`);
    expect(scrape.value("kvmi_bridge_commands_total", labels) - before, `statuses seen: ${statuses.join(" ")}`).toBe(1);
  });
});
