// SPDX-License-Identifier: Apache-2.0
/**
 * The Session stream (session.proto): attach as controller or observer, run commands tagged with
 * client ids, receive events, the unhook notice and VM changes, answer events. A round trip here
 * costs one stream message each way, not a new HTTP/2 stream. Writing responses and backpressure
 * are the base class's, in session-output.ts.
 */
import { setMaxListeners } from "node:events";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import {
  AttachedSchema,
  CommandResultSchema,
  ReplyRejectedSchema,
  Role,
  SessionInfoSchema,
  UnhookReason,
} from "@kvmi/proto";
import type {
  Attach,
  BatchReadMemoryRequest,
  CommandResult,
  EventReply,
  SessionCommand,
  SessionRequest,
  SetEventFilterRequest,
} from "@kvmi/proto";
import { BridgeError } from "../mapping/bridge-error.js";
import { commandMappingByMethod } from "../mapping/commands.js";
import { eventReplyToWire, eventToProto, unhookNotice } from "../mapping/events.js";
import { compileEventFilter, filterSummaryToProto, ruleNoticeToProto } from "../mapping/event-filter.js";
import type { CompiledFilter } from "../vm/event-rules.js";
import { parseVmName } from "../mapping/resource-names.js";
import { normalizeRequestNames, resolveDisplayName } from "./request-names.js";
import { statusToProto } from "../mapping/status.js";
import { vmToProto } from "../mapping/vm.js";
import type { Session, UnhookCause } from "../vm/vm-host.js";
import type { VmHost } from "../vm/vm-host.js";
import { outcome, summarizeArguments, who } from "../audit/audit-records.js";
import type { Principal } from "../auth/identity.js";
import { authorizeSessionCommand } from "./authorization.js";
import { ownerOf, principalOf } from "./principals.js";
import type { RpcDeps } from "./call-context.js";
import { failStream, failure, quotasOf } from "./call-context.js";
import type { QuotaLease } from "./quotas.js";
import { commandErrorContext, runCommand } from "./command-rpcs.js";
import type { CommandCaller } from "./command-rpcs.js";
import { BATCH_READ_WINDOWS, batchRead, batchReadResponse } from "./memory-rpcs.js";
import { recordOf, vmChangeOf } from "./registry-rpcs.js";
import type { Call } from "./session-output.js";
import { MAX_BUFFERED_EVENTS, MAX_BUFFERED_RESPONSES, SessionOutput } from "./session-output.js";

/** Commands one session may have in flight. */
export const MAX_INFLIGHT_COMMANDS = 64;
export { MAX_BUFFERED_EVENTS } from "./session-output.js";
const MIN_EVENT_DEADLINE_MS = 10;
const MAX_EVENT_DEADLINE_MS = 60_000;

const UNHOOK_REASONS: Readonly<Record<UnhookCause, UnhookReason>> = {
  "device-manager": UnhookReason.DEVICE_MANAGER,
  operator: UnhookReason.OPERATOR,
  "bridge-shutdown": UnhookReason.BRIDGE_SHUTDOWN,
};

/** The Session handler. */
export function sessionHandler(deps: RpcDeps): (call: Call) => void {
  return (call) => new SessionStream(deps, call).start();
}

class SessionStream extends SessionOutput {
  private host: VmHost | undefined;
  private session: Session | undefined;
  private readonly inflight = new Set<bigint>();
  /**
   * One signal for all of the session's commands (fired when the session ends), rather than an
   * AbortController per command on the low-latency path. Its listeners are bounded: one per
   * command waiting for the channel's slots (a batch read waits with up to BATCH_READ_WINDOWS),
   * plus one per channel watching the session's commands (session/in-flight.ts).
   */
  private readonly ending = new AbortController();
  private stopWatching: (() => void) | undefined;
  /** Who opened the stream (set by the authorization guard before start()). */
  private readonly principal: Principal;
  private readonly identity: string;
  /** This stream's place in the sessions quota. */
  private sessionLease: QuotaLease | undefined;
  /** Sends the controller's filter summaries (EventFilter.summary_interval). */
  private summaryTimer: NodeJS.Timeout | undefined;
  /** The client asked for EventBatch messages (Attach.event_batches). */
  private batchEvents = false;

  constructor(deps: RpcDeps, call: Call) {
    super(deps, call);
    this.principal = principalOf(call);
    // Quotas count per identity: the one the controller binding uses.
    this.identity = ownerOf(this.principal);
  }

