// SPDX-License-Identifier: Apache-2.0
/**
 * Event filters end to end (docs/event-filters.md), against emulated VMs in each dialect: a
 * `reply` rule answers a CR write without the controller (the guest's write is blocked at once and
 * no event crosses the stream), `notify` answers and then delivers a notification that takes no
 * reply (to the observer too), `sample` notifies one in N, `count` only counts, and the counters
 * come back in summaries, in SetEventFilter's answer and in the metrics. With rules in place the
 * reply deadline still answers delivered events, and an operator's unhook still undoes the
 * controller's hooks (rules answer while the unhook is only announced). Bad filters fail with one
 * BadRequest field violation per problem, on Attach and on SetEventFilter; observers cannot set one.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { EventAction, EventType, State, UnhookReason } from "@kvmi/proto";
import type { EventFilterSchema, SetEventFilterResponse } from "@kvmi/proto";
import {
  CONTINUE,
  expectGrpcError,
  GrpcStatus,
  inlineFailure,
  Role,
  settle,
  startHarness,
  streamFailure,
} from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";

type Filter = MessageInitShape<typeof EventFilterSchema>;

const MSR_LSTAR = 0xc0000082;
/** PWT: toggling it makes every CR3 write a change, so each raises an event. */
const PWT = 1n << 3n;
const DEADLINE_MS = 300;
const MAIN = 0;

let h: Harness;

const vcpu = (n: number) => h.vms[MAIN]!.guest.vcpus[n]!;
const vcpuName = (n: number): string => h.vcpuName(MAIN, n);

async function interceptCr3(ctl: SessionClient, n: number): Promise<void> {
  await ctl.ok({ case: "controlVcpuEvents", value: { name: vcpuName(n), event: EventType.CR, enable: true } });
  await ctl.ok({ case: "controlCr", value: { name: vcpuName(n), cr: 3, enable: true } });
}

async function interceptLstar(ctl: SessionClient, n: number): Promise<void> {
  await ctl.ok({ case: "controlVcpuEvents", value: { name: vcpuName(n), event: EventType.MSR, enable: true } });
  await ctl.ok({ case: "controlMsr", value: { name: vcpuName(n), msr: MSR_LSTAR, enable: true } });
}

async function setFilter(ctl: SessionClient, filter: Filter): Promise<SetEventFilterResponse> {
  const result = await ctl.ok({ case: "setEventFilter", value: { filter } });
  return result.value as SetEventFilterResponse;
}

beforeAll(async () => {
  h = await startHarness({ vms: 1 });
});

afterEach(async () => {
  await h.closeSessions();
});

afterAll(async () => {
  await h?.stop();
});

