// SPDX-License-Identifier: Apache-2.0
/**
 * The Session stream (session.proto) as an object: attach as controller or observer, run every
 * command over the stream (client ids, results matched by id, bounded in flight), iterate events
 * and notices, answer events, release. When the stream ends, nothing is left hanging: commands in
 * flight, waiting commands, event replies and the events iterator all settle with a typed error
 * (the stream's error, or {@link SessionClosedError} after a clean end).
 *
 * @see ../../proto/kvmi/v1/session.proto
 */
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import { status as GrpcStatus } from "@grpc/grpc-js";
import type { ClientDuplexStream, StatusObject } from "@grpc/grpc-js";
import { RegsSchema, Role, SessionRequestSchema } from "@kvmi/proto";
import type { Attached, Event, EventAction, EventFilterSchema, EventReplySchema, SessionRequest, SessionResponse, SetEventFilterResponse, Vm } from "@kvmi/proto";
import type { Channel, CallOptions } from "./channel.js";
import { CommandSurface } from "./commands.js";
import type { CommandName, Transport, VmCommands, X86Regs } from "./commands.js";
import {
  abortError,
  createError,
  DeadlineExceededError,
  fromStatus,
  PermissionDeniedError,
  SessionClosedError,
  StatusCode,
  toSdkError,
} from "./errors.js";
import type { KvmiBridgeError } from "./errors.js";
import { toFilterSummary, toUnhookNotice, toVcpuEvent } from "./events.js";
import type { FilterSummaryNotice } from "./events.js";
import { parseEventFilter } from "./filter-syntax.js";
import { ItemQueue } from "./item-queue.js";
import type { SessionItem } from "./events.js";
import { vmName } from "./names.js";
import type { RetryPolicy } from "./retry.js";
import type { RequestOf, ResponseOf } from "./rpc-methods.js";

/** What a session may do: the controller answers events and may change the guest; observers only read. */
export type SessionRole = "controller" | "observer";

/** Options of `BridgeClient.attach`. */
export interface AttachOptions {
  /** `controller` (one per VM; answers events, may change guest state) or `observer` (read-only copies). */
  readonly role: SessionRole;
  /**
   * How long the bridge waits for this controller's event replies before it answers CONTINUE
   * itself, 10..60000 ms; the bridge default when absent. Ignored for observers.
   */
  readonly eventDeadlineMs?: number;
  /**
   * The controller's event filter from the start (docs/event-filters.md): rules the bridge applies
   * to each event before it crosses the network. A string is the compact syntax
   * ({@link parseEventFilter}); a bad filter fails the attach with InvalidArgumentError naming the
   * bad fields. Controllers only.
   */
  readonly eventFilter?: EventFilterInput;
  /** Ends the session (the stream is cancelled; everything pending rejects with CancelledError). */
  readonly signal?: AbortSignal;
  /** Items `events()` may buffer before the SDK stops reading the stream (default 4096). */
  readonly maxBufferedItems?: number;
}

/** An event filter: the message (or its init shape), or the compact syntax. */
export type EventFilterInput = string | MessageInitShape<typeof EventFilterSchema>;

/** Options of {@link Session.setEventFilter}. */
export interface SetEventFilterOptions {
  /** With the compact syntax: how often the bridge sends counters (a `filterSummary` item), in ms. */
  readonly summaryIntervalMs?: number;
  readonly signal?: AbortSignal;
}

/** The filter as a message init; the compact syntax parsed (summaryIntervalMs applies to it). */
function filterInit(input: EventFilterInput, summaryIntervalMs?: number): MessageInitShape<typeof EventFilterSchema> {
  return typeof input === "string" ? parseEventFilter(input, summaryIntervalMs === undefined ? {} : { summaryIntervalMs }) : input;
}

/** Options of {@link Session.events}. */
export interface EventsOptions {
  /** Stops the iteration: the pending `next()` rejects with CancelledError. The session stays open. */
  readonly signal?: AbortSignal;
}

/** Options of {@link Session.release}. */
export interface ReleaseOptions {
  /** How long to wait for the bridge to end the stream before cancelling it, in ms (default 10000). */
  readonly timeoutMs?: number;
  /**
   * Leave this controller's guest modifications in place instead of letting the bridge undo them
   * now. The bridge still undoes them before it closes the VM's KVMI socket (unhook, ReleaseVm,
   * shutdown) and when a later controller leaves under the `release` policy. Default false.
   */
  readonly keepChanges?: boolean;
}

