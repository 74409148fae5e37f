// SPDX-License-Identifier: Apache-2.0
/**
 * The seed's unhook flow end to end (kvmi-abi §2.6): the bridge enables UNHOOK at hook time, so
 * PREUNHOOK reaches it; on UNHOOK it tells the controller, the observers and the watchers the
 * deadline it honours; a controller that cleans up and releases gets the socket closed at once, no
 * controller means at once, a controller that ignores the notice gets the deadline, after which the
 * bridge undoes the ledger itself and closes. The device manager's outcome says who closed and when,
 * and the emulator's state at KVM_INTROSPECTION_UNHOOK proves what the bridge left behind. The same
 * for ReleaseVm (the operator's unhook).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EventType, State, UnhookReason, VmChangeType } from "@kvmi/proto";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import {
  expectGrpcError,
  GrpcStatus,
  Role,
  settle,
  startHarness,
  streamFailure,
  waitUntil,
  E2E_DIALECT,
  e2eEventId,
} from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";
import { captureAtUnhook, cleanState, guestState, hookPlan, prepareGuest, ramDigest, SPOTS } from "../support/fault-tools.js";

/** --unhook-deadline-ms of this file's bridge. */
const DEADLINE_MS = 1500;
/** The device manager's unhook_timeout: far longer, so that "closed by the tool" is unambiguous. */
const QEMU_UNHOOK_TIMEOUT_MS = 10_000;

const COOPERATIVE = 0;
const SILENT = 1;
const NOT_ALLOWED = 2;
const SWITCHER = 3;

/** Every event id of the dialect but UNHOOK: what `event=` allows on the third VM. */
const ALL_BUT_UNHOOK = E2E_DIALECT.events.filter((spec) => spec.kind !== "UNHOOK").map((spec) => spec.id);

let h: Harness;

const ms = (t: Timestamp | undefined): number => Number(t!.seconds) * 1000 + t!.nanos / 1e6;

beforeAll(async () => {
  h = await startHarness({
    vms: [{}, {}, { events: ALL_BUT_UNHOOK }, {}],
    vmDefaults: { unhookTimeoutMs: QEMU_UNHOOK_TIMEOUT_MS },
    bridgeArgs: ["--unhook-deadline-ms", String(DEADLINE_MS)],
  });
  for (const vm of h.vms) prepareGuest(vm);
});

afterEach(async () => {
  await h.closeSessions();
  // A test that failed half-way may leave its VM paused: let the next one start from a hooked VM.
  for (const i of [COOPERATIVE, SILENT]) {
    const vm = h.vms[i]!;
    if (vm.guest.runState !== "paused") continue;
    await waitUntil(() => !vm.deviceManager.isHooked, `VM ${i}'s pause to finish`, { timeoutMs: 15_000 }).catch(() => undefined);
    await resume(i).catch(() => undefined);
  }
});

afterAll(async () => {
  await h?.stop();
});

async function plant(session: SessionClient, i: number, options: Parameters<typeof hookPlan>[1] = {}): Promise<void> {
  for (const request of hookPlan(h.vmName(i), options)) await session.ok(request);
}

/** #BP exceptions delivered to vCPU `n` of VM `i` so far. */
function breakpointsDelivered(i: number, n: number): number {
  return h.vms[i]!.guest.vcpus[n]!.deliveredExceptions.filter((e) => e.nr === 3).length;
}

async function unhookMetrics(): Promise<{ count: number; sum: number }> {
  const scrape = await h.metrics();
  return { count: scrape.value("kvmi_bridge_unhook_to_close_seconds_count"), sum: scrape.value("kvmi_bridge_unhook_to_close_seconds_sum") };
}

/** Generation of VM `i` in the registry (also while it is disconnected). */
function generationOf(i: number): number {
  return h.bridge.registry.get(h.vms[i]!.uuid)!.generation;
}

/** Resumes VM `i` after a pause and waits until it hooked again with the next generation. */
async function resume(i: number): Promise<number> {
  const next = generationOf(i) + 1;
  h.vms[i]!.resume();
  await h.waitHooked(i, next);
  return next;
}

