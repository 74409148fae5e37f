// SPDX-License-Identifier: Apache-2.0
/**
 * The event path of one hooked VM: each event from the channel's sink to its reply. The checks a
 * trustworthy kernel always passes, the controller's filter and its notifications, delivery to
 * the sessions, the table of events waiting for a reply with their deadlines, and the safe
 * default the bridge answers with itself.
 *
 * Apart from vm-host.ts because it runs once per guest event and is performance-critical
 * (docs/performance.md): nothing here creates objects, closures or promises per event beyond
 * what the event needs (its pending entry, deadline and reply). Sessions, commands and the unhook
 * flow change rarely and read better without it. VmHost owns one VmEvents and delegates replies
 * and filters to it; the state they share (sessions, `releasing`) is a VmHostState.
 */
import { KvmiProtocolError } from "@kvmi/kvm-bridge";
import type { KvmiEvent } from "@kvmi/kvm-bridge";
import { withZeroDefaults } from "@kvmi/kvm-bridge/wire";
import { BridgeError } from "../mapping/bridge-error.js";
import { hasEventMapping, v9EventName } from "../mapping/events.js";
import type { AutoReplyReason } from "../metrics/index.js";
import { sendCommand } from "./dialect-translation.js";
import { Counter, COUNTER_SLOTS, RuleActionKind } from "./event-rules.js";
import type { CompiledFilter, CompiledRule } from "./event-rules.js";
import { NoticeQueue } from "./notice-queue.js";
import type { Attached, RuleNotice, Session, VmParts } from "./vm-host-types.js";

/**
 * Notifications of rule-answered events waiting to be sent, per VM (notice-queue.ts,
 * docs/decisions/0175): at most 1024 (one more is dropped and counted as
 * `notifications_dropped`); a notification with none in the millisecond before it leaves at once
 * (after the current I/O); while they keep coming they are collected for 5 ms, or until 64 wait.
 * 5 ms: in the filters benchmark 2 ms batches (≈ 5 notifications) still left back-to-back events
 * 1.2–2.7× the raw hop, 5 ms batches (≈ 20) brought them to 0.85–1.34× (docs/performance.md).
 */
export const NOTICE_QUEUE = { capacity: 1024, flushAt: 64, lingerMs: 5, quietMs: 1 } as const;

interface QueuedNotice {
  readonly event: KvmiEvent;
  readonly notice: RuleNotice;
  readonly controller: Attached;
  readonly filter: CompiledFilter;
}

interface PendingEvent {
  readonly event: KvmiEvent;
  readonly timer: NodeJS.Timeout | undefined;
}

/** The events of one VM: delivery, the controller's filter, pending replies and their deadlines. */
export class VmEvents {
  private readonly pending = new Map<number, PendingEvent>();
  /** The controller's event filter (docs/event-filters.md); it ends with the controller. */
  private filter: CompiledFilter | undefined;
  /**
   * Notifications of rule-answered events. The rule's reply is written in the turn that decoded
   * the event; the notifications leave later and together (docs/decisions/0175), so a vCPU never
   * waits while the bridge encodes and writes one, and several share one message.
   */
  private readonly notices = new NoticeQueue<QueuedNotice>((notices) => this.sendNotices(notices), NOTICE_QUEUE);

  /** @param onUnhook called when the kernel announces an unhook (KVMI_EVENT_UNHOOK). */
  constructor(private readonly vm: VmParts, private readonly onUnhook: () => void) {}