  start(): void {
    try {
      this.sessionLease = quotasOf(this.deps).acquire("sessions", this.identity);
    } catch (err) {
      this.ended = true;
      failStream(this.call, failure(this.deps, "session", err));
      return;
    }
    setMaxListeners(MAX_INFLIGHT_COMMANDS * BATCH_READ_WINDOWS + 8, this.ending.signal);
    this.call.on("drain", () => this.onDrain());
    this.call.on("data", (request: SessionRequest) => this.onRequest(request));
    this.call.on("end", () => void this.finish("the client closed its side"));
    this.call.on("cancelled", () => void this.finish("the client cancelled"));
    this.call.on("error", () => void this.finish("the stream failed"));
  }

  private onRequest(request: SessionRequest): void {
    const message = request.message;
    try {
      switch (message.case) {
        case "attach":
          return this.attach(message.value);
        case "command":
          return this.command(message.value);
        case "eventReply":
          return this.eventReply(message.value);
        case "eventReplies":
          for (const reply of message.value.replies) this.eventReply(reply);
          return;
        case "release":
          void this.finish("the client released the session", true, message.value.keepChanges);
          return;
        default:
          throw new BridgeError("SESSION_STATE", "empty SessionRequest: set attach, command, event_reply, event_replies or release");
      }
    } catch (err) {
      this.fail(err);
    }
  }

  private attach(attach: Attach): void {
    if (this.session !== undefined) throw new BridgeError("SESSION_STATE", "the session is already attached; attach is sent once");
    const uuid = parseVmName(resolveDisplayName(attach.vm, this.deps.registry, "attach.vm"), "attach.vm");
    const role = attach.role === Role.CONTROLLER ? "controller" : attach.role === Role.OBSERVER ? "observer" : undefined;
    if (role === undefined) throw new KvmiArgumentError("attach.role", "attach.role must be ROLE_CONTROLLER or ROLE_OBSERVER");
    let deadlineMs: number | undefined;
    if (attach.eventDeadline !== undefined) {
      deadlineMs = Number(attach.eventDeadline.seconds) * 1000 + attach.eventDeadline.nanos / 1e6;
      if (deadlineMs < MIN_EVENT_DEADLINE_MS || deadlineMs > MAX_EVENT_DEADLINE_MS) {
        throw new KvmiArgumentError("attach.event_deadline", "attach.event_deadline must be between 10 ms and 60 s");
      }
    }
    if (attach.eventFilter !== undefined && role !== "controller") {
      throw new KvmiArgumentError("attach.event_filter", "only a controller has an event filter: leave attach.event_filter unset for observers");
    }
    // Authorized before the VM is looked up: an unknown VM and a forbidden one look the same.
    this.deps.access.authorize(this.principal, role === "controller" ? "control" : "observe", uuid, "session.attach");
    const host = this.deps.hosts.require(uuid);
    // Compiled before attaching: a filter with errors fails the attach and changes nothing.
    const filter = compileEventFilter(attach.eventFilter, { dialect: host.channel.dialect, vcpuCount: host.record.vcpuCount }, "attach.event_filter");
    const session = host.attach(
      role,
      {
        // A client too far behind gets no more events: the controller's are answered by the bridge
        // ("slow_consumer"), an observer's copies are dropped. Memory stays bounded either way.
        event: (event, deadline, notice) => {
          if (this.call.writableLength > MAX_BUFFERED_RESPONSES || this.unsentEvents + this.turnEvents.length >= MAX_BUFFERED_EVENTS) {
            // An observer that stopped reading long ago is dropped; the controller's events are
            // answered by the bridge (slow_consumer) and it keeps its session.
            if (role === "observer" && this.call.writableLength > 2 * MAX_BUFFERED_RESPONSES) this.dropUnread();
            return false;
          }
          const value = eventToProto(uuid, event, deadline, new Date(event.receivedAtMs));
          if (notice !== undefined) value.notification = ruleNoticeToProto(notice);
          if (this.batchEvents) this.queueEvent(value);
          else this.write({ message: { case: "event", value } }, undefined, 1);
          return true;
        },
        // Checked per event like a client's reply is per reply: a policy reload applies at once.
        mayAnswer: () => this.deps.access.allows(this.principal, "control", uuid),
        unhook: (deadline, cause) =>
          void this.write({ message: { case: "unhook", value: unhookNotice(uuid, deadline, UNHOOK_REASONS[cause]) } }),
        end: (err) => this.fail(err),
      },
      deadlineMs,
      ownerOf(this.principal),
    );
    this.host = host;
    this.session = session;
    this.batchEvents = attach.eventBatches;
    if (filter !== undefined) this.applyFilter(filter);
    this.deps.audit.record({ action: "attach", ...who(this.principal), vm: uuid, role, session: session.id });
    this.stopWatching = this.deps.registry.watch((change) => {
      if (change.vm.uuid !== uuid || change.type === "unhooked") return;
      if (this.call.writableLength > MAX_BUFFERED_RESPONSES) return this.dropUnread();
      this.write({ message: { case: "vmChange", value: vmChangeOf(this.deps, change) } });
    });
    this.write({
      message: {
        case: "attached",
        value: create(AttachedSchema, {
          role: attach.role,
          vm: vmToProto(recordOf(this.deps, host.record)),
          session: create(SessionInfoSchema, {
            sessionId: session.id,
            ...(session.eventDeadlineMs !== undefined && { eventDeadline: durationFromMs(session.eventDeadlineMs) }),
            ...(role === "controller" && session.eventDeadlineMs === undefined && { eventDeadline: durationFromMs(host.defaultEventDeadlineMs) }),
            maxInflightCommands: MAX_INFLIGHT_COMMANDS,
            attachTime: timestampFromDate(new Date()),
            eventBatches: attach.eventBatches,
          }),
        }),
      },
    });
  }

