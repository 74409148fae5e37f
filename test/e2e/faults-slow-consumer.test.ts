// SPDX-License-Identifier: Apache-2.0
/**
 * A controller that stops reading its session stream while events pour in (a slow consumer): the
 * guest keeps running on deadlines (every vCPU operation settles, none waits longer than a bounded
 * time), every event is answered exactly once, and what the bridge holds for that client stays
 * bounded: once the client reads again it receives at most a bounded backlog (or the bridge ended
 * the session with RESOURCE_EXHAUSTED), not every event of the flood; the same for an observer.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventType, Role } from "@kvmi/proto";
import { GrpcStatus, startHarness, waitUntil } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";

const VCPUS = 4;
/** The controller's event deadline: the shortest a session may ask for. */
const EVENT_DEADLINE_MS = 10;
/** The flood: this many events, or as many as this many ms allow (a slow machine). */
const FLOOD_EVENTS = 2400;
const FLOOD_MAX_MS = 8000;
/**
 * What a paused reader may get afterwards: the bridge's own buffer (session-rpc allows 256
 * responses), HTTP/2 flow-control windows and grpc-js's read buffer; far less than the flood.
 */
const BACKLOG_BOUND = 800;

let h: Harness;

beforeAll(async () => {
  h = await startHarness({ vms: [{ vcpus: VCPUS }], bridgeArgs: ["--event-timeout-ms", "200"] });
});

afterAll(async () => {
  await h?.stop();
});

describe("slow consumer", () => {
  it("keeps the guest running and each client's backlog bounded while the controller and an observer do not read", async () => {
    const vm = h.vms[0]!;
    const controller = await h.attach(0, Role.CONTROLLER, { eventDeadlineMs: EVENT_DEADLINE_MS });
    for (let n = 0; n < VCPUS; n++) {
      await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, n), event: EventType.HYPERCALL, enable: true } });
    }
    const observer = await h.attach(0, Role.OBSERVER);
    const before = await h.metrics();
    controller.stream.pause(); // the clients stop reading
    observer.stream.pause();

    let operations = 0;
    let slowest = 0;
    const end = Date.now() + FLOOD_MAX_MS;
    await Promise.all(
      vm.guest.vcpus.map(async (vcpu) => {
        while (operations < FLOOD_EVENTS && Date.now() < end) {
          const started = Date.now();
          const outcome = await vcpu.hypercall(34n, 24n, 0n);
          slowest = Math.max(slowest, Date.now() - started);
          expect(outcome).toEqual({ status: "done", value: 0n });
          operations++;
        }
      }),
    );
    const after = await h.metrics();
    const events = after.value("kvmi_bridge_events_total", { event: "hypercall" }) - before.value("kvmi_bridge_events_total", { event: "hypercall" });
    const autoReplies =
      after.value("kvmi_bridge_event_auto_replies_total", { event: "hypercall" }) - before.value("kvmi_bridge_event_auto_replies_total", { event: "hypercall" });
    // Nothing lost, nothing stalled: each guest operation raised one event, the bridge answered each.
    expect(events).toBe(operations);
    expect(autoReplies).toBe(operations);
    expect(slowest, "the slowest VMCALL (ms)").toBeLessThan(1000);
    expect(operations, "events in the flood (too few makes the bound meaningless)").toBeGreaterThanOrEqual(2 * BACKLOG_BOUND);

    // The clients read again: what reaches each is bounded.
    for (const [who, session] of [["controller", controller], ["observer", observer]] as const) {
      session.stream.resume();
      let received = 0;
      let last = -1;
      await waitUntil(
        () => {
          received += session.queue.drain().filter((r) => r.message.case === "event").length;
          const settled = received === last || session.queue.ended !== undefined;
          last = received;
          return settled;
        },
        `the ${who}'s backlog delivered`,
        { timeoutMs: 10_000, intervalMs: 250 },
      );
      const ended = session.queue.ended;
      if (ended !== undefined) expect(ended.code, `${who}: a session the bridge ends must say why`).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
      expect(received, `${who}: events delivered after the pause (of ${operations})`).toBeLessThanOrEqual(BACKLOG_BOUND);
    }
  });
});
