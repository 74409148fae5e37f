// SPDX-License-Identifier: Apache-2.0
/**
 * One hooked VM as the bridge serves it: its KVMI channel, at most one controller and any number
 * of observers, the commands they run and the hook ledger those go through. gRPC-free: the RPC
 * layer turns sessions into streams.
 *
 * The rule the host exists for: a vCPU never stays blocked because of a client. Every event is
 * answered, by the controller or by the bridge (deadline passed, no controller, controller too slow
 * to read, controller gone, unhook, shutdown) with the safe default. The event path that keeps it
 * is vm-events.ts, the unhook flow vm-unhook.ts; this file owns sessions and commands and wires
 * the three together. Callers import the host's types from here.
 */
import { randomUUID } from "node:crypto";
import type { CancelSignal, KvmiChannel, KvmiEvent, Logger, VmRecord, VmRegistry } from "@kvmi/kvm-bridge";
import type { CommandOp, OpReply, OpRequest, V9CommandName, V9CommandReply as CommandReply, V9CommandRequest as CommandRequest } from "@kvmi/kvm-bridge/wire";
import { permissionDenied } from "../mapping/access-error.js";
import { BridgeError } from "../mapping/bridge-error.js";
import { COMMAND_FACTS_BY_OP, MUTATING_COMMANDS } from "../mapping/command-facts.js";
import { eventKindOfApiId } from "../mapping/enums.js";
import { sendCommand, sendCommandBatch, sendOp } from "./dialect-translation.js";
import type { CompiledFilter } from "./event-rules.js";
import { HookLedger } from "./hook-ledger.js";
import type { LedgerJournal } from "./ledger-journal.js";
import { VmEvents } from "./vm-events.js";
import { attachedSessions, DEFAULT_OWNER } from "./vm-host-types.js";
import type { Attached, Session, SessionSink, UnhookCause, VmHostOptions, VmHostState, VmParts } from "./vm-host-types.js";
import { VmUnhook } from "./vm-unhook.js";

export { NOTICE_QUEUE } from "./vm-events.js";
export { DEFAULT_OWNER } from "./vm-host-types.js";
export type { AutoReplyReason, FilterOutcome, RuleNotice, Session, SessionSink, UnhookCause, VmHostMetrics, VmHostOptions } from "./vm-host-types.js";