describe("hook time", () => {
  it("enables UNHOOK on every VM that allows it; a VM that does not is hooked anyway and unhooks without a notice", async () => {
    for (const i of [COOPERATIVE, SILENT, SWITCHER]) expect(h.vms[i]!.kernel.vmEvents().has(e2eEventId("UNHOOK")), `VM ${i}`).toBe(true);
    expect(h.vms[NOT_ALLOWED]!.kernel.vmEvents().has(e2eEventId("UNHOOK"))).toBe(false);
    expect((await h.client.unary("getVm", { name: h.vmName(NOT_ALLOWED) })).vm?.state).toBe(State.HOOKED);

    const controller = await h.attach(NOT_ALLOWED, Role.CONTROLLER);
    const outcome = await settle(h.vms[NOT_ALLOWED]!.runAction("pause"), "the pause");
    expect(outcome).toMatchObject({ preunhook: "ENOENT", closedBy: "immediate" });
    const ended = streamFailure(await controller.closed());
    expect(ended).toMatchObject({ code: GrpcStatus.UNAVAILABLE, details: { reason: "KVMI_SESSION_LOST" } });
    expect(controller.queue.pending.some((r) => r.message.case === "unhook")).toBe(false);
    await waitUntil(async () => (await h.client.unary("getVm", { name: h.vmName(NOT_ALLOWED) })).vm?.state === State.DISCONNECTED, "VM 2 disconnected");
    // ReleaseVm on a disconnected VM: nothing to release.
    const refused = await expectGrpcError(h.client.unary("releaseVm", { name: h.vmName(NOT_ALLOWED) }), GrpcStatus.FAILED_PRECONDITION);
    expect(refused.details.reason).toBe("VM_DISCONNECTED");
  });

  it("keeps UNHOOK on when a controller switches it off: PREUNHOOK still reaches the bridge", async () => {
    const controller = await h.attach(SWITCHER, Role.CONTROLLER);
    const result = await controller.command({ case: "controlVmEvents", value: { vm: h.vmName(SWITCHER), event: EventType.UNHOOK, enable: false } });
    // Refusing the command or accepting it without passing it on are both fine; what must hold is
    // that the kernel still sends UNHOOK to the bridge.
    expect(h.vms[SWITCHER]!.kernel.vmEvents().has(e2eEventId("UNHOOK")), `after ${result.result.case}`).toBe(true);
    const pausing = h.vms[SWITCHER]!.runAction("pause");
    const notice = await controller.next("unhook", () => true, 3000);
    expect(notice.reason).toBe(UnhookReason.DEVICE_MANAGER);
    controller.release();
    expect(await settle(pausing, "the pause")).toMatchObject({ preunhook: "ok", closedBy: "tool" });
  });
});