describe("rule actions", () => {
  it("reply: the bridge blocks the CR3 write at once, sends no event, and reports the counters", async () => {
    const ctl = await h.attach(MAIN, Role.CONTROLLER, {
      eventFilter: {
        rules: [{ name: "freeze-cr3", event: EventType.CR, match: { payload: { case: "cr", value: { crs: [3] } } }, action: { kind: { case: "reply", value: { value: { case: "keepOldValue", value: true } } } } }],
        summaryInterval: { seconds: 0n, nanos: 100_000_000 },
      },
    });
    await interceptCr3(ctl, 0);
    const before = await h.metrics();
    const old = vcpu(0).state.sregs.cr3;
    for (let i = 1; i <= 3; i++) {
      expect(await settle(vcpu(0).writeCr(3, old + BigInt(i) * 0x1000n), "MOV CR3")).toEqual({ status: "done", value: old });
    }
    expect(vcpu(0).state.sregs.cr3).toBe(old);
    const summary = await ctl.next("filterSummary", (s) => s.rules[0]!.replied >= 3n);
    expect(summary.rules).toEqual([expect.objectContaining({ name: "freeze-cr3", event: EventType.CR, matched: 3n, replied: 3n, notified: 0n, delivered: 0n })]);
    await ctl.queue.expectNone((r) => r.message.case === "event", 100, "an event the rule answered");
    const after = await h.metrics();
    const replied = (m: typeof after) => m.value("kvmi_bridge_filter_events_total", { event: "cr", outcome: "replied" });
    expect(replied(after) - replied(before)).toBe(3);
  });

  it("notify: the guest's write goes through at once; controller and observer get a notification that takes no reply", async () => {
    const ctl = await h.attach(MAIN, Role.CONTROLLER, {
      eventFilter: { rules: [{ name: "lstar", event: EventType.MSR, action: { kind: { case: "notify", value: {} } } }] },
    });
    const observer = await h.attach(MAIN, Role.OBSERVER);
    await interceptLstar(ctl, 1);
    const value = 0xffffffff81234560n;
    expect(await settle(vcpu(1).writeMsr(MSR_LSTAR, value), "WRMSR")).toEqual({ status: "done", value });
    for (const session of [ctl, observer]) {
      const event = await session.event((e) => e.type === EventType.MSR);
      expect(event.payload).toMatchObject({ case: "msr", value: { msr: MSR_LSTAR, newValue: value } });
      expect(event.notification).toMatchObject({ rule: "lstar", action: EventAction.CONTINUE });
      expect(event.notification?.replyTime).toBeDefined();
      expect(event.replyDeadline).toBeUndefined();
    }
    await ctl.queue.expectNone((r) => r.message.case === "event", 100, "a second copy of the notification");
  });

  it("a reply to a notification is refused with NOT_FOUND", async () => {
    const ctl = await h.attach(MAIN, Role.CONTROLLER, {
      eventFilter: { rules: [{ event: EventType.MSR, action: { kind: { case: "notify", value: {} } } }] },
    });
    await interceptLstar(ctl, 1);
    await settle(vcpu(1).writeMsr(MSR_LSTAR, 0xffffffff81000010n), "WRMSR");
    const event = await ctl.event((e) => e.type === EventType.MSR);
    ctl.reply(event, CONTINUE);
    const rejected = await ctl.next("replyRejected", (r) => r.seq === event.seq);
    expect(inlineFailure(rejected.status!)).toMatchObject({ code: GrpcStatus.NOT_FOUND, reason: "EVENT_NOT_PENDING" });
  });

  it("sample: every hypercall is answered, one in three is notified; count: only counted; SetEventFilter returns the old counters", async () => {
    const ctl = await h.attach(MAIN, Role.CONTROLLER, {
      eventFilter: { rules: [{ name: "calls", event: EventType.HYPERCALL, action: { kind: { case: "sample", value: { every: 3 } } } }] },
    });
    await ctl.ok({ case: "controlVcpuEvents", value: { name: vcpuName(0), event: EventType.HYPERCALL, enable: true } });
    for (let i = 0; i < 6; i++) expect((await settle(vcpu(0).hypercall(34n, 24n, 0n), "VMCALL")).status).toBe("done");
    const first = await ctl.event((e) => e.type === EventType.HYPERCALL);
    const second = await ctl.event((e) => e.type === EventType.HYPERCALL);
    expect([first.notification?.rule, second.notification?.rule]).toEqual(["calls", "calls"]);
    const replaced = await setFilter(ctl, { rules: [{ name: "quiet", event: EventType.HYPERCALL, action: { kind: { case: "count", value: {} } } }] });
    expect(replaced.previous?.rules).toEqual([expect.objectContaining({ name: "calls", matched: 6n, replied: 4n, notified: 2n })]);
    for (let i = 0; i < 4; i++) expect((await settle(vcpu(0).hypercall(34n, 24n, 0n), "VMCALL")).status).toBe("done");
    await ctl.queue.expectNone((r) => r.message.case === "event", 100, "a counted event");
    const removed = await setFilter(ctl, {});
    expect(removed.previous?.rules).toEqual([expect.objectContaining({ name: "quiet", matched: 4n, replied: 4n })]);
  });
});