/**
 * An attached session: every {@link VmCommands} method runs over the stream (the low-latency path,
 * and the only way for a controller to change guest state without metadata), plus events.
 */
export interface Session extends VmCommands {
  /** The bridge's session id; pass it as `sessionId` to `BridgeClient.vm()` to run mutating unary RPCs as this controller. */
  readonly sessionId: string;
  /** The granted role. */
  readonly role: SessionRole;
  /** The VM snapshot at attach time. */
  readonly vm: Vm;
  /** The effective event reply deadline in ms (`undefined` for observers). */
  readonly eventDeadlineMs: number | undefined;
  /** Commands the bridge lets this session have in flight; the SDK queues the rest. */
  readonly maxInflightCommands: number;
  /** True once the stream ended. */
  readonly closed: boolean;
  /** Resolves when the stream ends: `undefined` after a clean end, else the error that ended it. Never rejects. */
  readonly done: Promise<KvmiBridgeError | undefined>;
  /**
   * The events, unhook notices, VM changes and rejected replies, in arrival order, buffered from
   * the moment of attach. One reader at a time. Ends when the session ends cleanly; throws the
   * session's error (e.g. UnavailableError `KVMI_SESSION_LOST` when the VM's socket closed).
   * Breaking out of the loop does not release the session.
   */
  events(options?: EventsOptions): AsyncGenerator<SessionItem, void, undefined>;
  /**
   * Replaces this controller's event filter (an empty string or `{}` removes every rule). Resolves
   * with the final counters of the filter it replaced. Nothing changes when it rejects.
   * @throws InvalidArgumentError naming the bad fields (or the bad part of the compact syntax);
   *   PermissionDeniedError for an observer.
   */
  setEventFilter(filter: EventFilterInput, options?: SetEventFilterOptions): Promise<FilterSummaryNotice | undefined>;
  /**
   * Ends the session cleanly (Release, then half-close) and resolves when the bridge has ended the
   * stream; the bridge answers outstanding events with CONTINUE and, for a controller, undoes the
   * hooks it tracked (unless the bridge runs with controller-gone policy `keep`). Commands still in
   * flight reject with SessionClosedError.
   */
  release(options?: ReleaseOptions): Promise<void>;
}

interface PendingCommand {
  readonly name: CommandName;
  settled: boolean;
  resolve(value: unknown): void;
  reject(err: KvmiBridgeError): void;
}

const DEFAULT_MAX_BUFFERED_ITEMS = 4096;
const DEFAULT_RELEASE_TIMEOUT_MS = 10_000;

/** The stream engine: transport of session commands, event replies, items and the end. @internal */
class SessionStream implements Transport<CommandName> {
  readonly items: ItemQueue;
  readonly attached: Promise<Attached>;
  readonly done: Promise<KvmiBridgeError | undefined>;
  role: SessionRole;
  private readonly call: ClientDuplexStream<SessionRequest, SessionResponse>;
  private readonly pending = new Map<bigint, PendingCommand>();
  private nextId = 1n;
  private inflight = 0;
  private maxInflight = 64;
  private readonly slotWaiters: Array<{ resolve(): void; reject(e: KvmiBridgeError): void }> = [];
  private ending = false;
  private released = false;
  private closedWith: KvmiBridgeError | undefined;
  private isClosed = false;
  private resolveAttached!: (a: Attached) => void;
  private rejectAttached!: (e: KvmiBridgeError) => void;
  private resolveDone!: (e: KvmiBridgeError | undefined) => void;
  private readonly signal: AbortSignal | undefined;
  private readonly onAbort = (): void => this.call.cancel();
  /** The bridge accepts EventReplyBatch (SessionInfo.event_batches): replies of a turn go out together. */
  private batchReplies = false;
  /** Replies made in this turn, written on the next tick as one message (docs/decisions/0160-event-batches.md). */
  private turnReplies: Array<{ readonly reply: MessageInitShape<typeof EventReplySchema>; readonly settle: (err?: Error | null) => void }> = [];
  private readonly flushTurnReplies = (): void => this.writeTurnReplies();