  /** The channel's event sink: takes every event the kernel sends. */
  onEvent(event: KvmiEvent): boolean {
    this.vm.options.metrics?.event(v9EventName(event.kind));
    if (event.kind === "UNHOOK") {
      this.onUnhook();
      return true;
    }
    const violation = this.eventViolation(event);
    if (violation !== undefined) {
      // Accepting it would overwrite the pending event of that vCPU (whose deadline timer would
      // then answer the wrong one) or answer a vCPU the kernel does not have. A kernel never does
      // this (a vCPU blocks on its one event until the reply): the peer
      // is not a KVMI kernel we can trust, so its connection ends here.
      this.vm.log.warn({ vcpu: event.vcpu, seq: event.seq, event: event.spec.name, reason: violation }, "closing the VM's connection: invalid event");
      this.vm.channel.close(`protocol error: ${violation}`, new KvmiProtocolError(violation, { vm: this.vm.uuid, vcpu: event.vcpu }));
      return true;
    }
    // An event kind kvmi.v1 has no message for (none today; a table may list one before the API
    // does): answered at once, never held.
    if (!hasEventMapping(event.kind)) {
      this.pending.set(event.vcpu, { event, timer: undefined });
      void this.autoReply(event.vcpu, "not_in_api");
      return true;
    }
    const state = this.vm.state;
    const controller = state.controller;
    const releasing = state.releasing;
    // Rules decide only while the controller is in charge (not once the bridge releases the VM).
    if (controller !== undefined && releasing === undefined && this.filter !== undefined && this.applyFilter(this.filter, controller, event)) return true;
    const deadlineMs = this.deadlineFor(event);
    const deadline = new Date(Date.now() + deadlineMs);
    // Queued notifications first: every session sees a vCPU's events in the order they came.
    if (this.notices.length > 0) this.notices.flush();
    for (const observer of state.observers.values()) observer.sink.event(event, undefined);
    // During an announced unhook the controller is still in charge (it may be removing its own
    // breakpoints); only once the bridge releases does it answer by itself.
    if (controller === undefined || releasing !== undefined) {
      this.pending.set(event.vcpu, { event, timer: undefined });
      void this.autoReply(event.vcpu, releasing ?? "no_controller");
      return true;
    }
    const timer = setTimeout(() => void this.autoReply(event.vcpu, "deadline"), deadlineMs);
    this.pending.set(event.vcpu, { event, timer });
    if (!controller.sink.event(event, deadline)) void this.autoReply(event.vcpu, "slow_consumer");
    return true;
  }

  private deadlineFor(event: KvmiEvent): number {
    return this.vm.state.controller?.eventDeadlineMs ?? this.vm.options.eventDeadlines?.[v9EventName(event.kind)] ?? this.vm.options.eventDeadlineMs;
  }

  /**
   * Runs the controller's filter on an event. Returns true when a rule answered it (reply, notify,
   * sample, count); false when it goes the usual way (deliver, no rule matched, or the policy no
   * longer lets the controller answer). A rule's answer goes through the pending table and send()
   * like any reply, so the ledger's BREAKPOINT rule, metrics and a closing socket treat it the same;
   * it never waits for anything, so no rule can keep a vCPU blocked.
   */
  private applyFilter(filter: CompiledFilter, controller: Attached, event: KvmiEvent): boolean {
    const index = filter.match(event);
    const metrics = this.vm.options.metrics;
    if (index < 0) {
      filter.unmatched++;
      metrics?.filterEvent?.(v9EventName(event.kind), "unmatched");
      return false;
    }
    const rule = filter.rules[index]!;
    const counters = filter.counters;
    const base = index * COUNTER_SLOTS;
    counters[base + Counter.MATCHED]!++;
    if (rule.action === RuleActionKind.DELIVER || controller.sink.mayAnswer?.() === false) {
      counters[base + Counter.DELIVERED]!++;
      metrics?.filterEvent?.(v9EventName(event.kind), "delivered");
      return false;
    }
    let notify = rule.action === RuleActionKind.NOTIFY;
    if (rule.action === RuleActionKind.SAMPLE && ++counters[base + Counter.SAMPLE_TICK]! >= rule.every) {
      counters[base + Counter.SAMPLE_TICK] = 0;
      notify = true;
    }
    const pending: PendingEvent = { event, timer: undefined };
    this.pending.set(event.vcpu, pending);
    const action = this.ruleAction(rule, event);
    void this.send(event.vcpu, pending, action, ruleReplyData(rule, event)).catch(() => undefined);
    if (!notify) {
      counters[base + Counter.REPLIED]!++;
      metrics?.filterEvent?.(v9EventName(event.kind), "replied");
      return true;
    }
    counters[base + Counter.NOTIFIED]!++;
    metrics?.filterEvent?.(v9EventName(event.kind), "notified");
    if (!this.notices.push({ event, notice: { rule: rule.name, action, replyTimeMs: Date.now() }, controller, filter })) {
      // The queue is full (the controller's stream has not taken the earlier ones): the event is
      // answered, its notification is lost and counted.
      filter.notificationsDropped++;
      metrics?.filterEvent?.(v9EventName(event.kind), "notification_dropped");
    }
    return true;
  }