  // The per-command path creates no named closures: under tsx every named function expression is
  // wrapped in a `__name` call (Object.defineProperty), which showed in profiles of this path.
  private command(command: SessionCommand): void {
    const session = this.requireSession();
    const id = command.id;
    const request = command.request;
    // Refusals before the command is registered must leave the in-flight entry of the id alone.
    // session.proto: an id that is still in flight gets an INVALID_ARGUMENT result.
    if (this.inflight.has(id)) return this.commandFailed(id, request, new KvmiArgumentError("id", `command id ${id} is still in flight: use a new id`));
    // Results written but not yet taken by the client count against the window: a session that
    // never reads its results cannot make the bridge hold more than the window.
    if (this.inflight.size + this.call.writableLength >= MAX_INFLIGHT_COMMANDS) {
      return this.commandFailed(
        id,
        request,
        new BridgeError("TOO_MANY_IN_FLIGHT", `at most ${MAX_INFLIGHT_COMMANDS} commands (and unread results) may be in flight per session`),
      );
    }
    if (request.case === undefined) return this.commandFailed(id, request, new KvmiArgumentError("command.request", "the command is empty"));
    if (request.case === "setEventFilter") return this.setEventFilter(id, request.value);
    let lease: QuotaLease;
    try {
      lease = this.commandLease(request);
    } catch (err) {
      return this.commandFailed(id, request, err);
    }
    this.inflight.add(id);
    const caller = {
      sessionId: session.id,
      principal: this.principal,
      owner: session.owner,
      timeoutMs: this.deps.requestTimeoutMs,
      signal: this.ending.signal,
    };
    this.execute(request, caller).then(
      (value) => {
        this.inflight.delete(id);
        this.commandResult(id, { case: request.case, value } as never, lease);
      },
      (err: unknown) => {
        this.inflight.delete(id);
        this.commandFailed(id, request, err, lease);
      },
    );
  }

  /**
   * SetEventFilter: compiled and applied at once (no KVMI command), answered with the final
   * counters of the filter it replaces.
   */
  private setEventFilter(id: bigint, request: SetEventFilterRequest): void {
    const host = this.host!;
    try {
      authorizeSessionCommand(this.deps.access, this.principal, "setEventFilter", host.uuid);
      if (this.session!.role !== "controller") {
        throw new BridgeError("NOT_CONTROLLER", "only the controller may set an event filter: attach with role CONTROLLER", { vm: host.uuid });
      }
      const filter = compileEventFilter(request.filter, { dialect: host.channel.dialect, vcpuCount: host.record.vcpuCount }, "set_event_filter.filter");
      const previous = this.applyFilter(filter);
      this.commandResult(id, { case: "setEventFilter", value: { $typeName: "kvmi.v1.SetEventFilterResponse", previous: previous && filterSummaryToProto(previous) } });
    } catch (err) {
      this.commandResult(id, { case: "error", value: statusToProto(err) });
    }
  }

  /** Installs the controller's filter and its summary timer; returns the filter it replaces. */
  private applyFilter(filter: CompiledFilter | undefined): CompiledFilter | undefined {
    const previous = this.host!.setEventFilter(this.session!, filter);
    clearInterval(this.summaryTimer);
    this.summaryTimer = undefined;
    const intervalMs = filter?.summaryIntervalMs;
    if (filter !== undefined && intervalMs !== undefined) {
      this.summaryTimer = setInterval(() => {
        if (this.host?.eventFilter !== filter) return clearInterval(this.summaryTimer);
        // A summary replaces the last unread one in effect: with the stream backed up, skip it.
        if (this.call.writableLength > MAX_BUFFERED_RESPONSES) return;
        this.write({ message: { case: "filterSummary", value: filterSummaryToProto(filter) } });
      }, intervalMs);
      this.summaryTimer.unref();
    }
    return previous;
  }