  constructor(
    channel: Channel,
    private readonly uuid: string,
    options: AttachOptions,
  ) {
    this.role = options.role;
    this.signal = options.signal;
    this.attached = new Promise((resolve, reject) => {
      this.resolveAttached = resolve;
      this.rejectAttached = reject;
    });
    // Callers that never await `attached` (a failed attach is awaited by openSession) must not see an unhandled rejection.
    this.attached.catch(() => undefined);
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    this.call = channel.session();
    this.items = new ItemQueue(
      options.maxBufferedItems ?? DEFAULT_MAX_BUFFERED_ITEMS,
      () => this.call.pause(),
      () => this.call.resume(),
    );
    this.call.on("data", (message: SessionResponse) => this.onMessage(message));
    this.call.on("error", (err: unknown) => this.finish(toSdkError(err)));
    this.call.on("status", (status: StatusObject) => {
      if (status.code !== GrpcStatus.OK) return this.finish(toSdkError({ code: status.code, details: status.details, metadata: status.metadata }));
      // A clean end: deliver what a paused stream still buffers (command results), then finish.
      if (this.call.readableEnded) return this.finish(undefined);
      this.call.once("end", () => this.finish(undefined));
      this.call.resume();
    });
    if (this.signal?.aborted) {
      this.finish(abortError(this.signal));
      this.call.cancel();
      return;
    }
    this.signal?.addEventListener("abort", this.onAbort, { once: true });
    this.write({
      message: {
        case: "attach",
        value: {
          vm: vmName(uuid),
          role: options.role === "controller" ? Role.CONTROLLER : Role.OBSERVER,
          ...(options.eventDeadlineMs !== undefined && { eventDeadline: durationFromMs(options.eventDeadlineMs) }),
          ...(options.eventFilter !== undefined && { eventFilter: filterInit(options.eventFilter) }),
          // Events of several vCPUs that reach the bridge together come as one message; the
          // iterator hands them out one by one, so callers never see the batching.
          eventBatches: true,
        },
      },
    });
  }