describe("rules and the bridge's guarantees", () => {
  it("a delivered event still gets the reply deadline: the bridge answers CONTINUE when the controller stays silent", async () => {
    const ctl = await h.attach(MAIN, Role.CONTROLLER, {
      eventDeadlineMs: DEADLINE_MS,
      eventFilter: {
        rules: [
          { event: EventType.CR, match: { vcpus: [1] }, action: { kind: { case: "deliver", value: {} } } },
          { event: EventType.CR, action: { kind: { case: "count", value: {} } } },
        ],
      },
    });
    await interceptCr3(ctl, 1);
    const old = vcpu(1).state.sregs.cr3;
    const started = Date.now();
    const write = vcpu(1).writeCr(3, old + 0x5000n);
    const event = await ctl.event((e) => e.type === EventType.CR);
    expect(event.notification).toBeUndefined();
    expect(event.replyDeadline).toBeDefined();
    expect(await settle(write, "MOV CR3", 5000)).toEqual({ status: "done", value: old + 0x5000n });
    expect(Date.now() - started).toBeGreaterThanOrEqual(DEADLINE_MS - 20);
  });

  it("notify to a controller that stops reading: the guest never waits, notifications past the session's buffer are dropped and counted, the rest arrive in order", async () => {
    const ctl = await h.attach(MAIN, Role.CONTROLLER, {
      eventBatches: true,
      eventFilter: { rules: [{ name: "cr3", event: EventType.CR, action: { kind: { case: "notify", value: {} } } }] },
    });
    await interceptCr3(ctl, 0);
    ctl.stream.pause();
    // More than the session may hold for its client (MAX_BUFFERED_EVENTS, session-rpc.ts) plus
    // what the HTTP/2 windows and grpc-js take.
    const writes = 2500;
    let cr3 = vcpu(0).state.sregs.cr3;
    for (let i = 0; i < writes; i++) {
      cr3 ^= PWT;
      expect(await settle(vcpu(0).writeCr(3, cr3), "MOV CR3 while the controller does not read")).toEqual({ status: "done", value: cr3 });
    }
    ctl.stream.resume();
    const replaced = await setFilter(ctl, {});
    const dropped = Number(replaced.previous!.notificationsDropped);
    expect(replaced.previous!.rules).toEqual([expect.objectContaining({ name: "cr3", matched: BigInt(writes), notified: BigInt(writes) })]);
    const seqs: number[] = [];
    for (const r of ctl.queue.drain()) {
      if (r.message.case === "event") seqs.push(r.message.value.seq);
      if (r.message.case === "events") seqs.push(...r.message.value.events.map((e) => e.seq));
    }
    expect(dropped).toBeGreaterThan(0);
    expect(seqs.length + dropped).toBe(writes);
    // Bounded: what the bridge held for the client, plus the windows (far less than the writes).
    expect(seqs.length).toBeLessThan(1500);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  }, 60_000);

  it("an operator's unhook with rules in place: rules answer during the grace, then the bridge undoes the hooks and the VM hooks again", async () => {
    const generation = Number((await h.waitHooked(MAIN)).generation);
    const ctl = await h.attach(MAIN, Role.CONTROLLER, {
      eventFilter: { rules: [{ event: EventType.CR, action: { kind: { case: "reply", value: { value: { case: "keepOldValue", value: true } } } } }] },
    });
    await interceptCr3(ctl, 0);
    const releasing = h.client.unary("releaseVm", { name: h.vmName(MAIN), gracePeriod: { seconds: 0n, nanos: 500_000_000 } });
    expect((await ctl.next("unhook")).reason).toBe(UnhookReason.OPERATOR);
    const old = vcpu(0).state.sregs.cr3;
    expect(await settle(vcpu(0).writeCr(3, old + 0x1000n), "MOV CR3 during the grace")).toEqual({ status: "done", value: old });
    expect((await releasing).vm?.state).toBe(State.DISCONNECTED);
    expect(streamFailure(await ctl.closed()).code).toBe(GrpcStatus.UNAVAILABLE);
    await h.waitHooked(MAIN, generation + 1);
    // The bridge undid the CR3 interception: the write reaches the guest with nobody asked.
    expect(await settle(vcpu(0).writeCr(3, old + 0x2000n), "MOV CR3 after the unhook")).toEqual({ status: "done", value: old + 0x2000n });
  }, 40_000);
});

describe("bad filters", () => {
  it("fail the attach with one BadRequest violation per problem", async () => {
    const failure = await expectGrpcError(
      h.attach(MAIN, Role.CONTROLLER, {
        eventFilter: {
          rules: [
            { event: EventType.CR, action: { kind: { case: "reply", value: { action: EventAction.RETRY } } } },
            { event: EventType.PF, match: { payload: { case: "cr", value: {} } }, action: { kind: { case: "count", value: {} } } },
          ],
        },
      }),
      GrpcStatus.INVALID_ARGUMENT,
    );
    expect(failure.details.fieldViolations?.map((v) => v.field)).toEqual(["attach.event_filter.rules[0].action.reply.action", "attach.event_filter.rules[1].match.cr"]);
    // Nothing was attached: a controller can attach now.
    await h.attach(MAIN, Role.CONTROLLER);
  });

  it("fail SetEventFilter and keep the filter in place; observers can set none", async () => {
    const ctl = await h.attach(MAIN, Role.CONTROLLER, { eventFilter: { rules: [{ name: "keep", event: EventType.CR, action: { kind: { case: "count", value: {} } } }] } });
    const result = await ctl.command({ case: "setEventFilter", value: { filter: { rules: [{ event: EventType.MSR, action: { kind: { case: "sample", value: { every: 0 } } } }] } } });
    expect(result.result.case).toBe("error");
    const details = inlineFailure(result.result.value as never);
    expect(details).toMatchObject({ code: GrpcStatus.INVALID_ARGUMENT });
    expect(details.fieldViolations).toEqual([expect.objectContaining({ field: "set_event_filter.filter.rules[0].action.sample.every" })]);
    expect((await setFilter(ctl, {})).previous?.rules[0]?.name).toBe("keep");

    const observer = await h.attach(MAIN, Role.OBSERVER);
    const refused = await observer.command({ case: "setEventFilter", value: { filter: {} } });
    expect(inlineFailure(refused.result.value as never).code).toBe(GrpcStatus.PERMISSION_DENIED);
    const session = h.client.openSession();
    const failure = await expectGrpcError(session.attach(h.vmName(MAIN), Role.OBSERVER, { eventFilter: { rules: [] } }), GrpcStatus.INVALID_ARGUMENT);
    expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "attach.event_filter" })]);
  });
});