  /** The identity's in-flight slot for a command, plus the bulk bytes of a batch read. */
  private commandLease(request: NonNullable<SessionCommand["request"]>): QuotaLease {
    const quotas = quotasOf(this.deps);
    const slot = quotas.acquire("inflight", this.identity);
    if (request.case !== "batchReadMemory") return slot;
    let bytes = 0;
    for (const range of (request.value as BatchReadMemoryRequest).ranges) bytes += Number(range.length);
    try {
      const bulk = quotas.acquire("bulkBytes", this.identity, bytes);
      return { release: () => (slot.release(), bulk.release()) };
    } catch (err) {
      slot.release();
      throw err;
    }
  }

  private async execute(request: NonNullable<SessionCommand["request"]> & { case: string }, caller: CommandCaller): Promise<unknown> {
    const named = request.value as { vm?: string; name?: string };
    normalizeRequestNames(named, this.deps.registry);
    if (parseVmName((named.vm ?? named.name ?? "").split("/vcpus/")[0]!, "vm") !== this.host!.uuid) {
      throw new KvmiArgumentError("command", "the command names another VM than the session is attached to");
    }
    // Checked per command, not once at attach: a policy reload applies to running sessions.
    authorizeSessionCommand(this.deps.access, this.principal, request.case, this.host!.uuid);
    if (request.case === "batchReadMemory") return batchReadResponse(await batchRead(this.deps, request.value as BatchReadMemoryRequest, caller));
    return runCommand(this.deps, commandMappingByMethod(request.case)!, request.value as never, caller);
  }

  private commandResult(id: bigint, value: CommandResult["result"], lease?: QuotaLease): void {
    this.write({ message: { case: "commandResult", value: create(CommandResultSchema, { id, result: value }) } }, lease);
  }

  /** Answers command `id` with the error status of `err`, with the command's context (built only now). */
  private commandFailed(id: bigint, request: SessionCommand["request"], err: unknown, lease?: QuotaLease): void {
    const mapping = request.case === undefined || request.case === "batchReadMemory" ? undefined : commandMappingByMethod(request.case);
    const context = mapping === undefined ? {} : commandErrorContext(mapping, request.value);
    this.commandResult(id, { case: "error", value: statusToProto(err, context) }, lease);
  }

  private eventReply(reply: EventReply): void {
    const session = this.requireSession();
    try {
      this.deps.access.authorize(this.principal, "control", this.host!.uuid, "session.eventReply");
      const pending = this.host!.pendingEvent(reply.vcpu, reply.seq);
      const wire = eventReplyToWire(pending, reply);
      const replied = this.host!.replyEvent(session, reply.vcpu, reply.seq, wire);
      // A reply that sets registers changes the guest: audited like SetRegisters.
      if (reply.registers !== undefined && this.deps.audit.enabled) {
        const record = { action: "event_reply", ...who(this.principal), vm: this.host!.uuid, vcpu: reply.vcpu, seq: reply.seq, session: session.id };
        replied.then(
          () => this.deps.audit.record({ ...record, args: summarizeArguments({ action: reply.action, registers: reply.registers }), result: "ok" }),
          (err: unknown) => this.deps.audit.record({ ...record, args: summarizeArguments({ registers: reply.registers }), ...outcome(err) }),
        );
      }
      replied.catch((err: unknown) => this.replyRejected(reply, err));
    } catch (err) {
      this.replyRejected(reply, err);
    }
  }

  private replyRejected(reply: EventReply, err: unknown): void {
    this.write({
      message: { case: "replyRejected", value: create(ReplyRejectedSchema, { vcpu: reply.vcpu, seq: reply.seq, status: statusToProto(err) }) },
    });
  }

  private requireSession(): Session {
    if (this.session === undefined) throw new BridgeError("SESSION_STATE", "send attach first");
    return this.session;
  }

  /**
   * Ends the session: aborts its commands, detaches (the host applies the policy, or keeps the
   * controller's changes when it released with `keep_changes`), ends the stream.
   */
  protected async finish(reason: string, endStream = true, keepChanges = false): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.sessionLease?.release();
    // The stream's buffers go away with it: so does the quota they held.
    for (const lease of this.heldUntilDrain.splice(0)) lease.release();
    this.stopWatching?.();
    clearInterval(this.summaryTimer);
    this.ending.abort(new Error(reason));
    this.inflight.clear();
    if (this.session !== undefined) {
      this.deps.audit.record({ action: "detach", ...who(this.principal), vm: this.host!.uuid, role: this.session.role, session: this.session.id, reason, keepChanges });
      await this.host!.detach(this.session, reason, { keepChanges });
    }
    if (endStream) this.call.end();
  }
}
