// SPDX-License-Identifier: Apache-2.0
/**
 * Faults on the device manager's side, with a bystander VM that must not notice any of them:
 *
 * - QEMU dies (its socket drops without PREUNHOOK) while commands are in flight and while an event
 *   waits for the controller: the commands fail at once with UNAVAILABLE, the sessions end
 *   UNAVAILABLE (KVMI_SESSION_LOST), nothing stays pending, and the VM hooks again cleanly;
 * - the same VM hooks again while clients are attached: after a guest reset (a new boot), and on a
 *   second connection for the same UUID while the first is still hooked;
 * - a controller's breakpoint must not outlive a socket drop of the same boot.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EventType, State } from "@kvmi/proto";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import {
  CONTINUE,
  E2E_DIALECT,
  expectGrpcError,
  GrpcStatus,
  Role,
  settle,
  startHarness,
  streamFailure,
  waitUntil,
} from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";
import { prepareGuest, SPOTS } from "../support/fault-tools.js";

const VICTIM = 0;
const BYSTANDER = 1;
/** A VM whose QEMU does not reconnect by itself (so a second QEMU for its UUID is not kicked out again). */
const LONELY = 2;

let h: Harness;
let bystander: SessionClient;

const uuidOf = (i: number): string => h.vms[i]!.uuid;

beforeAll(async () => {
  h = await startHarness({ vms: [{}, {}, { reconnectMs: 60_000 }] });
  for (const vm of h.vms) prepareGuest(vm);
  // Not through h.attach: closeSessions() after each test must leave the bystander attached.
  bystander = await h.client.attach(h.vmName(BYSTANDER), Role.CONTROLLER);
  await bystander.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(BYSTANDER, 0), event: EventType.HYPERCALL, enable: true } });
});

afterEach(async () => {
  for (const vm of h.vms) if (vm.guest.runState === "paused") vm.guest.resume();
  // Sessions a failed test left behind (not the bystander's: closeSessions() would wait for it too).
  for (const host of h.bridge.hosts.all()) {
    if (host.uuid === uuidOf(BYSTANDER)) continue;
    for (const session of host.sessions) await host.detach(session, "test cleanup");
  }
});

afterAll(async () => {
  await h?.stop();
});

/** The bystander VM still answers commands and delivers events to its controller. */
async function expectBystanderServed(): Promise<void> {
  expect(await bystander.ok({ case: "getVmInfo", value: { vm: h.vmName(BYSTANDER) } })).toMatchObject({ case: "getVmInfo", value: { vcpuCount: 2 } });
  const call = h.vms[BYSTANDER]!.guest.vcpus[0]!.hypercall(34n, 24n, 0n);
  const event = await bystander.event((e) => e.type === EventType.HYPERCALL);
  bystander.reply(event, CONTINUE);
  expect(await settle(call, "the bystander's VMCALL")).toEqual({ status: "done", value: 0n });
  expect(bystander.queue.ended).toBeUndefined();
}

async function expectDisconnected(i: number): Promise<void> {
  await waitUntil(async () => (await h.client.unary("getVm", { name: h.vmName(i) })).vm?.state === State.DISCONNECTED, `VM ${i} disconnected`);
  expect(h.bridge.hosts.get(uuidOf(i))).toBeUndefined();
}

