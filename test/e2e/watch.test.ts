// SPDX-License-Identifier: Apache-2.0
/**
 * WatchVms across the whole lifecycle, end to end: EXISTING for every known VM first, then the
 * changes in the order they happen as the device manager pauses (PREUNHOOK → UNHOOK event → the
 * bridge tells the controller and closes after its Release), resumes, the operator releases the
 * VM (ReleaseVm), and the guest resets: UNHOOK_PENDING (with the deadline), UNHOOKED, and REHOOKED
 * with the generation one higher each time.
 */
import http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { State, UnhookReason, VmChangeType, WatchVmsRequestSchema } from "@kvmi/proto";
import type { VmChange, WatchVmsResponse } from "@kvmi/proto";
import { GrpcStatus, Role, settle, startBareCall, startHarness, streamFailure, StreamQueue, waitUntil, withTimeout } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";

const A = 0;
const B = 1;
/** --unhook-deadline-ms of the harness. */
const UNHOOK_DEADLINE_MS = 2000;

let h: Harness;

beforeAll(async () => {
  h = await startHarness({ vms: 2 });
});

afterAll(async () => {
  await h?.stop();
});

/** The next change of VM `i` in arrival order (changes of other VMs are left in the queue). */
async function nextChange(queue: StreamQueue<WatchVmsResponse>, i: number): Promise<VmChange> {
  const uuid = h.vms[i]!.uuid;
  const response = await queue.take((r) => r.change?.vm?.uuid === uuid, `the next change of VM ${i}`);
  return response.change!;
}

const ms = (t: { seconds: bigint; nanos: number } | undefined): number => Number(t!.seconds) * 1000 + t!.nanos / 1e6;

