// SPDX-License-Identifier: Apache-2.0
/**
 * Event batches on the Session stream (docs/decisions/0160-event-batches.md): a controller that
 * attached with `event_batches` gets the events that reach the bridge in the same turn as one
 * EventBatch and may answer them with one EventReplyBatch; every event is answered exactly as if it
 * had come alone (the guest's MOV CR3 completes with the value the reply gave). A session that did
 * not ask gets one Event message each, as before.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventAction, EventType } from "@kvmi/proto";
import type { Event } from "@kvmi/proto";
import type { Vcpu } from "@kvmi/kvm-bridge/emulator";
import { Role, startHarness } from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";

const VCPUS = 4;
/** PWT: toggling it makes every CR3 write a change, so each raises an event. */
const PWT = 1n << 3n;

let h: Harness;

const vcpu = (n: number): Vcpu => h.vms[0]!.guest.vcpus[n]!;

beforeAll(async () => {
  h = await startHarness({ vms: [{ vcpus: VCPUS }] });
});

afterAll(async () => {
  await h?.stop();
});

async function interceptCr3(session: SessionClient, on: boolean): Promise<void> {
  for (let n = 0; n < VCPUS; n++) {
    await session.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, n), event: EventType.CR, enable: on } });
    await session.ok({ case: "controlCr", value: { name: h.vcpuName(0, n), cr: 3, enable: on } });
  }
}

/** Every vCPU writes CR3 in the same turn; resolves with the values written and the writes' outcomes. */
function writeAll(): { targets: bigint[]; writes: Promise<Array<{ status: string; value?: bigint }>> } {
  const targets = Array.from({ length: VCPUS }, (_, n) => vcpu(n).state.sregs.cr3 ^ PWT);
  const writes = Promise.all(targets.map((target, n) => vcpu(n).writeCr(3, target) as Promise<{ status: string; value?: bigint }>));
  return { targets, writes };
}

describe("event batches", () => {
  it("delivers events of one turn as an EventBatch and takes one EventReplyBatch for them", async () => {
    const ctl = await h.attach(0, Role.CONTROLLER, { eventBatches: true });
    try {
      expect(ctl.attached!.session!.eventBatches).toBe(true);
      await interceptCr3(ctl, true);
      let batches = 0;
      // The vCPUs' events reach the bridge in one socket read in practice; a few rounds make a
      // split read (a loaded machine) harmless to the test.
      for (let round = 0; round < 5 && batches === 0; round++) {
        const { targets, writes } = writeAll();
        const events: Event[] = [];
        while (events.length < VCPUS) {
          const message = await ctl.queue.take((r) => r.message.case === "event" || r.message.case === "events", "events");
          if (message.message.case === "events") {
            batches++;
            expect(message.message.value.events.length).toBeGreaterThan(1);
            events.push(...message.message.value.events);
          } else if (message.message.case === "event") events.push(message.message.value);
        }
        expect(new Set(events.map((e) => e.vcpu))).toEqual(new Set([0, 1, 2, 3]));
        // One reply message for all four; each vCPU's write completes with its own target value.
        ctl.send({
          case: "eventReplies",
          value: {
            replies: events.map((e) => ({
              vcpu: e.vcpu,
              seq: e.seq,
              action: EventAction.CONTINUE,
              newVal: e.payload.case === "cr" ? e.payload.value.newValue : 0n,
            })),
          },
        });
        const outcomes = await writes;
        outcomes.forEach((out, n) => expect(out, `vCPU ${n}`).toMatchObject({ status: "done", value: targets[n] }));
      }
      expect(batches).toBeGreaterThan(0);
    } finally {
      await interceptCr3(ctl, false);
      ctl.release();
      await ctl.closed();
    }
  });

  it("answers each reply of a batch on its own: a stale one is rejected, the others go through", async () => {
    const ctl = await h.attach(0, Role.CONTROLLER, { eventBatches: true });
    try {
      await interceptCr3(ctl, true);
      const { targets, writes } = writeAll();
      const events: Event[] = [];
      while (events.length < VCPUS) {
        const message = await ctl.queue.take((r) => r.message.case === "event" || r.message.case === "events", "events");
        if (message.message.case === "events") events.push(...message.message.value.events);
        else if (message.message.case === "event") events.push(message.message.value);
      }
      const [first, ...rest] = events;
      ctl.send({
        case: "eventReplies",
        value: {
          replies: [
            { vcpu: first!.vcpu, seq: first!.seq + 1000, action: EventAction.CONTINUE },
            ...events.map((e) => ({ vcpu: e.vcpu, seq: e.seq, action: EventAction.CONTINUE })),
          ],
        },
      });
      const rejected = await ctl.next("replyRejected");
      expect([rejected.vcpu, rejected.seq]).toEqual([first!.vcpu, first!.seq + 1000]);
      const outcomes = await writes;
      outcomes.forEach((out, n) => expect(out, `vCPU ${n}`).toMatchObject({ status: "done", value: targets[n] }));
      expect(rest).toHaveLength(VCPUS - 1);
    } finally {
      await interceptCr3(ctl, false);
      ctl.release();
      await ctl.closed();
    }
  });

  it("sends one Event message per event to a session that did not ask for batches", async () => {
    const ctl = await h.attach(0, Role.CONTROLLER);
    try {
      expect(ctl.attached!.session!.eventBatches).toBe(false);
      await interceptCr3(ctl, true);
      const { writes } = writeAll();
      for (let i = 0; i < VCPUS; i++) {
        const event = await ctl.event();
        ctl.reply(event, EventAction.CONTINUE, { newVal: event.payload.case === "cr" ? event.payload.value.newValue : 0n });
      }
      await writes;
      expect(ctl.queue.pending.some((r) => r.message.case === "events")).toBe(false);
    } finally {
      await interceptCr3(ctl, false);
      ctl.release();
      await ctl.closed();
    }
  });
});