describe("QEMU dies", () => {
  it("mid-command: in-flight commands fail at once with UNAVAILABLE, sessions end, nothing stays pending; the VM hooks again cleanly", async () => {
    const vm = h.vms[VICTIM]!;
    const controller = await h.attach(VICTIM, Role.CONTROLLER);
    const channel = h.bridge.hosts.get(vm.uuid)!.channel;
    await vm.guest.stop(); // vCPU commands now wait in the kernel
    for (const n of [0, 1]) controller.send({ case: "command", value: { id: BigInt(100 + n), request: { case: "getRegisters", value: { name: h.vcpuName(VICTIM, n) } } } });
    const unary = h.client.unary("getRegisters", { name: h.vcpuName(VICTIM, 1) }, { deadlineMs: 10_000 });
    const mutating = h.client.unary("controlCr", { name: h.vcpuName(VICTIM, 0), cr: 4, enable: true }, { sessionId: controller.id, deadlineMs: 10_000 });
    await waitUntil(() => channel.pendingCommands >= 4, "four commands in flight");

    const killed = Date.now();
    await vm.deviceManager.stop(); // QEMU killed: the socket drops, no PREUNHOOK
    const failed = await expectGrpcError(unary, GrpcStatus.UNAVAILABLE);
    expect(failed.details.reason).toBe("KVMI_SESSION_LOST");
    await expectGrpcError(mutating, GrpcStatus.UNAVAILABLE);
    expect(Date.now() - killed).toBeLessThan(2000);
    const ended = streamFailure(await controller.closed());
    expect(ended).toMatchObject({ code: GrpcStatus.UNAVAILABLE, details: { reason: "KVMI_SESSION_LOST", vm: vm.uuid } });
    // Any result the session did deliver is an error, never a stale success.
    for (const r of controller.queue.drain()) if (r.message.case === "commandResult") expect(r.message.value.result.case).toBe("error");
    expect(channel.pendingCommands).toBe(0);
    expect(channel.isOpen).toBe(false);
    await expectDisconnected(VICTIM);
    await expectBystanderServed();

    // QEMU comes back (same boot): generation 2, a fresh host with nothing pending.
    vm.guest.resume();
    vm.deviceManager.start();
    await h.waitHooked(VICTIM, 2);
    const fresh = h.bridge.hosts.get(vm.uuid)!;
    expect(fresh.channel).not.toBe(channel);
    expect(fresh.sessions).toEqual([]);
    expect(fresh.channel.pendingCommands).toBe(0);
    const again = await h.attach(VICTIM, Role.CONTROLLER);
    expect((await again.ok({ case: "getRegisters", value: { name: h.vcpuName(VICTIM, 1) } })).case).toBe("getRegisters");
    again.release();
    await again.closed();
  });

  it("mid-event: the blocked vCPU is released, the controller's session ends, the re-hooked VM has no stale event or interception", async () => {
    const vm = h.vms[VICTIM]!;
    const controller = await h.attach(VICTIM, Role.CONTROLLER);
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(VICTIM, 0), event: EventType.CR, enable: true } });
    await controller.ok({ case: "controlCr", value: { name: h.vcpuName(VICTIM, 0), cr: 3, enable: true } });
    const cr3 = vm.guest.vcpus[0]!.state.sregs.cr3;
    const write = vm.guest.vcpus[0]!.writeCr(3, cr3 + 0x1000n);
    const event = await controller.event((e) => e.type === EventType.CR);

    await vm.deviceManager.stop();
    // The kernel lets the vCPU go when the tool disappears; the guest is not stuck.
    expect(await settle(write, "the CR3 write after the socket dropped")).toMatchObject({ status: "done" });
    expect(streamFailure(await controller.closed()).code).toBe(GrpcStatus.UNAVAILABLE);
    controller.reply(event, CONTINUE, { newVal: cr3 }); // into a closed stream: nothing happens
    await expectDisconnected(VICTIM);
    await expectBystanderServed();

    vm.deviceManager.start();
    await h.waitHooked(VICTIM, 3);
    const observer = await h.attach(VICTIM, Role.OBSERVER);
    const now = vm.guest.vcpus[0]!.state.sregs.cr3;
    expect(await settle(vm.guest.vcpus[0]!.writeCr(3, cr3), "MOV CR3 on the re-hooked VM")).toEqual({ status: "done", value: cr3 });
    expect(now).not.toBe(0n);
    await observer.queue.expectNone((r) => r.message.case === "event", 50, "an event on the re-hooked VM");
    observer.release();
    await observer.closed();
  });

  it("does not leave a controller's breakpoint in the guest when the socket of the same boot drops and the VM hooks again", async () => {
    const vm = h.vms[VICTIM]!;
    const controller = await h.attach(VICTIM, Role.CONTROLLER);
    await controller.ok({ case: "writePhysicalMemory", value: { vm: h.vmName(VICTIM), gpa: SPOTS.BP2_GPA, data: Uint8Array.of(SPOTS.INT3) } });
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(VICTIM, 1), event: EventType.BREAKPOINT, enable: true } });
    const startTime = vm.deviceManager.vmStartTime;
    await vm.deviceManager.stop();
    await controller.closed();
    vm.deviceManager.start();
    await h.waitHooked(VICTIM, 4);
    expect(vm.deviceManager.vmStartTime).toBe(startTime); // the same boot: guest memory is the same
    // Nobody intercepts breakpoints any more, so an INT3 left behind would become a #BP in the guest.
    await waitUntil(() => {
      const byte = vm.guest.memory.read(SPOTS.BP2_GPA, 1);
      return byte.ok && byte.bytes[0] === SPOTS.NOP;
    }, "the INT3 of the previous connection removed", { timeoutMs: 1000 }).catch(() => undefined);
    expect(vm.guest.memory.read(SPOTS.BP2_GPA, 1), "the previous connection's INT3 is still in the guest").toMatchObject({ ok: true, bytes: Uint8Array.of(SPOTS.NOP) });
  });
});

