// SPDX-License-Identifier: Apache-2.0
/**
 * One hooked VM as the bridge serves it: its KVMI channel, at most one controller and any number
 * of observers, the events waiting for a reply (each with a deadline), the hook ledger, and the
 * unhook flow. gRPC-free: the RPC layer turns sessions into streams.
 *
 * The rule this file exists for: a vCPU never stays blocked because of a client. Every event is
 * answered, by the controller or by the bridge (deadline passed, no controller, controller too slow
 * to read, controller gone, unhook, shutdown) with the safe default.
 */
import { randomUUID } from "node:crypto";
import { KvmiProtocolError } from "@kvmi/kvm-bridge";
import type { KvmiChannel, KvmiEvent, KvmiTransportError, Logger, VmRecord, VmRegistry } from "@kvmi/kvm-bridge";
import { withZeroDefaults } from "@kvmi/kvm-bridge/wire";
import { eventKindOfApiId } from "../mapping/enums.js";
import type { CommandOp, OpReply, OpRequest, V9CommandName, V9CommandReply as CommandReply, V9CommandRequest as CommandRequest } from "@kvmi/kvm-bridge/wire";
import { permissionDenied } from "../mapping/access-error.js";
import { BridgeError } from "../mapping/bridge-error.js";
import { COMMAND_FACTS_BY_OP, MUTATING_COMMANDS } from "../mapping/command-facts.js";
import type { AutoReplyReason } from "../metrics/index.js";
import { HookLedger } from "./hook-ledger.js";
import { NoticeQueue } from "./notice-queue.js";
import { Counter, COUNTER_SLOTS, RuleActionKind } from "./event-rules.js";
import type { CompiledFilter, CompiledRule } from "./event-rules.js";
import { sendCommand, sendCommandBatch, sendOp } from "./dialect-translation.js";
import { hasEventMapping, v9EventName } from "../mapping/events.js";
import type { UndoReport } from "./hook-ledger.js";
import type { LedgerJournal, LedgerJournals } from "./ledger-journal.js";

/** The owner of sessions attached without one: the identity of loopback plaintext callers. */
export const DEFAULT_OWNER = "local:local";

/** Why the bridge answered an event itself (a metric label). */
export type { AutoReplyReason };

/** Counters and timings the host reports (implemented with prom-client by the caller). */
export interface VmHostMetrics {
  /** One command sent on the socket; `error` is what it failed with, undefined when it succeeded. */
  command(name: string, error: unknown, seconds: number): void;
  /**
   * A burst of commands written at once (commandBatch): `ok` of them succeeded, `errors` are what
   * the others failed with; `seconds` is the burst's duration. Without it, each command is reported
   * through {@link command} with that duration.
   */
  commandBurst?(name: string, ok: number, errors: readonly unknown[], seconds: number): void;
  event(name: string): void;
  eventRoundTrip(name: string, seconds: number): void;
  autoReply(name: string, reason: AutoReplyReason): void;
  unhookToClose(seconds: number): void;
  bytesRead(bytes: number): void;
  /** One event the controller's filter looked at, by what became of it. */
  filterEvent?(name: string, outcome: FilterOutcome): void;
}

/** What became of an event the controller's filter looked at (a metric label). */
export type FilterOutcome = "replied" | "notified" | "delivered" | "unmatched" | "notification_dropped";

/** Tells a session that a rule already answered the event it receives (a notification). */
export interface RuleNotice {
  /** The rule's name. */
  readonly rule: string;
  /** The wire action the bridge sent (KVMI_EVENT_ACTION_*). */
  readonly action: number;
  /** Wall-clock time the reply was written. */
  readonly replyTimeMs: number;
}

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

/** Why the bridge is closing a VM's KVMI socket. */
export type UnhookCause = "device-manager" | "operator" | "bridge-shutdown";

const UNHOOK_CAUSES: Readonly<Record<UnhookCause, string>> = {
  "device-manager": "the device manager is unhooking the VM (pause, suspend, migrate or shutdown)",
  operator: "an operator released the VM",
  "bridge-shutdown": "the bridge is shutting down",
};