/** Serves one hooked VM. */
export class VmHost {
  readonly uuid: string;
  /** The ledger's journal on disk, when journaling is on. */
  readonly journal: LedgerJournal | undefined;
  private readonly ledger: HookLedger;
  /** The sessions and the release flag, shared with the event path and the unhook flow. */
  private readonly state: VmHostState = { controller: undefined, observers: new Map(), releasing: undefined };
  private readonly events: VmEvents;
  private readonly unhook: VmUnhook;
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
    const parts: VmParts = { state: this.state, uuid: this.uuid, registry, channel, ledger: this.ledger, options, log: this.log };
    const events = new VmEvents(parts, () => this.unhook.start("device-manager"));
    const unhook = new VmUnhook(parts, events);
    this.events = events;
    this.unhook = unhook;
    channel.setEventSink((event) => events.onEvent(event));
    channel.onClose((err) => unhook.onClosed(err));
  }

  /** The VM's current registry record. */
  get record(): VmRecord {
    return this.registry.get(this.uuid)!;
  }

  /** Sessions attached now (controller first). */
  get sessions(): Session[] {
    return attachedSessions(this.state);
  }

  /** True while the channel is open and no unhook is in progress: new sessions may attach. */
  get isServing(): boolean {
    return this.channel.isOpen && !this.unhook.announced;
  }

  /**
   * True while commands may run: the channel is open and the bridge has not started undoing hooks.
   * An announced unhook (UNHOOK_PENDING) still accepts commands (vm.proto STATE_UNHOOK_PENDING), so
   * that the controller can undo its own changes before it releases.
   */
  get acceptsCommands(): boolean {
    return this.channel.isOpen && this.state.releasing === undefined;
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
    if (role === "controller" && this.state.controller !== undefined) {
      throw new BridgeError(
        "CONTROLLER_PRESENT",
        // Never the controller's session id or identity: other callers learn only that one exists.
        `VM ${this.uuid} already has a controller; attach as OBSERVER or retry after it leaves`,
        { vm: this.uuid },
      );
    }
    const session: Attached = { id: randomUUID(), role, eventDeadlineMs: role === "controller" ? eventDeadlineMs : undefined, owner, sink };
    if (role === "controller") this.state.controller = session;
    else this.state.observers.set(session.id, session);
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
    if (this.channel.isOpen && !this.unhook.announced && this.registry.get(this.uuid)?.state === "hooked") this.registry.update(this.uuid, {});
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
    if (this.state.observers.delete(session.id)) return this.sessionsChanged();
    if (this.state.controller?.id !== session.id) return;
    this.state.controller = undefined;
    this.events.controllerLeft();
    this.sessionsChanged();
    this.log.info({ session: session.id, reason }, "controller detached");
    if (this.unhook.announced) {
      this.unhook.endGrace();
      return;
    }
    // Undo first, answer after: a breakpoint event whose INT3 is gone is answered RETRY, never
    // CONTINUE (which would inject #BP into the guest). Kept changes stay in the ledger, because
    // unhook and shutdown always undo it before the socket closes.
    const undo = this.options.controllerGonePolicy === "release" && options.keepChanges !== true;
    if (undo && this.channel.isOpen) await this.unhook.undoLedger();
    await this.events.answerAll("controller_gone");
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
    caller: { readonly sessionId?: string | undefined; readonly owner?: string | undefined; readonly timeoutMs?: number; readonly signal?: CancelSignal },
  ): Promise<CommandReply<N>> {
    const mutating = MUTATING_COMMANDS.has(name);
    if (mutating && this.state.controller !== undefined && caller.sessionId === this.state.controller.id && (caller.owner ?? DEFAULT_OWNER) !== this.state.controller.owner) {
      // The session id of another identity's controller: a stolen or leaked id is not a credential.
      throw permissionDenied("control", this.uuid);
    }
    if (mutating && (this.state.controller === undefined || caller.sessionId !== this.state.controller.id)) {
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
    caller: { readonly timeoutMs?: number; readonly signal?: CancelSignal },
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
    caller: { readonly timeoutMs?: number; readonly signal?: CancelSignal },
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
  // Events (vm-events.ts)

  /**
   * Replaces the controller's event filter (undefined removes it) and returns the one it replaces,
   * with its final counters.
   * @throws BridgeError NOT_CONTROLLER when `session` is not the controller.
   */
  setEventFilter(session: Session, filter: CompiledFilter | undefined): CompiledFilter | undefined {
    return this.events.setEventFilter(session, filter);
  }

  /** The controller's event filter, for summaries. */
  get eventFilter(): CompiledFilter | undefined {
    return this.events.eventFilter;
  }

  /**
   * The controller's reply to an event. Idempotent per (vcpu, seq): a reply to an event that is no
   * longer pending (already answered, or answered by the bridge) is EVENT_NOT_PENDING.
   * @throws BridgeError NOT_CONTROLLER, EVENT_NOT_PENDING (as a rejection); Kvmi*Error from the channel.
   */
  replyEvent(
    session: Session,
    vcpu: number,
    seq: number,
    reply: { readonly action: number; readonly replyData: Record<string, unknown> | undefined; readonly registers?: Record<string, unknown> | undefined },
  ): Promise<void> {
    return this.events.replyEvent(session, vcpu, seq, reply);
  }

  /**
   * The event a reply answers, for validation before it is sent.
   * @throws BridgeError EVENT_NOT_PENDING when no such event waits (already answered or timed out).
   */
  pendingEvent(vcpu: number, seq: number): KvmiEvent {
    return this.events.pendingEvent(vcpu, seq);
  }

  /** The event reply deadline a controller gets unless it asks for another. */
  get defaultEventDeadlineMs(): number {
    return this.options.eventDeadlineMs;
  }

  // ---------------------------------------------------------------------------------------------
  // Unhook, release, shutdown (vm-unhook.ts)

  /**
   * Announces the end of introspection with a deadline, lets the controller clean up and release,
   * then undoes what is left and closes the KVMI socket (kvmi-abi §2.6 step 4). Used for UNHOOK,
   * ReleaseVm and bridge shutdown. Resolves when the socket is closed.
   */
  release(cause: UnhookCause, graceMs?: number): Promise<void> {
    return this.unhook.release(cause, graceMs);
  }
}

function isUnhookDisable(request: unknown): boolean {
  const body = request as { event_id?: number; enable?: number };
  return body.event_id !== undefined && eventKindOfApiId(body.event_id) === "UNHOOK" && body.enable === 0;
}

function seconds(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}
