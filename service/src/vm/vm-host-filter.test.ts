// SPDX-License-Identifier: Apache-2.0
/**
 * VmHost with a controller's event filter (docs/event-filters.md), against the fake channel: each
 * action's effect on the kernel reply, the controller and the observers; counters; a rule-answered
 * event going through the same pending table and BREAKPOINT rule as the bridge's own replies; the
 * policy check per event; no rule while the bridge releases the VM; the filter ending with its
 * controller.
 */
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { silentLogger } from "@kvmi/kvm-bridge";
import type { KvmiEvent } from "@kvmi/kvm-bridge";
import { v9, v9Ids } from "@kvmi/kvm-bridge/wire";
import { EventAction, EventFilterSchema, EventType } from "@kvmi/proto";
import { beforeEach, describe, expect, it, vi } from "vitest";
import { compileEventFilter } from "../mapping/event-filter.js";
import { Counter } from "./event-rules.js";
import type { CompiledFilter } from "./event-rules.js";
import { FakeChannel, fakeRegistry } from "./fake-channel.js";
import { NOTICE_QUEUE, VmHost } from "./vm-host.js";
import type { FilterOutcome, RuleNotice, SessionSink, VmHostMetrics } from "./vm-host.js";

const UUID = "5f0e3c52-2222-4b8e-9a57-0b7c1f7e2a10";
const CONTINUE = 0;
const RETRY = 1;

let channel: FakeChannel;
let registry: ReturnType<typeof fakeRegistry>;
let outcomes: Array<[string, FilterOutcome]>;

function host(): VmHost {
  const metrics: VmHostMetrics = {
    command: () => undefined,
    event: () => undefined,
    eventRoundTrip: () => undefined,
    autoReply: () => undefined,
    unhookToClose: () => undefined,
    bytesRead: () => undefined,
    filterEvent: (name, outcome) => void outcomes.push([name, outcome]),
  };
  return new VmHost(registry, channel.asChannel, registry.get(UUID)!, {
    eventDeadlineMs: 10_000,
    unhookDeadlineMs: 10_000,
    controllerGonePolicy: "release",
    logger: silentLogger,
    metrics,
  });
}

class RecordingSink implements SessionSink {
  readonly events: Array<{ event: KvmiEvent; deadline: Date | undefined; notice: RuleNotice | undefined }> = [];
  allowed = true;
  constructor(private readonly accept = true) {}
  event(event: KvmiEvent, deadline: Date | undefined, notice?: RuleNotice): boolean {
    this.events.push({ event, deadline, notice });
    return this.accept;
  }
  mayAnswer(): boolean {
    return this.allowed;
  }
  unhook(): void {}
  end(): void {}
}

function filter(rules: NonNullable<MessageInitShape<typeof EventFilterSchema>["rules"]>): CompiledFilter {
  return compileEventFilter(create(EventFilterSchema, { rules }), { dialect: v9, vcpuCount: 2 }, "filter")!;
}

const settled = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const cr = (old_value: bigint, new_value: bigint): Record<string, unknown> => ({ cr: 3, old_value, new_value });

beforeEach(() => {
  channel = new FakeChannel();
  registry = fakeRegistry(UUID);
  outcomes = [];
});