describe("WatchVms", () => {
  it("sends EXISTING first, then UNHOOK_PENDING, UNHOOKED and REHOOKED (generation + 1) through pause/resume, ReleaseVm and reset", async () => {
    const all = h.client.watchVms();
    const onlyB = h.client.watchVms(h.vmName(B));
    const existing = [await all.queue.take(() => true, "first change"), await all.queue.take(() => true, "second change")];
    expect(existing.map((r) => r.change!.type)).toEqual([VmChangeType.EXISTING, VmChangeType.EXISTING]);
    expect(existing.map((r) => r.change!.vm!.uuid).sort()).toEqual(h.vms.map((v) => v.uuid).sort());
    expect(existing.every((r) => r.change!.vm!.state === State.HOOKED && r.change!.vm!.generation === 1n)).toBe(true);
    const existingB = await onlyB.queue.take(() => true, "B's EXISTING");
    expect(existingB.change).toMatchObject({ type: VmChangeType.EXISTING, vm: { uuid: h.vms[B]!.uuid } });

    // Sessions attaching change the snapshot: STATE_CHANGED.
    const controller = await h.attach(A, Role.CONTROLLER);
    expect(await nextChange(all.queue, A)).toMatchObject({ type: VmChangeType.STATE_CHANGED, vm: { controllerAttached: true, observerCount: 0 } });
    const observer = await h.attach(A, Role.OBSERVER);
    expect(await nextChange(all.queue, A)).toMatchObject({ type: VmChangeType.STATE_CHANGED, vm: { controllerAttached: true, observerCount: 1 } });
    expect(await controller.next("vmChange")).toMatchObject({ type: VmChangeType.STATE_CHANGED, vm: { observerCount: 1 } });
    observer.release();
    expect(await nextChange(all.queue, A)).toMatchObject({ type: VmChangeType.STATE_CHANGED, vm: { controllerAttached: true, observerCount: 0 } });

    // 1. The device manager pauses A: PREUNHOOK → UNHOOK event → the controller is told, releases.
    const pausing = h.vms[A]!.runAction("pause");
    const notice = await controller.next("unhook");
    expect(notice).toMatchObject({ vm: h.vmName(A), reason: UnhookReason.DEVICE_MANAGER });
    const pending = await nextChange(all.queue, A);
    expect(pending.type).toBe(VmChangeType.UNHOOK_PENDING);
    expect(pending.vm?.state).toBe(State.UNHOOK_PENDING);
    expect(ms(pending.unhookDeadline)).toBe(ms(notice.deadline));
    expect(ms(pending.unhookDeadline) - ms(pending.changeTime)).toBeGreaterThan(UNHOOK_DEADLINE_MS - 100);
    expect(ms(pending.unhookDeadline) - ms(pending.changeTime)).toBeLessThanOrEqual(UNHOOK_DEADLINE_MS + 100);
    const sessionChange = await controller.next("vmChange", (c) => c.type === VmChangeType.UNHOOK_PENDING);
    expect(sessionChange).toMatchObject({ type: VmChangeType.UNHOOK_PENDING, vm: { uuid: h.vms[A]!.uuid } });
    controller.release();
    expect((await controller.closed()).code).toBe(GrpcStatus.OK);
    // The controller released: the bridge undoes what is left (RELEASING), then closes the socket.
    expect(await nextChange(all.queue, A)).toMatchObject({ type: VmChangeType.STATE_CHANGED, vm: { state: State.RELEASING } });
    const unhooked = await nextChange(all.queue, A);
    expect(unhooked).toMatchObject({ type: VmChangeType.UNHOOKED, vm: { state: State.DISCONNECTED, generation: 1n } });
    expect(await settle(pausing, "the pause")).toMatchObject({ action: "pause", preunhook: "ok", closedBy: "tool" });
    expect(h.vms[A]!.guest.runState).toBe("paused");

    // 2. Resume: QEMU reconnects and the bridge hooks A again.
    h.vms[A]!.resume();
    const resumed = await nextChange(all.queue, A);
    expect(resumed).toMatchObject({ type: VmChangeType.REHOOKED, vm: { state: State.HOOKED, generation: 2n } });

    // 3. The operator releases A (no controller: nothing to wait for); QEMU reconnects by itself.
    const { vm: released } = await h.client.unary("releaseVm", { name: h.vmName(A) });
    expect(released).toMatchObject({ state: State.DISCONNECTED, generation: 2n });
    const operator = await nextChange(all.queue, A);
    expect(operator.type).toBe(VmChangeType.UNHOOK_PENDING);
    // No grace_period in the request: 10 s (vm.proto), whatever the bridge's own unhook deadline.
    expect(ms(operator.unhookDeadline) - ms(operator.changeTime)).toBeGreaterThan(9_900);
    expect(ms(operator.unhookDeadline) - ms(operator.changeTime)).toBeLessThanOrEqual(10_100);
    expect(await nextChange(all.queue, A)).toMatchObject({ type: VmChangeType.STATE_CHANGED, vm: { state: State.RELEASING } });
    expect((await nextChange(all.queue, A)).type).toBe(VmChangeType.UNHOOKED);
    expect(await nextChange(all.queue, A)).toMatchObject({ type: VmChangeType.REHOOKED, vm: { state: State.HOOKED, generation: 3n } });

    // 4. Guest reset: QEMU unhooks without PREUNHOOK and reconnects with a new start time.
    const startTime = h.vms[A]!.deviceManager.vmStartTime;
    await h.vms[A]!.reset();
    expect((await nextChange(all.queue, A)).type).toBe(VmChangeType.UNHOOKED);
    const reset = await nextChange(all.queue, A);
    expect(reset).toMatchObject({ type: VmChangeType.REHOOKED, vm: { state: State.HOOKED, generation: 4n } });
    expect(reset.vm!.startTime!.seconds).toBeGreaterThan(startTime);
    expect(h.vms[A]!.deviceManager.vmStartTime).toBe(reset.vm!.startTime!.seconds);

    // B never changed, and the filtered watch saw nothing of A.
    await all.queue.expectNone((r) => r.change?.vm?.uuid === h.vms[B]!.uuid, 10, "a change of B");
    expect(onlyB.queue.pending).toEqual([]);
    expect((await h.waitHooked(A, 4)).generation).toBe(4n);
    all.cancel();
    onlyB.cancel();
    expect((await all.queue.closed()).code).toBe(GrpcStatus.CANCELLED);
  });

  it("accepts a VM that is not known yet, and rejects a malformed name with INVALID_ARGUMENT", async () => {
    const unknown = h.client.watchVms("vms/00000000-0000-4000-8000-000000000000");
    await unknown.queue.expectNone(() => true, 50, "a change of an unknown VM");
    expect(unknown.queue.ended).toBeUndefined();
    unknown.cancel();
    const malformed = h.client.watchVms("not-a-vm");
    const failure = streamFailure(await malformed.queue.closed());
    expect(failure.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "name" })]);
  });

  it("drops a watcher that stays behind or falls too far behind; watchers that read ride out a burst", async () => {
    const readerOfB = h.client.watchVms(h.vmName(B));
    await readerOfB.queue.take((r) => r.change?.type === VmChangeType.EXISTING, "B's EXISTING");
    const reader = h.client.watchVms();
    await reader.queue.take((r) => r.change?.type === VmChangeType.EXISTING, "an EXISTING");
    const a = h.vms[A]!.uuid;
    // State changes of A in one turn, as many VMs changing at once would send them.
    const burst = (n: number): number => {
      for (let i = 0; i < n; i++) h.bridge.registry.update(a, {});
      return performance.now();
    };
    let seen = 0;
    const readerSaw = (n: number): Promise<unknown> =>
      waitUntil(() => ((seen += reader.queue.drain().filter((r) => r.change?.vm?.uuid === a).length) >= n ? true : undefined), `${n} changes of A`, { intervalMs: 20 });

    // A watcher that takes nothing at all (its flow-control window is 0): everything backs up.
    // The bridge drops it with RESOURCE_EXHAUSTED, which cannot reach it behind the unsent
    // changes, and resets its stream 5 s later (UNREAD_STATUS_GRACE_MS).
    const silent = silentWatcher();
    await new Promise((resolve) => setTimeout(resolve, 200));
    // 300 at once: the reader takes them all; the silent watcher is left 300 behind, within the
    // memory bound, so it could still catch up.
    burst(300);
    await readerSaw(300);
    // Still behind 2 s later, at the next change: not reading, dropped then (not at the burst).
    await new Promise((resolve) => setTimeout(resolve, 2_100));
    const nextChangeAt = burst(1);
    await readerSaw(301);
    const resetAt = await withTimeout(silent.reset, 15_000, "the silent watcher's stream reset");
    expect(resetAt.code).toBe(http2.constants.NGHTTP2_CANCEL);
    expect(resetAt.at - nextChangeAt).toBeGreaterThan(4_000);

    // 2000 at once: past the memory bound (1024 changes behind), dropped within the burst (no
    // change follows it). The reader of B saw none of A's changes and still gets B's.
    reader.cancel();
    const silent2 = silentWatcher();
    await new Promise((resolve) => setTimeout(resolve, 200));
    burst(2000);
    expect((await withTimeout(silent2.reset, 15_000, "the second silent watcher's stream reset")).code).toBe(http2.constants.NGHTTP2_CANCEL);
    const observer = await h.attach(B, Role.OBSERVER);
    expect(await nextChange(readerOfB.queue, B)).toMatchObject({ type: VmChangeType.STATE_CHANGED, vm: { observerCount: 1 } });
    observer.release();
    readerOfB.cancel();
  }, 60_000);
});

/**
 * WatchVms from a plain HTTP/2 client whose flow-control window is 0: it takes no message at all
 * (a grpc-js client that is not read still takes a little and frees its window now and then).
 * `reset` resolves with the RST_STREAM code the bridge ends the stream with, and when.
 */
function silentWatcher(): { reset: Promise<{ code: number; at: number }> } {
  const session = http2.connect(`http://${h.bridge.grpcTarget}`, { settings: { initialWindowSize: 0 } });
  session.on("error", () => undefined);
  const stream = startBareCall(session, "WatchVms", WatchVmsRequestSchema, {});
  stream.on("error", () => undefined);
  const reset = new Promise<{ code: number; at: number }>((resolve) => stream.on("close", () => resolve({ code: stream.rstCode ?? -1, at: performance.now() }))).finally(() =>
    session.close(),
  );
  return { reset };
}