/** Receives what a session must see. `event` returns false when the client is not keeping up. */
export interface SessionSink {
  /** `notice` is set when a filter rule already answered the event: it expects no reply. */
  event(event: KvmiEvent, replyDeadline: Date | undefined, notice?: RuleNotice): boolean;
  /**
   * True while the session may still answer events (the policy may have changed since attach): a
   * rule answers only then, as a client's reply is authorized per reply. Absent: always.
   */
  mayAnswer?(): boolean;
  unhook(deadline: Date, cause: UnhookCause): void;
  /** The VM's socket closed or the VM hooked again: the session is over. */
  end(error: Error): void;
}

/** A client attached to the VM. */
export interface Session {
  readonly id: string;
  readonly role: "controller" | "observer";
  readonly eventDeadlineMs: number | undefined;
  /**
   * The identity that attached (auth/access-control.ts identityKey). A controller's session id
   * authorizes nothing by itself: commands under it must come from this identity too.
   */
  readonly owner: string;
}

/** Options of a {@link VmHost}. */
export interface VmHostOptions {
  /** Default event reply deadline. */
  readonly eventDeadlineMs: number;
  /** Per-event overrides by kernel name (`KVMI_EVENT_CR`). */
  readonly eventDeadlines?: Readonly<Record<string, number>>;
  /** What the controller gets after UNHOOK (and on release/shutdown) before the bridge undoes hooks. */
  readonly unhookDeadlineMs: number;
  /** What happens to hooks when the controller goes away without an unhook. */
  readonly controllerGonePolicy: "release" | "keep";
  /** Deadline of the bridge's own undo commands. */
  readonly undoTimeoutMs?: number;
  readonly logger: Logger;
  readonly metrics?: VmHostMetrics;
  /** Journals the ledger on disk before each change (`--state-dir`); in memory only when absent. */
  readonly journals?: LedgerJournals | undefined;
}

interface PendingEvent {
  readonly event: KvmiEvent;
  readonly timer: NodeJS.Timeout | undefined;
}

interface Attached extends Session {
  readonly sink: SessionSink;
}

/** Serves one hooked VM. */
export class VmHost {
  readonly uuid: string;
  /** The ledger's journal on disk, when journaling is on. */
  readonly journal: LedgerJournal | undefined;
  private readonly ledger: HookLedger;
  private controller: Attached | undefined;
  private readonly observers = new Map<string, Attached>();
  private readonly pending = new Map<number, PendingEvent>();
  /** The controller's event filter (docs/event-filters.md); it ends with the controller. */
  private filter: CompiledFilter | undefined;
  /**
   * Notifications of rule-answered events. The rule's reply is written in the turn that decoded
   * the event; the notifications leave later and together (docs/decisions/0175), so a vCPU never
   * waits while the bridge encodes and writes one, and several share one message.
   */
  private readonly notices = new NoticeQueue<QueuedNotice>((notices) => this.sendNotices(notices), NOTICE_QUEUE);
  private unhook:
    | { readonly cause: UnhookCause; readonly started: bigint; readonly timer: NodeJS.Timeout; readonly done: Promise<void>; finish: () => void }
    | undefined;
  /** Set once the unhook's grace is over and the bridge undoes hooks and closes the socket. */
  private releasing = false;
  private sessionsTurn: "quiet" | "reported" | "changed-again" = "quiet";
  private readonly log: Logger;

  constructor(
    private readonly registry: VmRegistry,
    readonly channel: KvmiChannel,
    record: VmRecord,
    private readonly options: VmHostOptions,
  ) {
    this.uuid = record.uuid;
    this.journal = options.journals?.open(record.uuid, record.startTime);
    this.ledger = new HookLedger(this.journal);
    this.log = options.logger.child({ vm: record.uuid });
    channel.setEventSink((event) => this.onEvent(event));
    channel.onClose((err) => this.onClosed(err));
  }

  /** The VM's current registry record. */
  get record(): VmRecord {
    return this.registry.get(this.uuid)!;
  }

  /** Sessions attached now (controller first). */
  get sessions(): Session[] {
    return [...(this.controller ? [this.controller] : []), ...this.observers.values()];
  }

  /** True while the channel is open and no unhook is in progress: new sessions may attach. */
  get isServing(): boolean {
    return this.channel.isOpen && this.unhook === undefined;
  }