  get usable(): boolean {
    return !this.isClosed && !this.ending;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  private write(message: Parameters<typeof create<typeof SessionRequestSchema>>[1], callback?: (err?: Error | null) => void): void {
    this.call.write(create(SessionRequestSchema, message), callback);
  }

  /** The error a call gets once the session cannot carry it. */
  private unusableError(): KvmiBridgeError {
    return (
      this.closedWith ??
      new SessionClosedError({ code: StatusCode.CANCELLED, message: "the session is being released", reason: "SESSION_RELEASED" })
    );
  }

  run<M extends CommandName>(name: M, request: RequestOf<M>, options: CallOptions): Promise<ResponseOf<M>> {
    const { signal } = options;
    if (!this.usable) return Promise.reject(this.unusableError());
    if (signal?.aborted) return Promise.reject(abortError(signal));
    // Send at once when a slot is free, so that commands keep the order of the calls.
    if (this.inflight < this.maxInflight) {
      this.inflight++;
      return this.send(name, request, options);
    }
    return this.acquireSlot(signal).then(() => {
      if (this.usable) return this.send(name, request, options);
      this.releaseSlot();
      throw this.unusableError();
    });
  }

  /** Writes one command (its slot is taken) and settles with its result. */
  private send<M extends CommandName>(name: M, request: RequestOf<M>, options: CallOptions): Promise<ResponseOf<M>> {
    const { signal, timeoutMs } = options;
    const id = this.nextId++;
    return new Promise<ResponseOf<M>>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      // An abandoned command keeps its id (and slot) until its result arrives, as the bridge still runs it.
      const entry: PendingCommand = {
        name,
        settled: false,
        resolve: (value) => {
          entry.settled = true;
          cleanup();
          resolve(value as ResponseOf<M>);
        },
        reject: (err) => {
          entry.settled = true;
          cleanup();
          reject(err);
        },
      };
      const onAbort = (): void => entry.reject(abortError(signal!));
      signal?.addEventListener("abort", onAbort, { once: true });
      if (timeoutMs !== undefined && timeoutMs > 0) {
        timer = setTimeout(
          () =>
            entry.reject(
              new DeadlineExceededError({
                code: StatusCode.DEADLINE_EXCEEDED,
                message: `no result for session command ${name} within ${timeoutMs} ms`,
                reason: "CLIENT_DEADLINE_EXCEEDED",
              }),
            ),
          timeoutMs,
        );
      }
      this.pending.set(id, entry);
      this.write({ message: { case: "command", value: { id, request: { case: name, value: request } as never } } });
    });
  }

  private acquireSlot(signal: AbortSignal | undefined): Promise<void> {
    if (this.inflight < this.maxInflight) {
      this.inflight++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (e: KvmiBridgeError) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      const onAbort = (): void => {
        const i = this.slotWaiters.indexOf(waiter);
        if (i >= 0) this.slotWaiters.splice(i, 1);
        reject(abortError(signal!));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.slotWaiters.push(waiter);
    });
  }

  private releaseSlot(): void {
    const next = this.slotWaiters.shift();
    // Hand the slot over directly; the count stays the same.
    if (next !== undefined) next.resolve();
    else this.inflight--;
  }

  /** Sends an event reply; throws synchronously when it cannot be sent. */
  reply(event: Event, action: EventAction, extras: { newVal?: bigint | undefined; registers?: X86Regs | undefined }): Promise<void> {
    if (!this.usable) throw this.unusableError();
    if (this.role !== "controller") {
      throw new PermissionDeniedError({
        code: StatusCode.PERMISSION_DENIED,
        message: "only the controller may answer events; this session is an observer",
        reason: "NOT_CONTROLLER",
        metadata: { vm: this.uuid, vcpu: String(event.vcpu) },
      });
    }
    const reply: MessageInitShape<typeof EventReplySchema> = {
      vcpu: event.vcpu,
      seq: event.seq,
      action,
      ...(extras.newVal !== undefined && { newVal: extras.newVal }),
      ...(extras.registers !== undefined && { registers: create(RegsSchema, extras.registers) }),
    };
    return new Promise((resolve, reject) => {
      const settle = (err?: Error | null): void => (err ? reject(toSdkError(err)) : resolve());
      if (!this.batchReplies) return this.write({ message: { case: "eventReply", value: reply } }, settle);
      if (this.turnReplies.push({ reply, settle }) === 1) process.nextTick(this.flushTurnReplies);
    });
  }

  /** Writes this turn's replies: one as an EventReply, several as one EventReplyBatch. */
  private writeTurnReplies(): void {
    const turn = this.turnReplies;
    this.turnReplies = [];
    if (turn.length === 0) return;
    if (this.isClosed || this.call.writableEnded) {
      for (const { settle } of turn) settle(this.unusableError());
      return;
    }
    if (turn.length === 1) return this.write({ message: { case: "eventReply", value: turn[0]!.reply } }, turn[0]!.settle);
    this.write({ message: { case: "eventReplies", value: { replies: turn.map((t) => t.reply) } } }, (err) => {
      for (const { settle } of turn) settle(err);
    });
  }

  private onMessage(response: SessionResponse): void {
    const m = response.message;
    switch (m.case) {
      case "attached": {
        const max = m.value.session?.maxInflightCommands ?? 0;
        if (max > 0) this.maxInflight = max;
        this.role = m.value.role === Role.OBSERVER ? "observer" : "controller";
        this.batchReplies = m.value.session?.eventBatches === true;
        this.resolveAttached(m.value);
        return;
      }
      case "commandResult": {
        const entry = this.pending.get(m.value.id);
        if (entry === undefined) return;
        this.pending.delete(m.value.id);
        this.releaseSlot();
        if (entry.settled) return;
        const result = m.value.result;
        if (result.case === "error") entry.reject(fromStatus(result.value));
        else if (result.case !== entry.name) {
          entry.reject(createError({ code: StatusCode.INTERNAL, message: `the bridge answered ${entry.name} with ${result.case ?? "nothing"}` }));
        } else entry.resolve(result.value);
        return;
      }
      case "event":
        return this.onEvent(m.value);
      case "events":
        for (const event of m.value.events) this.onEvent(event);
        return;
      case "unhook":
        return this.items.push(toUnhookNotice(this.uuid, m.value));
      case "vmChange":
        if (m.value.vm !== undefined) this.items.push({ kind: "vmChange", change: m.value });
        return;
      case "filterSummary":
        return this.items.push(toFilterSummary(m.value));
      case "replyRejected":
        return this.items.push({
          kind: "replyRejected",
          vcpu: m.value.vcpu,
          seq: m.value.seq,
          error: m.value.status ? fromStatus(m.value.status) : createError({ code: StatusCode.UNKNOWN, message: "reply rejected" }),
        });
      default:
        return;
    }
  }

  private onEvent(message: Event): void {
    const event = toVcpuEvent(this.uuid, message, (e, action, extras) => this.reply(e, action, extras));
    if (event !== undefined) this.items.push(event);
  }

  private finish(error: KvmiBridgeError | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.signal?.removeEventListener("abort", this.onAbort);
    const err = this.signal?.aborted ? abortError(this.signal) : error;
    const closeError =
      err ??
      new SessionClosedError({
        code: StatusCode.CANCELLED,
        message: this.released ? "the session was released" : "the bridge ended the session",
        reason: this.released ? "SESSION_RELEASED" : "SESSION_ENDED",
      });
    this.closedWith = closeError;
    this.rejectAttached(closeError);
    for (const entry of this.pending.values()) if (!entry.settled) entry.reject(closeError);
    this.pending.clear();
    for (const waiter of this.slotWaiters.splice(0)) waiter.reject(closeError);
    this.items.end(err);
    this.resolveDone(err);
  }

  async release(options: ReleaseOptions = {}): Promise<void> {
    if (!this.isClosed && !this.ending) {
      // Replies made in this turn go out before the release (the bridge would answer them CONTINUE).
      this.writeTurnReplies();
      this.ending = true;
      this.released = true;
      this.write({ message: { case: "release", value: { keepChanges: options.keepChanges ?? false } } });
      this.call.end();
      const timer = setTimeout(() => this.call.cancel(), options.timeoutMs ?? DEFAULT_RELEASE_TIMEOUT_MS);
      await this.done;
      clearTimeout(timer);
      return;
    }
    await this.done;
  }
}