describe("VmHost: event filter actions", () => {
  it("reply: answers at once with the rule's values and sends the event to nobody", async () => {
    const h = host();
    const sink = new RecordingSink();
    const observer = new RecordingSink();
    const controller = h.attach("controller", sink);
    h.attach("observer", observer);
    const f = filter([{ event: EventType.CR, action: { kind: { case: "reply", value: { value: { case: "keepOldValue", value: true } } } } }]);
    h.setEventFilter(controller, f);
    const event = channel.emit("KVMI_EVENT_CR", 0, cr(0x1000n, 0x2000n));
    // Written in the same turn: no timer, no network.
    expect(channel.replies).toEqual([{ event: "KVMI_EVENT_CR", vcpu: 0, seq: event.seq, action: CONTINUE, data: { new_val: 0x1000n } }]);
    expect(sink.events).toEqual([]);
    expect(observer.events).toEqual([]);
    expect([f.count(0, Counter.MATCHED), f.count(0, Counter.REPLIED)]).toEqual([1, 1]);
    expect(outcomes).toEqual([["KVMI_EVENT_CR", "replied"]]);
    await expect(h.replyEvent(controller, 0, event.seq, { action: CONTINUE, replyData: undefined })).rejects.toMatchObject({ code: "EVENT_NOT_PENDING" });
  });

  it("notify: answers at once, then the controller and observers get a notification without deadline that takes no reply", async () => {
    const h = host();
    const sink = new RecordingSink();
    const observer = new RecordingSink();
    const controller = h.attach("controller", sink);
    h.attach("observer", observer);
    const f = filter([{ name: "cr3", event: EventType.CR, action: { kind: { case: "notify", value: {} } } }]);
    h.setEventFilter(controller, f);
    const event = channel.emit("KVMI_EVENT_CR", 1, cr(1n, 2n));
    expect(channel.replies).toEqual([{ event: "KVMI_EVENT_CR", vcpu: 1, seq: event.seq, action: CONTINUE, data: { new_val: 2n } }]);
    // The notification follows once the reply has left (the end of the tick).
    expect(sink.events).toEqual([]);
    await settled();
    for (const s of [sink, observer]) {
      expect(s.events).toEqual([{ event, deadline: undefined, notice: { rule: "cr3", action: CONTINUE, replyTimeMs: expect.any(Number) } }]);
    }
    await expect(h.replyEvent(controller, 1, event.seq, { action: CONTINUE, replyData: undefined })).rejects.toMatchObject({ code: "EVENT_NOT_PENDING" });
    expect(channel.replies).toHaveLength(1);
    expect(f.count(0, Counter.NOTIFIED)).toBe(1);
  });

  it("notify to a controller that cannot keep up: still answered, the notification counted as dropped", async () => {
    const h = host();
    const controller = h.attach("controller", new RecordingSink(false));
    const f = filter([{ event: EventType.PAUSE_VCPU, action: { kind: { case: "notify", value: {} } } }]);
    h.setEventFilter(controller, f);
    channel.emit("KVMI_EVENT_PAUSE_VCPU", 0);
    expect(channel.replies).toHaveLength(1);
    await settled();
    expect(f.notificationsDropped).toBe(1);
    expect(outcomes.map(([, o]) => o)).toEqual(["notified", "notification_dropped"]);
  });

  it("sample N: answers every event, notifies one in N", async () => {
    const h = host();
    const sink = new RecordingSink();
    const controller = h.attach("controller", sink);
    const f = filter([{ event: EventType.PAUSE_VCPU, action: { kind: { case: "sample", value: { every: 3 } } } }]);
    h.setEventFilter(controller, f);
    for (let i = 0; i < 7; i++) channel.emit("KVMI_EVENT_PAUSE_VCPU", i % 2);
    expect(channel.replies).toHaveLength(7);
    await settled();
    expect(sink.events.map((e) => e.event.seq)).toEqual([3, 6]);
    expect([f.count(0, Counter.MATCHED), f.count(0, Counter.REPLIED), f.count(0, Counter.NOTIFIED)]).toEqual([7, 5, 2]);
  });

  it("count: answers with the rule's action and only counts; a constant new_val goes to the MSR", () => {
    const h = host();
    const sink = new RecordingSink();
    const controller = h.attach("controller", sink);
    const f = filter([
      { event: EventType.MSR, action: { kind: { case: "count", value: { reply: { action: EventAction.CONTINUE, value: { case: "newVal", value: 7n } } } } } },
      { event: EventType.PF, action: { kind: { case: "count", value: { reply: { action: EventAction.RETRY } } } } },
    ]);
    h.setEventFilter(controller, f);
    channel.emit("KVMI_EVENT_MSR", 0, { msr: 0x10, old_value: 0n, new_value: 1n });
    channel.emit("KVMI_EVENT_PF", 1, { gpa: 0x1000n, gva: 0n, access: 2 });
    expect(channel.replies.map((r) => [r.event, r.action, r.data])).toEqual([
      ["KVMI_EVENT_MSR", CONTINUE, { new_val: 7n }],
      ["KVMI_EVENT_PF", RETRY, undefined],
    ]);
    expect(sink.events).toEqual([]);
  });

  it("deliver and unmatched events go the usual way: deadline, observers' copies, the controller's reply", async () => {
    const h = host();
    const sink = new RecordingSink();
    const observer = new RecordingSink();
    const controller = h.attach("controller", sink);
    h.attach("observer", observer);
    const f = filter([
      { event: EventType.CR, match: { vcpus: [0] }, action: { kind: { case: "deliver", value: {} } } },
      { event: EventType.CR, action: { kind: { case: "count", value: {} } } },
    ]);
    h.setEventFilter(controller, f);
    const delivered = channel.emit("KVMI_EVENT_CR", 0, cr(1n, 2n));
    const unmatched = channel.emit("KVMI_EVENT_PAUSE_VCPU", 1);
    expect(sink.events.map((e) => [e.event.seq, e.deadline instanceof Date, e.notice])).toEqual([
      [delivered.seq, true, undefined],
      [unmatched.seq, true, undefined],
    ]);
    expect(observer.events).toHaveLength(2);
    expect(channel.replies).toEqual([]);
    await h.replyEvent(controller, 0, delivered.seq, { action: CONTINUE, replyData: { new_val: 1n } });
    expect(channel.replies).toHaveLength(1);
    expect([f.count(0, Counter.DELIVERED), f.unmatched]).toEqual([1, 1]);
  });
});