  /**
   * True while commands may run: the channel is open and the bridge has not started undoing hooks.
   * An announced unhook (UNHOOK_PENDING) still accepts commands (vm.proto STATE_UNHOOK_PENDING), so
   * that the controller can undo its own changes before it releases.
   */
  get acceptsCommands(): boolean {
    return this.channel.isOpen && !this.releasing;
  }

  /** The ledger, for tests and metrics. */
  get hookLedger(): HookLedger {
    return this.ledger;
  }

  // ---------------------------------------------------------------------------------------------
  // Sessions

  /**
   * Attaches a session.
   * @param owner the identity attaching; the controller is bound to it.
   * @throws BridgeError CONTROLLER_PRESENT for a second controller, VM_UNHOOKING during an unhook.
   */
  attach(role: Session["role"], sink: SessionSink, eventDeadlineMs?: number, owner = DEFAULT_OWNER): Session {
    if (!this.isServing) throw new BridgeError("VM_UNHOOKING", `VM ${this.uuid} is being unhooked; attach after it hooks again`, { vm: this.uuid });
    if (role === "controller" && this.controller !== undefined) {
      throw new BridgeError(
        "CONTROLLER_PRESENT",
        // Never the controller's session id or identity: other callers learn only that one exists.
        `VM ${this.uuid} already has a controller; attach as OBSERVER or retry after it leaves`,
        { vm: this.uuid },
      );
    }
    const session: Attached = { id: randomUUID(), role, eventDeadlineMs: role === "controller" ? eventDeadlineMs : undefined, owner, sink };
    if (role === "controller") this.controller = session;
    else this.observers.set(session.id, session);
    this.log.info({ session: session.id, role }, "session attached");
    this.sessionsChanged();
    return session;
  }

  /**
   * Tells watchers that the snapshot changed (controller_attached, observer_count): a registry
   * "state" change, which WatchVms and sessions report as VM_CHANGE_TYPE_STATE_CHANGED
   * (vm.proto). Only while hooked: during an unhook the state changes say more.
   */
  private sessionsChanged(): void {
    if (this.sessionsTurn !== "quiet") {
      this.sessionsTurn = "changed-again";
      return;
    }
    this.sessionsTurn = "reported";
    setImmediate(this.endSessionsTurn);
    if (this.channel.isOpen && this.unhook === undefined && this.registry.get(this.uuid)?.state === "hooked") this.registry.update(this.uuid, {});
  }

  /**
   * At most two session changes per VM and turn: the first at once (a lone attach is reported
   * before the attaching session subscribes, so it never hears of itself), the rest as one at the
   * end of the turn, which reads the final counts. Every watcher and session of the VM receives
   * each change, so a client attaching hundreds of observers at once would otherwise cost
   * observers × receivers messages (a neighbour's calls waited seconds behind them).
   */
  private readonly endSessionsTurn = (): void => {
    const again = this.sessionsTurn === "changed-again";
    this.sessionsTurn = "quiet";
    if (again) this.sessionsChanged();
  };


  /**
   * Detaches a session (Release, stream end, client gone). For the controller: during an unhook the
   * bridge finishes it now; otherwise the policy applies (`release` undoes the ledger), unless the
   * controller released asking to keep its changes.
   */
  async detach(session: Session, reason: string, options: { readonly keepChanges?: boolean } = {}): Promise<void> {
    if (this.observers.delete(session.id)) return this.sessionsChanged();
    if (this.controller?.id !== session.id) return;
    this.controller = undefined;
    this.filter = undefined;
    this.sessionsChanged();
    this.log.info({ session: session.id, reason }, "controller detached");
    if (this.unhook !== undefined) {
      this.unhook.finish();
      return;
    }
    // Undo first, answer after: a breakpoint event whose INT3 is gone is answered RETRY, never
    // CONTINUE (which would inject #BP into the guest). Kept changes stay in the ledger, because
    // unhook and shutdown always undo it before the socket closes.
    const undo = this.options.controllerGonePolicy === "release" && options.keepChanges !== true;
    if (undo && this.channel.isOpen) await this.undoLedger();
    for (const vcpu of [...this.pending.keys()]) await this.autoReply(vcpu, "controller_gone");
  }

  // ---------------------------------------------------------------------------------------------
  // Commands

