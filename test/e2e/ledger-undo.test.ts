// SPDX-License-Identifier: Apache-2.0
/**
 * The hook ledger under the default policy (`release`), verified against the emulator: whatever a
 * controller changed (VM and vCPU events, CR and MSR interceptions, page restrictions, single-step,
 * memory writes with the bytes they replaced) is undone when it goes away, however it goes away:
 * killed (a controller process SIGKILLed), Release, cancel, half-close. Afterwards guest RAM is
 * byte-identical to before, every page is rwx, nothing is intercepted, UNHOOK is still enabled, no
 * event fires, and the VM stays hooked for the next controller.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EventType, State } from "@kvmi/proto";
import type { EventKind } from "@kvmi/kvm-bridge/wire";
import { e2eEventId, Role, settle, startHarness, waitUntil } from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";
import { cleanState, guestState, hookPlan, prepareGuest, ramDigest, SPOTS, startControllerProcess } from "../support/fault-tools.js";
import type { ControllerProcess } from "../support/fault-tools.js";

let h: Harness;
let child: ControllerProcess | undefined;

const vm = () => h.vms[0]!;
const host = () => h.bridge.hosts.get(vm().uuid)!;

beforeAll(async () => {
  h = await startHarness({ vms: 1, bridgeArgs: ["--event-timeout-ms", "200"] });
  prepareGuest(vm());
});

afterEach(async () => {
  await child?.stop();
  child = undefined;
  await h.closeSessions();
});

afterAll(async () => {
  await h?.stop();
});

/** The wire ids of event kinds in the e2e dialect, ascending (as the emulator's state lists them). */
const sortedEventIds = (...kinds: EventKind[]): number[] => kinds.map(e2eEventId).sort((a, b) => a - b);

/** The hooks of {@link hookPlan} (with single-step) as the emulator shows them. */
function expectHooksInPlace(before: string): void {
  const state = guestState(vm());
  expect(state.ramDigest).not.toBe(before);
  expect(state.restrictions).toEqual({ [`0x${(SPOTS.PF_GPA >> 12n).toString(16)}`]: 1, [`0x${(SPOTS.PF2_GPA >> 12n).toString(16)}`]: 5 });
  expect(state.vcpus[0]).toMatchObject({ events: sortedEventIds("BREAKPOINT", "CR", "PF"), crs: [3] });
  expect(state.vcpus[1]).toMatchObject({
    events: sortedEventIds("BREAKPOINT", "MSR", "PF"),
    msrs: [SPOTS.MSR_LSTAR],
    singlestep: true,
  });
  expect(vm().guest.memory.read(SPOTS.BP_GPA, 2)).toMatchObject({ ok: true, bytes: Uint8Array.of(SPOTS.INT3, SPOTS.INT3) });
}

/**
 * Drives every spot the controller had hooked; none may raise an event any more (the bridge would
 * answer it itself, so the proof is the event counter), and the guest's own values go through.
 * Leaves guest RAM as it was (the store writes the byte that is there).
 */
async function expectNoEventsFire(observer: SessionClient): Promise<void> {
  const before = (await h.metrics()).value("kvmi_bridge_events_total");
  const [v0, v1] = vm().guest.vcpus;
  const cr3 = v0!.state.sregs.cr3;
  const lstar = v1!.state.msrs.read(SPOTS.MSR_LSTAR)!;
  const byte = vm().guest.memory.read(SPOTS.PF_GPA, 1);
  if (!byte.ok) throw new Error("PF page unreadable");
  expect(await settle(v0!.executeAt(SPOTS.BP_GPA), "execution at the old breakpoint", 1000)).toMatchObject({ status: "done", value: { gva: SPOTS.BP_GPA } });
  expect(await settle(v1!.executeAt(SPOTS.BP2_GPA), "execution at the old breakpoint", 1000)).toMatchObject({ status: "done", value: { gva: SPOTS.BP2_GPA } });
  expect(await settle(v0!.writeCr(3, cr3), "MOV CR3", 1000)).toEqual({ status: "done", value: cr3 });
  expect(await settle(v1!.writeMsr(SPOTS.MSR_LSTAR, lstar), "WRMSR", 1000)).toEqual({ status: "done", value: lstar });
  expect(await settle(v0!.writeMemory({ gpa: SPOTS.PF_GPA }, byte.bytes), "store to the old read-only page", 1000)).toEqual({ status: "done", value: undefined });
  expect(await settle(v1!.writeMemory({ gpa: SPOTS.PF2_GPA }, byte.bytes), "store to the old R+X page", 1000)).toEqual({ status: "done", value: undefined });
  expect(v0!.deliveredExceptions.concat(v1!.deliveredExceptions).some((e) => e.nr === 3)).toBe(false);
  expect((await h.metrics()).value("kvmi_bridge_events_total") - before).toBe(0);
  await observer.queue.expectNone((r) => r.message.case === "event", 20, "an event after the undo");
}