describe("the same VM hooks again while clients are attached", () => {
  it("after a guest reset: the old sessions end, their session id controls nothing, the new generation starts clean", async () => {
    const vm = h.vms[VICTIM]!;
    // Whatever the previous test left in RAM, a reset zeroes it.
    const generation = Number((await h.client.unary("getVm", { name: h.vmName(VICTIM) })).vm!.generation);
    const controller = await h.attach(VICTIM, Role.CONTROLLER);
    const observer = await h.attach(VICTIM, Role.OBSERVER);
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(VICTIM, 0), event: EventType.HYPERCALL, enable: true } });
    const watch = h.client.watchVms(h.vmName(VICTIM));

    await vm.reset();
    for (const session of [controller, observer]) {
      expect(streamFailure(await session.closed())).toMatchObject({ code: GrpcStatus.UNAVAILABLE, details: { reason: "KVMI_SESSION_LOST" } });
    }
    const rehooked = await watch.queue.take((r) => r.change?.vm?.generation === BigInt(generation + 1) && r.change.vm.state === State.HOOKED, "the re-hook");
    expect(rehooked.change?.vm).toMatchObject({ controllerAttached: false, observerCount: 0 });
    await h.waitHooked(VICTIM, generation + 1);
    // The old controller's session id means nothing to the new generation.
    const refused = await expectGrpcError(
      h.client.unary("controlVcpuEvents", { name: h.vcpuName(VICTIM, 0), event: EventType.HYPERCALL, enable: false }, { sessionId: controller.id }),
      GrpcStatus.PERMISSION_DENIED,
    );
    expect(refused.details.reason).toBe("NOT_CONTROLLER");
    const next = await h.attach(VICTIM, Role.CONTROLLER);
    expect(next.attached?.vm?.generation).toBe(BigInt(generation + 1));
    expect(await settle(vm.guest.vcpus[0]!.hypercall(34n, 24n, 0n), "VMCALL after the reset")).toMatchObject({ status: "done" });
    await next.queue.expectNone((r) => r.message.case === "event", 50, "an event from the previous generation's settings");
    watch.cancel();
    next.release();
    await next.closed();
    await expectBystanderServed();
  });

  it("on a second connection for the same UUID: the first is closed, its sessions end, the new one serves the new QEMU", async () => {
    const first = h.vms[LONELY]!;
    const controller = await h.attach(LONELY, Role.CONTROLLER);
    const oldChannel = h.bridge.hosts.get(first.uuid)!.channel;
    let second: EmulatedVm | undefined;
    try {
      second = createEmulatedVm({ kind: "unix", path: h.kvmiPath }, { uuid: first.uuid, dialect: E2E_DIALECT, name: "e2e-2-restarted", vcpus: 2, memoryMiB: 8, workload: false, reconnectMs: 60_000 });
      second.guest.memory.write(0x5000n, Uint8Array.of(0x5e, 0xc0, 0x0d));
      second.start();
      expect(streamFailure(await controller.closed())).toMatchObject({ code: GrpcStatus.UNAVAILABLE, details: { reason: "KVMI_SESSION_LOST" } });
      await h.waitHooked(LONELY, 2);
      expect(oldChannel.isOpen).toBe(false);
      await waitUntil(() => !first.deviceManager.isHooked, "the first QEMU to see its socket closed");
      // Commands reach the new QEMU's guest.
      const read = await h.client.unary("readPhysicalMemory", { vm: h.vmName(LONELY), gpa: 0x5000n, size: 3 });
      expect([...read.data]).toEqual([0x5e, 0xc0, 0x0d]);
      const next = await h.attach(LONELY, Role.CONTROLLER);
      expect(next.attached?.vm).toMatchObject({ generation: 2n, displayName: "e2e-2-restarted" });
      next.release();
      await next.closed();
      await expectBystanderServed();
    } finally {
      await second?.stop();
    }
  });
});