  /**
   * Runs a command for a client. Mutating commands need the controller session; they go through
   * the hook ledger.
   * @throws BridgeError NOT_CONTROLLER, VM_UNHOOKING (after the unhook deadline); Kvmi*Error from the channel.
   */
  async command<N extends V9CommandName>(
    name: N,
    request: CommandRequest<N>,
    vcpu: number | undefined,
    caller: { readonly sessionId?: string | undefined; readonly owner?: string | undefined; readonly timeoutMs?: number; readonly signal?: AbortSignal },
  ): Promise<CommandReply<N>> {
    const mutating = MUTATING_COMMANDS.has(name);
    if (mutating && this.controller !== undefined && caller.sessionId === this.controller.id && (caller.owner ?? DEFAULT_OWNER) !== this.controller.owner) {
      // The session id of another identity's controller: a stolen or leaked id is not a credential.
      throw permissionDenied("control", this.uuid);
    }
    if (mutating && (this.controller === undefined || caller.sessionId !== this.controller.id)) {
      throw new BridgeError(
        "NOT_CONTROLLER",
        "only the controller session may change guest state: attach with role CONTROLLER and send the command on its session (or pass its session id in the kvmi-session-id metadata)",
        { command: name, vm: this.uuid, ...(vcpu !== undefined && { vcpu }) },
      );
    }
    if (name === "KVMI_VM_CONTROL_EVENTS" && isUnhookDisable(request)) {
      // The bridge keeps UNHOOK enabled so that PREUNHOOK always reaches it and, through it, the
      // controller; a tool that disables every event on cleanup gets a success that changes nothing.
      this.log.debug({ command: name }, "kept the UNHOOK event enabled");
      return {} as CommandReply<N>;
    }
    const started = process.hrtime.bigint();
    try {
      // The caller's timeoutMs and signal are the channel's command options.
      const reply = mutating
        ? await this.ledger.run(this.channel, name, request, vcpu, () => sendCommand(this.channel, name, request, vcpu, caller))
        : await sendCommand(this.channel, name, request, vcpu, caller);
      this.options.metrics?.command(name, undefined, seconds(started));
      if (name === "KVMI_VM_READ_PHYSICAL") this.options.metrics?.bytesRead((reply as { data: Uint8Array }).data.length);
      return reply;
    } catch (err) {
      this.options.metrics?.command(name, err, seconds(started));
      throw err;
    }
  }

  /**
   * Runs a read-only command v9 does not have (mapping/dialect-commands.ts) by its op. Anyone may
   * run it, as any other command that changes nothing.
   * @throws Error for an op that changes the guest (none yet: those would need the ledger);
   *   KvmiNotInDialectError when the VM's dialect lacks it; Kvmi*Error from the channel.
   */
  async commandOp<O extends CommandOp>(
    op: O,
    request: OpRequest<O>,
    vcpu: number | undefined,
    caller: { readonly timeoutMs?: number; readonly signal?: AbortSignal },
  ): Promise<OpReply<O>> {
    const facts = COMMAND_FACTS_BY_OP.get(op);
    if (facts === undefined || facts.mutating) throw new Error(`${op} is not a read-only command of kvmi.v1`);
    const started = process.hrtime.bigint();
    try {
      const reply = await sendOp(this.channel, op, request, vcpu, caller);
      this.options.metrics?.command(facts.command, undefined, seconds(started));
      return reply;
    } catch (err) {
      this.options.metrics?.command(facts.command, err, seconds(started));
      throw err;
    }
  }

  /**
   * Runs one read-only command per request in one burst (KvmiChannel.commandBatch): per request its
   * reply or its error. Metrics count every command and observe the burst's duration once.
   * @throws Error for a mutating command (those go one by one through the hook ledger).
   */
  async commandBatch<N extends V9CommandName>(
    name: N,
    requests: readonly CommandRequest<N>[],
    vcpu: number | undefined,
    caller: { readonly timeoutMs?: number; readonly signal?: AbortSignal },
  ): Promise<Array<CommandReply<N> | Error>> {
    if (MUTATING_COMMANDS.has(name)) throw new Error(`${name} changes guest state: send it with command()`);
    const started = process.hrtime.bigint();
    const results = await sendCommandBatch(this.channel, name, requests, vcpu, caller);
    const metrics = this.options.metrics;
    if (metrics !== undefined) {
      const elapsed = seconds(started);
      let bytes = 0;
      let ok = 0;
      const errors: Error[] = [];
      for (const r of results) {
        if (r instanceof Error) errors.push(r);
        else {
          ok++;
          if (name === "KVMI_VM_READ_PHYSICAL") bytes += (r as { data: Uint8Array }).data.length;
        }
      }
      if (metrics.commandBurst !== undefined) metrics.commandBurst(name, ok, errors, elapsed);
      else for (const r of results) metrics.command(name, r instanceof Error ? r : undefined, elapsed);
      if (bytes > 0) metrics.bytesRead(bytes);
    }
    return results;
  }