describe("policy release", () => {
  it("undoes everything a killed controller process left (SIGKILL): RAM byte-identical, pages rwx, no interception, no event, VM still hooked", async () => {
    const before = ramDigest(vm());
    const observer = await h.attach(0, Role.OBSERVER);
    child = await startControllerProcess(h.bridge.grpcTarget, h.vmName(0), hookPlan(h.vmName(0), { singlestep: true }));
    expect(host().sessions.map((s) => s.role)).toEqual(["controller", "observer"]);
    expect(host().hookLedger.isEmpty).toBe(false);
    expectHooksInPlace(before);

    const killed = Date.now();
    child.child.kill("SIGKILL");
    await waitUntil(() => host().sessions.length === 1 && host().hookLedger.isEmpty, "the bridge to notice the kill and undo the ledger", { timeoutMs: 5000 });
    expect(Date.now() - killed).toBeLessThan(3000);
    expect(guestState(vm())).toEqual(cleanState(vm(), before));
    await expectNoEventsFire(observer);

    // The VM stays hooked (same generation) for the next controller.
    const { vm: record } = await h.client.unary("getVm", { name: h.vmName(0) });
    expect(record).toMatchObject({ state: State.HOOKED, generation: 1n, controllerAttached: false, observerCount: 1 });
    const next = await h.attach(0, Role.CONTROLLER);
    expect(next.attached?.vm?.controllerAttached).toBe(true);
  });

  it.each([
    ["Release", (s: SessionClient) => s.release()],
    ["cancel", (s: SessionClient) => s.cancel()],
    ["half-close", (s: SessionClient) => s.end()],
  ])("undoes everything when the controller's stream ends with %s (also re-enables UNHOOK it switched off)", async (_how, end) => {
    const before = ramDigest(vm());
    const observer = await h.attach(0, Role.OBSERVER);
    const controller = await h.attach(0, Role.CONTROLLER);
    for (const request of hookPlan(h.vmName(0), { singlestep: true })) await controller.ok(request);
    expectHooksInPlace(before);
    // Whether the bridge refuses it or not, UNHOOK must be enabled once the controller is gone.
    await controller.command({ case: "controlVmEvents", value: { vm: h.vmName(0), event: EventType.UNHOOK, enable: false } });
    end(controller);
    await controller.closed();
    await waitUntil(() => host().sessions.length === 1 && host().hookLedger.isEmpty, "the ledger undone");
    expect(guestState(vm())).toEqual(cleanState(vm(), before));
    await expectNoEventsFire(observer);
  });
});

describe("what the ledger records", () => {
  it("forgets changes the controller undid itself, keeps the first original byte under overlapping writes, ignores failed commands, and records unary writes", async () => {
    const before = ramDigest(vm());
    const controller = await h.attach(0, Role.CONTROLLER);
    const ledger = () => host().hookLedger;
    const name = h.vmName(0);
    const write = (gpa: bigint, ...bytes: number[]) => controller.ok({ case: "writePhysicalMemory", value: { vm: name, gpa, data: Uint8Array.from(bytes) } });

    // An INT3 set and removed again leaves nothing to undo.
    await write(SPOTS.BP_GPA, SPOTS.INT3);
    expect(ledger().modifiedBytes).toBe(1);
    await write(SPOTS.BP_GPA, SPOTS.NOP);
    expect(ledger().isEmpty).toBe(true);
    // A restriction lifted again, an event enabled and disabled again: nothing either.
    await controller.ok({ case: "setPageAccess", value: { vm: name, entries: [{ gpa: SPOTS.PF_GPA, access: 1 }] } });
    await controller.ok({ case: "setPageAccess", value: { vm: name, entries: [{ gpa: SPOTS.PF_GPA, access: 7 }] } });
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, 0), event: EventType.CR, enable: true } });
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, 0), event: EventType.CR, enable: false } });
    expect(ledger().isEmpty).toBe(true);
    // A command the kernel refuses changes nothing (the MMIO hole has no memory).
    const refused = await controller.command({ case: "writePhysicalMemory", value: { vm: name, gpa: 0xc000_0000n, data: Uint8Array.of(1) } });
    expect(refused.result.case).toBe("error");
    expect(ledger().isEmpty).toBe(true);

    // Overlapping writes: the original of BP_GPA stays the NOP, not the INT3 written first.
    await write(SPOTS.BP_GPA, SPOTS.INT3);
    await write(SPOTS.BP_GPA, 0x0f, 0x0b, 0xcc);
    expect(ledger().modifiedBytes).toBe(3);
    // The unary RPC with the controller's session id goes through the same ledger.
    await h.client.unary(
      "writePhysicalMemory",
      { vm: name, gpa: SPOTS.PATCH_GPA, data: Uint8Array.of(0xe9, 1, 2, 3, 4) },
      { sessionId: controller.id },
    );
    expect(ledger().modifiedBytes).toBe(8);

    controller.cancel();
    await waitUntil(() => ledger().isEmpty && host().sessions.length === 0, "the ledger undone");
    expect(ramDigest(vm())).toBe(before);
  });
});