  /** Sends queued notifications, in order, to the observers and the controller that is still attached. */
  private sendNotices(notices: readonly QueuedNotice[]): void {
    const metrics = this.vm.options.metrics;
    for (const { event, notice, controller, filter } of notices) {
      for (const observer of this.vm.state.observers.values()) observer.sink.event(event, undefined, notice);
      if (this.vm.state.controller !== controller) continue; // detached since: its session is over
      if (!controller.sink.event(event, undefined, notice)) {
        filter.notificationsDropped++;
        metrics?.filterEvent?.(v9EventName(event.kind), "notification_dropped");
      }
    }
  }

  /** Sends the notifications queued so far now, ahead of what the sessions see next. */
  flushNotices(): void {
    this.notices.flush();
  }

  /** A rule's wire action; CONTINUE to a BREAKPOINT whose INT3 the bridge removed is RETRY (see defaultReply). */
  private ruleAction(rule: CompiledRule, event: KvmiEvent): number {
    const reply = rule.reply;
    if (reply.isContinue && event.kind === "BREAKPOINT" && this.vm.ledger.wasRestored(event.payload?.["gpa"] as bigint)) return reply.retryAction;
    return reply.action;
  }

  /** See VmHost.setEventFilter. */
  setEventFilter(session: Session, filter: CompiledFilter | undefined): CompiledFilter | undefined {
    if (this.vm.state.controller?.id !== session.id) {
      throw new BridgeError("NOT_CONTROLLER", "only the controller may set an event filter: attach with role CONTROLLER", { vm: this.vm.uuid });
    }
    // The old rules' notifications reach the stream before the reply that replaces them.
    this.notices.flush();
    const previous = this.filter;
    this.filter = filter;
    this.vm.log.info({ session: session.id, rules: filter?.rules.length ?? 0 }, "event filter set");
    return previous;
  }

  /** The controller's event filter, for summaries. */
  get eventFilter(): CompiledFilter | undefined {
    return this.filter;
  }

  /** The controller detached: its filter ends with it. */
  controllerLeft(): void {
    this.filter = undefined;
  }

  /** Why an event cannot be accepted, or undefined when it can. */
  private eventViolation(event: KvmiEvent): string | undefined {
    const vcpuCount = this.vm.registry.get(this.vm.uuid)?.vcpuCount ?? 0;
    if (!Number.isInteger(event.vcpu) || event.vcpu < 0 || event.vcpu >= vcpuCount) {
      return `${event.spec.name} seq ${event.seq} names vCPU ${event.vcpu}, but the VM has ${vcpuCount}`;
    }
    const waiting = this.pending.get(event.vcpu);
    if (waiting !== undefined) {
      return `${event.spec.name} seq ${event.seq} on vCPU ${event.vcpu}, which still waits for the reply to seq ${waiting.event.seq}`;
    }
    for (const [vcpu, pending] of this.pending) {
      if (pending.event.seq === event.seq) return `${event.spec.name} seq ${event.seq} on vCPU ${event.vcpu} reuses the seq of the event pending on vCPU ${vcpu}`;
    }
    return undefined;
  }