  // ---------------------------------------------------------------------------------------------
  // Events

  private deadlineFor(event: KvmiEvent): number {
    return this.controller?.eventDeadlineMs ?? this.options.eventDeadlines?.[v9EventName(event.kind)] ?? this.options.eventDeadlineMs;
  }

  private onEvent(event: KvmiEvent): boolean {
    this.options.metrics?.event(v9EventName(event.kind));
    if (event.kind === "UNHOOK") {
      this.startUnhook("device-manager");
      return true;
    }
    const violation = this.eventViolation(event);
    if (violation !== undefined) {
      // Accepting it would overwrite the pending event of that vCPU (whose deadline timer would
      // then answer the wrong one) or answer a vCPU the kernel does not have. A kernel never does
      // this (a vCPU blocks on its one event until the reply): the peer
      // is not a KVMI kernel we can trust, so its connection ends here.
      this.log.warn({ vcpu: event.vcpu, seq: event.seq, event: event.spec.name, reason: violation }, "closing the VM's connection: invalid event");
      this.channel.close(`protocol error: ${violation}`, new KvmiProtocolError(violation, { vm: this.uuid, vcpu: event.vcpu }));
      return true;
    }
    // An event kind kvmi.v1 has no message for (none today; a table may list one before the API
    // does): answered at once, never held.
    if (!hasEventMapping(event.kind)) {
      this.pending.set(event.vcpu, { event, timer: undefined });
      void this.autoReply(event.vcpu, "not_in_api");
      return true;
    }
    const controller = this.controller;
    // Rules decide only while the controller is in charge (not once the bridge releases the VM).
    if (controller !== undefined && !this.releasing && this.filter !== undefined && this.applyFilter(this.filter, controller, event)) return true;
    const deadlineMs = this.deadlineFor(event);
    const deadline = new Date(Date.now() + deadlineMs);
    // Queued notifications first: every session sees a vCPU's events in the order they came.
    if (this.notices.length > 0) this.notices.flush();
    for (const observer of this.observers.values()) observer.sink.event(event, undefined);
    // During an announced unhook the controller is still in charge (it may be removing its own
    // breakpoints); only once the bridge releases does it answer by itself.
    if (controller === undefined || this.releasing) {
      this.pending.set(event.vcpu, { event, timer: undefined });
      void this.autoReply(event.vcpu, this.releasing ? this.releaseReason() : "no_controller");
      return true;
    }
    const timer = setTimeout(() => void this.autoReply(event.vcpu, "deadline"), deadlineMs);
    this.pending.set(event.vcpu, { event, timer });
    if (!controller.sink.event(event, deadline)) void this.autoReply(event.vcpu, "slow_consumer");
    return true;
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
    const metrics = this.options.metrics;
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
    const metrics = this.options.metrics;
    for (const { event, notice, controller, filter } of notices) {
      for (const observer of this.observers.values()) observer.sink.event(event, undefined, notice);
      if (this.controller !== controller) continue; // detached since: its session is over
      if (!controller.sink.event(event, undefined, notice)) {
        filter.notificationsDropped++;
        metrics?.filterEvent?.(v9EventName(event.kind), "notification_dropped");
      }
    }
  }

  /** A rule's wire action; CONTINUE to a BREAKPOINT whose INT3 the bridge removed is RETRY (see defaultReply). */
  private ruleAction(rule: CompiledRule, event: KvmiEvent): number {
    const reply = rule.reply;
    if (reply.isContinue && event.kind === "BREAKPOINT" && this.ledger.wasRestored(event.payload?.["gpa"] as bigint)) return reply.retryAction;
    return reply.action;
  }