describe("VmHost: notifications leave after the replies, together and in order", () => {
  const notify = (name: string) => ({ name, event: EventType.PAUSE_VCPU, action: { kind: { case: "notify" as const, value: {} } } });

  it("events of one turn are all answered before any notification is built; the notifications go out in one flush, in order", async () => {
    const h = host();
    const calls: string[] = [];
    const sink = new RecordingSink();
    const event = sink.event.bind(sink);
    sink.event = (e, deadline, notice) => (calls.push(`notify ${e.seq}`), event(e, deadline, notice));
    const replyEvent = channel.replyEvent.bind(channel);
    channel.replyEvent = (e, action, data) => (calls.push(`reply ${e.seq}`), replyEvent(e, action, data));
    const controller = h.attach("controller", sink);
    h.setEventFilter(controller, filter([notify("p")]));
    const seqs = [0, 1, 0, 1].map((vcpu) => channel.emit("KVMI_EVENT_PAUSE_VCPU", vcpu).seq);
    expect(calls).toEqual(seqs.map((seq) => `reply ${seq}`));
    await vi.waitFor(() => expect(sink.events).toHaveLength(4));
    expect(calls).toEqual([...seqs.map((seq) => `reply ${seq}`), ...seqs.map((seq) => `notify ${seq}`)]);
  });

  it("a delivered event first sends the notifications queued before it: each vCPU's events reach the sessions in order", async () => {
    const h = host();
    const sink = new RecordingSink();
    const observer = new RecordingSink();
    const controller = h.attach("controller", sink);
    h.attach("observer", observer);
    h.setEventFilter(controller, filter([notify("p"), { event: EventType.CR, action: { kind: { case: "deliver", value: {} } } }]));
    const first = channel.emit("KVMI_EVENT_PAUSE_VCPU", 0);
    const second = channel.emit("KVMI_EVENT_PAUSE_VCPU", 1);
    const delivered = channel.emit("KVMI_EVENT_CR", 0, cr(1n, 2n));
    for (const s of [sink, observer]) expect(s.events.map((e) => [e.event.seq, e.notice?.rule])).toEqual([[first.seq, "p"], [second.seq, "p"], [delivered.seq, undefined]]);
    await settled();
    expect(sink.events).toHaveLength(3);
  });

  it("replacing the filter sends the old rules' notifications first", () => {
    const h = host();
    const sink = new RecordingSink();
    const controller = h.attach("controller", sink);
    h.setEventFilter(controller, filter([notify("old")]));
    channel.emit("KVMI_EVENT_PAUSE_VCPU", 0);
    h.setEventFilter(controller, filter([notify("new")]));
    expect(sink.events.map((e) => e.notice?.rule)).toEqual(["old"]);
  });

  it("a controller whose notifications cannot leave costs bounded memory: past the queue's capacity they are dropped and counted, every event answered", async () => {
    const h = host();
    const sink = new RecordingSink();
    const controller = h.attach("controller", sink);
    const f = filter([notify("p")]);
    h.setEventFilter(controller, f);
    // All in one turn: nothing can leave until it ends.
    const extra = 100;
    for (let i = 0; i < NOTICE_QUEUE.capacity + extra; i++) channel.emit("KVMI_EVENT_PAUSE_VCPU", i % 2);
    expect(channel.replies).toHaveLength(NOTICE_QUEUE.capacity + extra);
    expect(f.notificationsDropped).toBe(extra);
    expect(outcomes.filter(([, o]) => o === "notification_dropped")).toHaveLength(extra);
    await vi.waitFor(() => expect(sink.events).toHaveLength(NOTICE_QUEUE.capacity));
    // The first ones are kept, in order; the notified counter counts every one the rule notified.
    expect(sink.events.map((e) => e.event.seq)).toEqual(Array.from({ length: NOTICE_QUEUE.capacity }, (_, i) => i + 1));
    expect(f.count(0, Counter.NOTIFIED)).toBe(NOTICE_QUEUE.capacity + extra);
  });

  it("the VM's socket closing forgets the queued notifications", async () => {
    const h = host();
    const sink = new RecordingSink();
    const observer = new RecordingSink();
    h.setEventFilter(h.attach("controller", sink), filter([notify("p")]));
    h.attach("observer", observer);
    channel.emit("KVMI_EVENT_PAUSE_VCPU", 0);
    channel.close("gone");
    await settled();
    expect([sink.events, observer.events]).toEqual([[], []]);
  });
});