describe("UNHOOK from the device manager", () => {
  it("tells controller, observers and watchers the deadline; the controller cleans up with ordinary commands, releases, and the bridge closes at once", async () => {
    const vm = h.vms[COOPERATIVE]!;
    const uuid = vm.uuid;
    const before = ramDigest(vm);
    const capture = captureAtUnhook(vm);
    try {
      const watch = h.client.watchVms(h.vmName(COOPERATIVE));
      await watch.queue.take((r) => r.change?.type === VmChangeType.EXISTING, "EXISTING");
      const controller = await h.attach(COOPERATIVE, Role.CONTROLLER);
      const observer = await h.attach(COOPERATIVE, Role.OBSERVER);
      await plant(controller, COOPERATIVE);
      expect(h.bridge.hosts.get(uuid)!.hookLedger.isEmpty).toBe(false);
      const metricsBefore = await unhookMetrics();

      const started = Date.now();
      const pausing = vm.runAction("pause");
      const notice = await controller.next("unhook");
      expect(notice).toMatchObject({ vm: h.vmName(COOPERATIVE), reason: UnhookReason.DEVICE_MANAGER });
      expect(ms(notice.deadline) - started).toBeGreaterThan(DEADLINE_MS - 100);
      expect(ms(notice.deadline) - started).toBeLessThanOrEqual(DEADLINE_MS + 500);
      expect(await observer.next("unhook")).toMatchObject({ reason: UnhookReason.DEVICE_MANAGER, deadline: notice.deadline });
      for (const session of [controller, observer]) {
        const change = await session.next("vmChange", (c) => c.type === VmChangeType.UNHOOK_PENDING);
        expect(ms(change.unhookDeadline)).toBe(ms(notice.deadline));
      }
      const pending = await watch.queue.take((r) => r.change?.type === VmChangeType.UNHOOK_PENDING, "UNHOOK_PENDING");
      expect(pending.change!.vm?.state).toBe(State.UNHOOK_PENDING);
      expect(ms(pending.change!.unhookDeadline)).toBe(ms(notice.deadline));

      // The controller undoes its own changes with ordinary commands while the unhook is pending.
      const vmName = h.vmName(COOPERATIVE);
      const vcpu = (n: number): string => h.vcpuName(COOPERATIVE, n);
      const nops = (n: number): Uint8Array => new Uint8Array(n).fill(SPOTS.NOP);
      await controller.ok({ case: "writePhysicalMemory", value: { vm: vmName, gpa: SPOTS.BP_GPA, data: nops(2) } });
      await controller.ok({ case: "writePhysicalMemory", value: { vm: vmName, gpa: SPOTS.BP2_GPA, data: nops(1) } });
      await controller.ok({ case: "writePhysicalMemory", value: { vm: vmName, gpa: SPOTS.PATCH_GPA, data: nops(4) } });
      await controller.ok({ case: "setPageAccess", value: { vm: vmName, entries: [{ gpa: SPOTS.PF_GPA, access: 7 }, { gpa: SPOTS.PF2_GPA, access: 7 }] } });
      await controller.ok({ case: "controlCr", value: { name: vcpu(0), cr: 3, enable: false } });
      await controller.ok({ case: "controlMsr", value: { name: vcpu(1), msr: SPOTS.MSR_LSTAR, enable: false } });
      for (const n of [0, 1]) {
        for (const event of [EventType.BREAKPOINT, EventType.PF]) await controller.ok({ case: "controlVcpuEvents", value: { name: vcpu(n), event, enable: false } });
      }
      await controller.ok({ case: "controlVcpuEvents", value: { name: vcpu(0), event: EventType.CR, enable: false } });
      await controller.ok({ case: "controlVcpuEvents", value: { name: vcpu(1), event: EventType.MSR, enable: false } });
      expect(h.bridge.hosts.get(uuid)!.hookLedger.isEmpty).toBe(true);
      controller.release();
      expect((await controller.closed()).code).toBe(GrpcStatus.OK);

      const outcome = await settle(pausing, "the pause", 3000);
      expect(outcome).toMatchObject({ action: "pause", preunhook: "ok", closedBy: "tool" });
      expect(outcome.durationMs).toBeLessThan(DEADLINE_MS);
      const unhooked = await capture.next();
      expect(unhooked.state).toEqual(cleanState(vm, before));
      expect(streamFailure(await observer.closed())).toMatchObject({ code: GrpcStatus.UNAVAILABLE, details: { reason: "KVMI_SESSION_LOST" } });
      expect((await watch.queue.take((r) => r.change?.type === VmChangeType.UNHOOKED, "UNHOOKED")).change?.vm?.state).toBe(State.DISCONNECTED);
      const metricsAfter = await unhookMetrics();
      expect(metricsAfter.count - metricsBefore.count).toBe(1);
      expect(metricsAfter.sum - metricsBefore.sum).toBeLessThan(DEADLINE_MS / 1000);
      watch.cancel();
    } finally {
      capture.dispose();
    }
    await resume(COOPERATIVE);
  });

  it("closes at once when no controller is attached", async () => {
    const metricsBefore = await unhookMetrics();
    const outcome = await settle(h.vms[SILENT]!.runAction("pause"), "the pause");
    expect(outcome).toMatchObject({ preunhook: "ok", closedBy: "tool" });
    expect(outcome.durationMs).toBeLessThan(DEADLINE_MS / 2);
    expect((await unhookMetrics()).count - metricsBefore.count).toBe(1);
    await resume(SILENT);
  });

  it("with a controller that ignores the notice: at the deadline the bridge undoes the ledger, answers pending events and closes (closedBy tool, well before QEMU's timeout)", async () => {
    const vm = h.vms[SILENT]!;
    const before = ramDigest(vm);
    const capture = captureAtUnhook(vm);
    try {
      const controller = await h.attach(SILENT, Role.CONTROLLER);
      await plant(controller, SILENT);
      // Two events the controller never answers: a CR3 write on vCPU 0, a breakpoint on vCPU 1.
      const cr3 = vm.guest.vcpus[0]!.state.sregs.cr3;
      const write = vm.guest.vcpus[0]!.writeCr(3, cr3 + 0x1000n);
      const bps = breakpointsDelivered(SILENT, 1);
      const run = vm.guest.vcpus[1]!.executeAt(SPOTS.BP2_GPA);
      await controller.event((e) => e.type === EventType.CR);
      await controller.event((e) => e.type === EventType.BREAKPOINT);
      const scrape = await h.metrics();
      const autoBefore = scrape.value("kvmi_bridge_event_auto_replies_total", { reason: "unhook" });
      const metricsBefore = await unhookMetrics();

      const started = Date.now();
      const pausing = vm.runAction("pause");
      const notice = await controller.next("unhook");
      expect(ms(notice.deadline) - started).toBeGreaterThan(DEADLINE_MS - 100);
      const outcome = await settle(pausing, "the pause", DEADLINE_MS + 5000);
      expect(outcome).toMatchObject({ action: "pause", preunhook: "ok", closedBy: "tool" });
      expect(outcome.durationMs).toBeGreaterThanOrEqual(DEADLINE_MS - 50);
      expect(outcome.durationMs).toBeLessThan(DEADLINE_MS + 2000);
      expect(outcome.durationMs).toBeLessThan(QEMU_UNHOOK_TIMEOUT_MS / 2);

      // What the bridge left behind when it closed: the guest as it was before the controller.
      expect((await capture.next()).state).toEqual(cleanState(vm, before));
      // The pending events were answered: the CR3 write went through with the guest's value, the
      // breakpoint re-executed the original instruction (RETRY after the INT3 was removed).
      expect(await settle(write, "the CR3 write")).toEqual({ status: "done", value: cr3 + 0x1000n });
      expect(await settle(run, "the breakpoint")).toMatchObject({ status: "done", value: { gva: SPOTS.BP2_GPA } });
      expect(breakpointsDelivered(SILENT, 1) - bps, "#BP injected into the guest").toBe(0);
      expect(streamFailure(await controller.closed())).toMatchObject({ code: GrpcStatus.UNAVAILABLE, details: { reason: "KVMI_SESSION_LOST" } });
      const after = await h.metrics();
      expect(after.value("kvmi_bridge_event_auto_replies_total", { reason: "unhook" }) - autoBefore).toBe(2);
      const metricsAfter = await unhookMetrics();
      expect(metricsAfter.count - metricsBefore.count).toBe(1);
      expect(metricsAfter.sum - metricsBefore.sum).toBeGreaterThanOrEqual((DEADLINE_MS - 50) / 1000);
    } finally {
      capture.dispose();
    }
    await resume(SILENT);
    // Put CR3 back (the paused guest runs again; nothing intercepts any more).
    await settle(vm.guest.vcpus[0]!.writeCr(3, vm.guest.vcpus[1]!.state.sregs.cr3), "CR3 back");
  });

  it("closes as soon as the controller goes away during the deadline, with its ledger undone and its breakpoint re-executed", async () => {
    const vm = h.vms[SILENT]!;
    const before = ramDigest(vm);
    const capture = captureAtUnhook(vm);
    try {
      const controller = await h.attach(SILENT, Role.CONTROLLER);
      await plant(controller, SILENT);
      const bps = breakpointsDelivered(SILENT, 1);
      const run = vm.guest.vcpus[1]!.executeAt(SPOTS.BP2_GPA);
      await controller.event((e) => e.type === EventType.BREAKPOINT);
      const pausing = vm.runAction("pause");
      await controller.next("unhook");
      controller.cancel();
      const outcome = await settle(pausing, "the pause", 3000);
      expect(outcome).toMatchObject({ preunhook: "ok", closedBy: "tool" });
      expect(outcome.durationMs).toBeLessThan(DEADLINE_MS);
      expect((await capture.next()).state).toEqual(cleanState(vm, before));
      // The breakpoint pending when the controller left: the original instruction, not a #BP.
      expect.soft(await settle(run, "the breakpoint"), "the vCPU stopped at the breakpoint").toMatchObject({ status: "done", value: { gva: SPOTS.BP2_GPA } });
      expect.soft(breakpointsDelivered(SILENT, 1) - bps, "#BP injected into the guest").toBe(0);
    } finally {
      capture.dispose();
    }
    await resume(SILENT);
  });

  it("does not turn a breakpoint hit during the unhook window into a #BP in the guest", async () => {
    const vm = h.vms[SILENT]!;
    const controller = await h.attach(SILENT, Role.CONTROLLER);
    await plant(controller, SILENT);
    const bps = breakpointsDelivered(SILENT, 1);
    const pausing = vm.runAction("pause");
    await controller.next("unhook");
    // The guest still runs until the unhook completes; it reaches the controller's INT3 now.
    const run = vm.guest.vcpus[1]!.executeAt(SPOTS.BP2_GPA);
    // The controller may get the event (it is still in charge until the deadline) or not; either
    // way the guest must end up executing its own instruction, never a #BP it did not ask for.
    const forwarded = await controller.event((e) => e.type === EventType.BREAKPOINT, 300).catch(() => undefined);
    expect(await settle(pausing, "the pause", DEADLINE_MS + 5000)).toMatchObject({ closedBy: "tool" });
    const outcome = await settle(run, "the instruction at the breakpoint");
    expect(breakpointsDelivered(SILENT, 1) - bps, `#BP injected into the guest (event forwarded: ${forwarded !== undefined})`).toBe(0);
    expect(outcome).toMatchObject({ status: "done", value: { gva: SPOTS.BP2_GPA } });
    await resume(SILENT);
  });

  it("refuses new sessions while the unhook is pending (UNAVAILABLE VM_UNHOOKING) and accepts them after the re-hook", async () => {
    const controller = await h.attach(SILENT, Role.CONTROLLER);
    const pausing = h.vms[SILENT]!.runAction("pause");
    await controller.next("unhook");
    const late = h.client.openSession();
    await expect(late.attach(h.vmName(SILENT), Role.OBSERVER)).rejects.toMatchObject({ code: GrpcStatus.UNAVAILABLE });
    expect(streamFailure(await late.closed()).details.reason).toBe("VM_UNHOOKING");
    controller.release();
    expect(await settle(pausing, "the pause")).toMatchObject({ closedBy: "tool" });
    const generation = await resume(SILENT);
    const again = await h.attach(SILENT, Role.OBSERVER);
    expect(again.attached?.vm?.generation).toBe(BigInt(generation));
  });
});

