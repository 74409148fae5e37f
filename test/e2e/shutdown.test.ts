// SPDX-License-Identifier: Apache-2.0
/**
 * Graceful shutdown end to end: `bridge.stop()` while a controller is attached and one of its
 * events is pending. Every session gets an UnhookNotice (BRIDGE_SHUTDOWN) with the deadline, health
 * turns NOT_SERVING, and then either the controller cleans up itself and releases (the bridge closes
 * at once), or the deadline passes and the bridge undoes the controller's ledger (the INT3 it
 * planted is replaced by the original byte), answers the pending event so that the guest goes on,
 * and ends the streams.
 */
import { afterEach, describe, expect, it } from "vitest";
import { Metadata } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import { EventType, UnhookReason, State, VmChangeType } from "@kvmi/proto";
import { GrpcStatus, MetricsScrape, RETRY, Role, settle, startHarness, streamFailure, WAIT_MS } from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";

const BP_GPA = 0x30000n;
const NOP = 0x90;
const INT3 = 0xcc;

let h: Harness | undefined;

afterEach(async () => {
  await h?.stop();
  h = undefined;
});

function health(harness: Harness): Promise<string> {
  const method = healthService.Check!;
  return new Promise((resolve, reject) => {
    harness.client.raw.makeUnaryRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      { service: "" },
      new Metadata(),
      { deadline: Date.now() + WAIT_MS },
      (error, response) => (error ? reject(error) : resolve((response as { status: string }).status)),
    );
  });
}

/** Starts a bridge with one VM, a controller that planted an INT3 at BP_GPA, and an observer. */
async function withPendingBreakpoint(unhookDeadlineMs: number): Promise<{ harness: Harness; controller: SessionClient; observer: SessionClient }> {
  // A long gRPC grace period: stop() must not need it (every stream ends by itself).
  const harness = await startHarness({ bridgeArgs: ["--unhook-deadline-ms", String(unhookDeadlineMs), "--shutdown-grace-ms", "10000"] });
  h = harness;
  harness.vms[0]!.guest.memory.write(BP_GPA, Uint8Array.of(NOP, NOP, NOP, NOP));
  const controller = await harness.attach(0, Role.CONTROLLER);
  const observer = await harness.attach(0, Role.OBSERVER);
  await controller.ok({ case: "writePhysicalMemory", value: { vm: harness.vmName(0), gpa: BP_GPA, data: Uint8Array.of(INT3) } });
  await controller.ok({ case: "controlVcpuEvents", value: { name: harness.vcpuName(0, 0), event: EventType.BREAKPOINT, enable: true } });
  expect(harness.vms[0]!.guest.memory.read(BP_GPA, 1)).toMatchObject({ ok: true, bytes: Uint8Array.of(INT3) });
  return { harness, controller, observer };
}

const ms = (t: { seconds: bigint; nanos: number } | undefined): number => Number(t!.seconds) * 1000 + t!.nanos / 1e6;