  /**
   * Replaces the controller's event filter (undefined removes it) and returns the one it replaces,
   * with its final counters.
   * @throws BridgeError NOT_CONTROLLER when `session` is not the controller.
   */
  setEventFilter(session: Session, filter: CompiledFilter | undefined): CompiledFilter | undefined {
    if (this.controller?.id !== session.id) {
      throw new BridgeError("NOT_CONTROLLER", "only the controller may set an event filter: attach with role CONTROLLER", { vm: this.uuid });
    }
    // The old rules' notifications reach the stream before the reply that replaces them.
    this.notices.flush();
    const previous = this.filter;
    this.filter = filter;
    this.log.info({ session: session.id, rules: filter?.rules.length ?? 0 }, "event filter set");
    return previous;
  }

  /** The controller's event filter, for summaries. */
  get eventFilter(): CompiledFilter | undefined {
    return this.filter;
  }

  /** Why an event cannot be accepted, or undefined when it can. */
  private eventViolation(event: KvmiEvent): string | undefined {
    const vcpuCount = this.registry.get(this.uuid)?.vcpuCount ?? 0;
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

  /**
   * The controller's reply to an event. Idempotent per (vcpu, seq): a reply to an event that is no
   * longer pending (already answered, or answered by the bridge) is EVENT_NOT_PENDING.
   */
  async replyEvent(
    session: Session,
    vcpu: number,
    seq: number,
    reply: { readonly action: number; readonly replyData: Record<string, unknown> | undefined; readonly registers?: Record<string, unknown> | undefined },
  ): Promise<void> {
    if (this.controller?.id !== session.id) {
      throw new BridgeError("NOT_CONTROLLER", "only the controller may answer events", { vm: this.uuid, vcpu });
    }
    this.pendingEvent(vcpu, seq);
    const pending = this.pending.get(vcpu)!;
    // Register changes ride on the reply: the kernel applies them when it processes it (kvmi-abi §3.4).
    if (reply.registers !== undefined) {
      await sendCommand(this.channel, "KVMI_VCPU_SET_REGISTERS", reply.registers as never, vcpu);
    }
    await this.send(vcpu, pending, reply.action, reply.replyData);
  }

  /**
   * The event a reply answers, for validation before it is sent.
   * @throws BridgeError EVENT_NOT_PENDING when no such event waits (already answered or timed out).
   */
  pendingEvent(vcpu: number, seq: number): KvmiEvent {
    const pending = this.pending.get(vcpu);
    if (pending === undefined || pending.event.seq !== seq) {
      throw new BridgeError("EVENT_NOT_PENDING", `no event seq ${seq} is waiting on vCPU ${vcpu} (already answered or timed out)`, { vm: this.uuid, vcpu });
    }
    return pending.event;
  }

  /** The event reply deadline a controller gets unless it asks for another. */
  get defaultEventDeadlineMs(): number {
    return this.options.eventDeadlineMs;
  }

  /** Event reply data the bridge uses itself: CONTINUE; CR/MSR get the value the guest wrote. */
  private defaultReply(event: KvmiEvent): { action: number; data: Record<string, unknown> | undefined } {
    const payload = event.payload;
    // CR/MSR: the value the guest wrote; send() zero-fills other reply data (kvmi-v7's PF reply).
    if (event.spec.replyData !== null) return { action: 0, data: { new_val: payload?.["new_value"] ?? 0n } };
    // A breakpoint whose INT3 the bridge just removed must be re-executed, not re-injected.
    if (event.kind === "BREAKPOINT" && this.ledger.wasRestored(payload?.["gpa"] as bigint)) {
      return { action: 1, data: undefined };
    }
    return { action: 0, data: undefined };
  }

  private async autoReply(vcpu: number, reason: AutoReplyReason): Promise<void> {
    const pending = this.pending.get(vcpu);
    if (pending === undefined) return;
    const { action, data } = this.defaultReply(pending.event);
    this.options.metrics?.autoReply(v9EventName(pending.event.kind), reason);
    if (reason !== "no_controller") this.log.debug({ vcpu, seq: pending.event.seq, reason }, "bridge answered the event");
    await this.send(vcpu, pending, action, data).catch(() => undefined);
  }

  private async send(vcpu: number, pending: PendingEvent, action: number, data: Record<string, unknown> | undefined): Promise<void> {
    if (this.pending.get(vcpu) !== pending) return;
    this.pending.delete(vcpu);
    clearTimeout(pending.timer);
    // Fields of the dialect's reply data that kvmi.v1 does not carry (kvmi-v7's PF reply) are zero.
    const replyData = data === undefined ? undefined : withZeroDefaults(pending.event.spec.replyData, data);
    await this.channel.replyEvent(pending.event, action, replyData);
    const elapsed = Number(process.hrtime.bigint() - pending.event.receivedAt) / 1e9;
    this.options.metrics?.eventRoundTrip(v9EventName(pending.event.kind), elapsed);
  }

  // ---------------------------------------------------------------------------------------------
  // Unhook, release, shutdown

  /**
   * Announces the end of introspection with a deadline, lets the controller clean up and release,
   * then undoes what is left and closes the KVMI socket (kvmi-abi §2.6 step 4). Used for UNHOOK,
   * ReleaseVm and bridge shutdown. Resolves when the socket is closed.
   */
  release(cause: UnhookCause, graceMs?: number): Promise<void> {
    this.startUnhook(cause, graceMs);
    return this.unhook?.done ?? Promise.resolve();
  }

  private startUnhook(cause: UnhookCause, graceMs = this.options.unhookDeadlineMs): void {
    if (this.unhook !== undefined || !this.channel.isOpen) return;
    const deadline = new Date(Date.now() + graceMs);
    let finish!: () => void;
    const finished = new Promise<void>((resolve) => (finish = resolve));
    const timer = setTimeout(finish, graceMs);
    const started = process.hrtime.bigint();
    const done = finished.then(() => this.completeUnhook(started));
    this.unhook = { cause, started, timer, done, finish };
    this.registry.update(this.uuid, { state: "unhook-pending", unhookDeadline: deadline });
    this.log.info({ reason: UNHOOK_CAUSES[cause], deadline: deadline.toISOString() }, "unhook pending");
    this.notices.flush(); // the notifications of events before the unhook come before its notice
    for (const session of this.sessions) (session as Attached).sink.unhook(deadline, cause);
    if (this.controller === undefined) finish();
  }

  /** The metric label of the bridge's own replies while it releases the VM. */
  private releaseReason(): AutoReplyReason {
    return this.unhook?.cause === "bridge-shutdown" ? "shutdown" : "unhook";
  }

  private async completeUnhook(started: bigint): Promise<void> {
    this.releasing = true;
    clearTimeout(this.unhook?.timer);
    if (this.channel.isOpen) this.registry.update(this.uuid, { state: "releasing" });
    if (this.channel.isOpen) await this.undoLedger();
    for (const vcpu of [...this.pending.keys()]) await this.autoReply(vcpu, this.releaseReason());
    this.channel.close("introspection released");
    this.options.metrics?.unhookToClose(seconds(started));
  }

  private async undoLedger(): Promise<UndoReport | undefined> {
    if (this.ledger.isEmpty) return undefined;
    const report = await this.ledger.undo(this.channel, this.options.undoTimeoutMs ?? 2000);
    this.log.info({ ...report }, "undid the controller's hooks");
    return report;
  }

  private onClosed(err: KvmiTransportError): void {
    this.notices.clear();
    for (const pending of this.pending.values()) clearTimeout(pending.timer);
    this.pending.clear();
    if (this.unhook !== undefined) clearTimeout(this.unhook.timer);
    this.unhook?.finish();
    const sessions = this.sessions as Attached[];
    this.controller = undefined;
    this.observers.clear();
    for (const session of sessions) session.sink.end(err);
  }
}

/** CR/MSR reply data of a rule's reply; undefined for events without any. */
function ruleReplyData(rule: CompiledRule, event: KvmiEvent): Record<string, unknown> | undefined {
  if (event.spec.replyData === null) return undefined;
  const reply = rule.reply;
  const payload = event.payload;
  return { new_val: reply.value === "constant" ? reply.newVal : reply.value === "old" ? (payload?.["old_value"] ?? 0n) : (payload?.["new_value"] ?? 0n) };
}

function isUnhookDisable(request: unknown): boolean {
  const body = request as { event_id?: number; enable?: number };
  return body.event_id !== undefined && eventKindOfApiId(body.event_id) === "UNHOOK" && body.enable === 0;
}

function seconds(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}