  /** See VmHost.replyEvent. */
  async replyEvent(
    session: Session,
    vcpu: number,
    seq: number,
    reply: { readonly action: number; readonly replyData: Record<string, unknown> | undefined; readonly registers?: Record<string, unknown> | undefined },
  ): Promise<void> {
    if (this.vm.state.controller?.id !== session.id) {
      throw new BridgeError("NOT_CONTROLLER", "only the controller may answer events", { vm: this.vm.uuid, vcpu });
    }
    this.pendingEvent(vcpu, seq);
    const pending = this.pending.get(vcpu)!;
    // Register changes ride on the reply: the kernel applies them when it processes it (kvmi-abi §3.4).
    if (reply.registers !== undefined) {
      await sendCommand(this.vm.channel, "KVMI_VCPU_SET_REGISTERS", reply.registers as never, vcpu);
    }
    await this.send(vcpu, pending, reply.action, reply.replyData);
  }

  /** See VmHost.pendingEvent. */
  pendingEvent(vcpu: number, seq: number): KvmiEvent {
    const pending = this.pending.get(vcpu);
    if (pending === undefined || pending.event.seq !== seq) {
      throw new BridgeError("EVENT_NOT_PENDING", `no event seq ${seq} is waiting on vCPU ${vcpu} (already answered or timed out)`, { vm: this.vm.uuid, vcpu });
    }
    return pending.event;
  }

  /** Answers every pending event with the safe default, one after the other. */
  async answerAll(reason: AutoReplyReason): Promise<void> {
    for (const vcpu of [...this.pending.keys()]) await this.autoReply(vcpu, reason);
  }

  /** The socket closed: nothing pending can be answered any more, nothing queued sent. */
  closed(): void {
    this.notices.clear();
    for (const pending of this.pending.values()) clearTimeout(pending.timer);
    this.pending.clear();
  }

  /** Event reply data the bridge uses itself: CONTINUE; CR/MSR get the value the guest wrote. */
  private defaultReply(event: KvmiEvent): { action: number; data: Record<string, unknown> | undefined } {
    const payload = event.payload;
    // CR/MSR: the value the guest wrote; send() zero-fills other reply data (kvmi-v7's PF reply).
    if (event.spec.replyData !== null) return { action: 0, data: { new_val: payload?.["new_value"] ?? 0n } };
    // A breakpoint whose INT3 the bridge just removed must be re-executed, not re-injected.
    if (event.kind === "BREAKPOINT" && this.vm.ledger.wasRestored(payload?.["gpa"] as bigint)) {
      return { action: 1, data: undefined };
    }
    return { action: 0, data: undefined };
  }

  private async autoReply(vcpu: number, reason: AutoReplyReason): Promise<void> {
    const pending = this.pending.get(vcpu);
    if (pending === undefined) return;
    const { action, data } = this.defaultReply(pending.event);
    this.vm.options.metrics?.autoReply(v9EventName(pending.event.kind), reason);
    if (reason !== "no_controller") this.vm.log.debug({ vcpu, seq: pending.event.seq, reason }, "bridge answered the event");
    await this.send(vcpu, pending, action, data).catch(() => undefined);
  }

  private async send(vcpu: number, pending: PendingEvent, action: number, data: Record<string, unknown> | undefined): Promise<void> {
    if (this.pending.get(vcpu) !== pending) return;
    this.pending.delete(vcpu);
    clearTimeout(pending.timer);
    // Fields of the dialect's reply data that kvmi.v1 does not carry (kvmi-v7's PF reply) are zero.
    const replyData = data === undefined ? undefined : withZeroDefaults(pending.event.spec.replyData, data);
    await this.vm.channel.replyEvent(pending.event, action, replyData);
    const elapsed = Number(process.hrtime.bigint() - pending.event.receivedAt) / 1e9;
    this.vm.options.metrics?.eventRoundTrip(v9EventName(pending.event.kind), elapsed);
  }
}

/** CR/MSR reply data of a rule's reply; undefined for events without any. */
function ruleReplyData(rule: CompiledRule, event: KvmiEvent): Record<string, unknown> | undefined {
  if (event.spec.replyData === null) return undefined;
  const reply = rule.reply;
  const payload = event.payload;
  return { new_val: reply.value === "constant" ? reply.newVal : reply.value === "old" ? (payload?.["old_value"] ?? 0n) : (payload?.["new_value"] ?? 0n) };
}