class SessionImpl extends CommandSurface implements Session {
  readonly sessionId: string;
  readonly vm: Vm;
  readonly eventDeadlineMs: number | undefined;
  readonly maxInflightCommands: number;

  constructor(
    uuid: string,
    private readonly stream: SessionStream,
    policy: RetryPolicy,
    attached: Attached,
  ) {
    super(uuid, stream as unknown as Transport, policy);
    this.sessionId = attached.session?.sessionId ?? "";
    this.vm = attached.vm!;
    const deadline = attached.session?.eventDeadline;
    this.eventDeadlineMs = deadline === undefined ? undefined : durationMs(deadline);
    this.maxInflightCommands = attached.session?.maxInflightCommands ?? 0;
  }

  get role(): SessionRole {
    return this.stream.role;
  }

  get closed(): boolean {
    return this.stream.closed;
  }

  get done(): Promise<KvmiBridgeError | undefined> {
    return this.stream.done;
  }

  async *events(options: EventsOptions = {}): AsyncGenerator<SessionItem, void, undefined> {
    for (;;) {
      const next = await this.stream.items.next(options.signal);
      if (next.done) return;
      yield next.value;
    }
  }

  release(options?: ReleaseOptions): Promise<void> {
    return this.stream.release(options);
  }

  async setEventFilter(filter: EventFilterInput, options: SetEventFilterOptions = {}): Promise<FilterSummaryNotice | undefined> {
    const init = filterInit(filter, options.summaryIntervalMs);
    // A session-only command (no unary RPC): it runs on the stream like any other, never retried.
    const response = (await this.stream.run("setEventFilter" as never, { filter: init } as never, { ...(options.signal && { signal: options.signal }) })) as SetEventFilterResponse;
    return response.previous === undefined ? undefined : toFilterSummary(response.previous);
  }
}

/**
 * Opens a session: sends Attach and waits for Attached.
 * @throws FailedPreconditionError (`CONTROLLER_PRESENT`) for a second controller, NotFoundError for
 *   an unknown VM, UnavailableError while the VM unhooks, InvalidArgumentError for a bad deadline,
 *   CancelledError when `options.signal` fires.
 * @internal
 */
export async function openSession(channel: Channel, uuid: string, options: AttachOptions, policy: RetryPolicy): Promise<Session> {
  // A syntax error in the filter fails here, before a stream is opened.
  const eventFilter = options.eventFilter === undefined ? undefined : filterInit(options.eventFilter);
  const stream = new SessionStream(channel, uuid, { ...options, ...(eventFilter !== undefined && { eventFilter }) });
  const attached = await stream.attached;
  return new SessionImpl(uuid, stream, policy, attached);
}