describe("ReleaseVm (the operator's unhook)", () => {
  it("gives the controller the grace period, then undoes its ledger and closes; QEMU reconnects by itself", async () => {
    const vm = h.vms[COOPERATIVE]!;
    let generation = 0;
    const before = ramDigest(vm);
    const capture = captureAtUnhook(vm);
    try {
      const controller = await h.attach(COOPERATIVE, Role.CONTROLLER);
      await plant(controller, COOPERATIVE);
      generation = generationOf(COOPERATIVE);
      const started = Date.now();
      const releasing = h.client.unary("releaseVm", { name: h.vmName(COOPERATIVE), gracePeriod: { seconds: 0n, nanos: 300_000_000 } });
      const notice = await controller.next("unhook");
      expect(notice.reason).toBe(UnhookReason.OPERATOR);
      expect(ms(notice.deadline) - started).toBeGreaterThan(200);
      expect(ms(notice.deadline) - started).toBeLessThanOrEqual(800);
      const { vm: released } = await releasing;
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
      expect(released).toMatchObject({ state: State.DISCONNECTED, generation: BigInt(generation) });
      expect((await capture.next()).state).toEqual(cleanState(vm, before));
      expect(streamFailure(await controller.closed()).code).toBe(GrpcStatus.UNAVAILABLE);
    } finally {
      capture.dispose();
    }
    await h.waitHooked(COOPERATIVE, generation + 1);
  });

  it("returns as soon as the controller releases, long before a 10 s grace period", async () => {
    const generation = generationOf(COOPERATIVE);
    const controller = await h.attach(COOPERATIVE, Role.CONTROLLER);
    const started = Date.now();
    const releasing = h.client.unary("releaseVm", { name: h.vmName(COOPERATIVE) }, { deadlineMs: 15_000 });
    expect((await controller.next("unhook")).reason).toBe(UnhookReason.OPERATOR);
    controller.release();
    expect((await releasing).vm?.state).toBe(State.DISCONNECTED);
    expect(Date.now() - started).toBeLessThan(3000);
    await h.waitHooked(COOPERATIVE, generation + 1);
  });
});

describe("state after the flows", () => {
  it("leaves no host, session or ledger behind", async () => {
    await h.closeSessions();
    for (const i of [COOPERATIVE, SILENT]) {
      const host = h.bridge.hosts.get(h.vms[i]!.uuid)!;
      expect(host.sessions).toEqual([]);
      expect(host.hookLedger.isEmpty).toBe(true);
      expect(guestState(h.vms[i]!)).toEqual(cleanState(h.vms[i]!, ramDigest(h.vms[i]!)));
    }
  });
});