describe("bridge.stop()", () => {
  it("gives the controller the deadline, then undoes its ledger, answers the pending event and ends the streams", async () => {
    const { harness, controller, observer } = await withPendingBreakpoint(800);
    const vcpu = harness.vms[0]!.guest.vcpus[0]!;
    const run = vcpu.executeAt(BP_GPA);
    const event = await controller.event((e) => e.type === EventType.BREAKPOINT);
    expect(event.payload.value).toMatchObject({ gpa: BP_GPA });

    const watch = harness.client.watchVms();
    expect((await watch.queue.take(() => true, "EXISTING")).change?.type).toBe(VmChangeType.EXISTING);

    const started = Date.now();
    const stopping = harness.stopBridge();
    const notice = await controller.next("unhook");
    expect(notice).toMatchObject({ vm: harness.vmName(0), reason: UnhookReason.BRIDGE_SHUTDOWN });
    expect(ms(notice.deadline) - started).toBeGreaterThan(600);
    expect(ms(notice.deadline) - started).toBeLessThanOrEqual(1500);
    expect(await observer.next("unhook")).toMatchObject({ reason: UnhookReason.BRIDGE_SHUTDOWN, deadline: notice.deadline });
    expect(await health(harness)).toBe("NOT_SERVING");
    // The vCPU still waits: the controller has until the deadline.
    expect(vcpu.currentExit).toBe("breakpoint");

    // The controller does nothing. At the deadline the bridge restores the byte under its INT3 and
    // answers the breakpoint with RETRY, so the guest executes the original instruction.
    const outcome = await settle(run, "the guest's instruction at the breakpoint", 3000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(700);
    expect(outcome).toMatchObject({ status: "done", value: { gva: BP_GPA, insnLen: 1 } });
    expect([...(outcome as { value: { bytes: Uint8Array } }).value.bytes]).toEqual([NOP]);
    expect(harness.vms[0]!.guest.memory.read(BP_GPA, 4)).toMatchObject({ ok: true, bytes: Uint8Array.of(NOP, NOP, NOP, NOP) });
    expect(vcpu.deliveredExceptions.some((e) => e.nr === 3)).toBe(false);

    for (const session of [controller, observer]) {
      const end = streamFailure(await session.closed(3000));
      expect(end.code).toBe(GrpcStatus.UNAVAILABLE);
      expect(end.details.reason).toBe("KVMI_SESSION_LOST");
    }
    await settle(stopping, "bridge.stop()", 3000);
    expect(Date.now() - started).toBeLessThan(5000); // not the 10 s gRPC grace period
    // Watchers saw the VM go and then the stream ended, retryable.
    expect((await watch.queue.take(() => true, "UNHOOK_PENDING")).change?.type).toBe(VmChangeType.UNHOOK_PENDING);
    expect((await watch.queue.take(() => true, "RELEASING")).change?.vm?.state).toBe(State.RELEASING);
    expect((await watch.queue.take(() => true, "UNHOOKED")).change?.type).toBe(VmChangeType.UNHOOKED);
    const watchEnd = streamFailure(await watch.queue.closed());
    expect(watchEnd.code).toBe(GrpcStatus.UNAVAILABLE);
    expect(watchEnd.message).toMatch(/shutting down/);
    const scrape = new MetricsScrape(await harness.bridge.metrics.registry.metrics());
    expect(scrape.value("kvmi_bridge_event_auto_replies_total", { event: "breakpoint", reason: "shutdown" })).toBe(1);
    expect(scrape.value("kvmi_bridge_commands_total", { command: "KVMI_VM_WRITE_PHYSICAL" })).toBe(1); // the controller's; the undo writes directly
    expect(harness.bridge.hosts.all()).toEqual([]);
  });

  it("closes at once when the controller cleans up during the deadline and releases", async () => {
    const { harness, controller, observer } = await withPendingBreakpoint(10_000);
    const run = harness.vms[0]!.guest.vcpus[0]!.executeAt(BP_GPA);
    const event = await controller.event((e) => e.type === EventType.BREAKPOINT);

    const started = Date.now();
    const stopping = harness.stopBridge();
    expect((await controller.next("unhook")).reason).toBe(UnhookReason.BRIDGE_SHUTDOWN);
    // Commands still work while the unhook is pending: the controller removes its own INT3 ...
    await controller.ok({ case: "writePhysicalMemory", value: { vm: harness.vmName(0), gpa: BP_GPA, data: Uint8Array.of(NOP) } });
    // ... answers its event so that the guest re-executes the original instruction ...
    controller.reply(event, RETRY);
    expect(await settle(run, "the guest's instruction")).toMatchObject({ status: "done", value: { gva: BP_GPA } });
    // ... and releases: the bridge does not wait for the 10 s deadline.
    controller.release();
    expect((await controller.closed()).code).toBe(GrpcStatus.OK);
    await settle(stopping, "bridge.stop() after the controller's Release", 3000);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(streamFailure(await observer.closed()).code).toBe(GrpcStatus.UNAVAILABLE);
    expect(harness.vms[0]!.guest.memory.read(BP_GPA, 1)).toMatchObject({ ok: true, bytes: Uint8Array.of(NOP) });
    const scrape = new MetricsScrape(await harness.bridge.metrics.registry.metrics());
    expect(scrape.value("kvmi_bridge_event_auto_replies_total")).toBe(0);
  });
});