describe("VmHost: rules are answered like every other reply", () => {
  it("a CONTINUE rule on a breakpoint whose INT3 the bridge removed sends RETRY", async () => {
    const h = host();
    const first = h.attach("controller", new RecordingSink());
    channel.answer = (c) => (c.name === "KVMI_VM_READ_PHYSICAL" ? { data: Uint8Array.of(0x90) } : {});
    await h.command("KVMI_VM_WRITE_PHYSICAL", { gpa: 0x1000n, data: Uint8Array.of(0xcc) }, undefined, { sessionId: first.id });
    await h.command("KVMI_VCPU_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_BREAKPOINT, enable: 1 }, 0, { sessionId: first.id });
    await h.detach(first, "client gone");
    const second = h.attach("controller", new RecordingSink());
    h.setEventFilter(second, filter([{ event: EventType.BREAKPOINT, action: { kind: { case: "count", value: {} } } }]));
    channel.emit("KVMI_EVENT_BREAKPOINT", 0, { gpa: 0x1000n, insn_len: 1 });
    channel.emit("KVMI_EVENT_BREAKPOINT", 1, { gpa: 0x2000n, insn_len: 1 });
    expect(channel.replies.map((r) => r.action)).toEqual([RETRY, CONTINUE]);
  });

  it("when the policy no longer lets the controller answer, the rule does not answer: the event is delivered", () => {
    const h = host();
    const sink = new RecordingSink();
    const controller = h.attach("controller", sink);
    h.setEventFilter(controller, filter([{ event: EventType.PAUSE_VCPU, action: { kind: { case: "count", value: {} } } }]));
    sink.allowed = false;
    channel.emit("KVMI_EVENT_PAUSE_VCPU", 0);
    expect(channel.replies).toEqual([]);
    expect(sink.events).toHaveLength(1);
    expect(sink.events[0]!.deadline).toBeInstanceOf(Date);
  });

  it("while the bridge releases the VM no rule applies; during the announced unhook rules still answer", async () => {
    const h = host();
    const sink = new RecordingSink();
    const controller = h.attach("controller", sink);
    const f = filter([{ event: EventType.PAUSE_VCPU, action: { kind: { case: "notify", value: {} } } }]);
    h.setEventFilter(controller, f);
    channel.emit("KVMI_EVENT_UNHOOK", 0);
    channel.emit("KVMI_EVENT_PAUSE_VCPU", 0);
    expect(f.count(0, Counter.NOTIFIED)).toBe(1);
    await h.detach(controller, "released");
    await vi.waitFor(() => expect(channel.isOpen).toBe(false));
    expect(h.eventFilter).toBeUndefined();
  });

  it("the filter ends with its controller and only the controller may set one", async () => {
    const h = host();
    const controller = h.attach("controller", new RecordingSink());
    const observer = h.attach("observer", new RecordingSink());
    const f = filter([{ event: EventType.PAUSE_VCPU, action: { kind: { case: "count", value: {} } } }]);
    expect(() => h.setEventFilter(observer, f)).toThrow(expect.objectContaining({ code: "NOT_CONTROLLER" }));
    expect(h.setEventFilter(controller, f)).toBeUndefined();
    expect(h.setEventFilter(controller, undefined)).toBe(f);
    h.setEventFilter(controller, f);
    await h.detach(controller, "gone");
    expect(h.eventFilter).toBeUndefined();
    const next = h.attach("controller", new RecordingSink());
    channel.emit("KVMI_EVENT_PAUSE_VCPU", 0);
    await settled();
    expect(channel.replies).toEqual([]);
    await h.detach(next, "gone");
    await settled();
    expect(channel.replies).toHaveLength(1);
  });
});
