// SPDX-License-Identifier: Apache-2.0
/**
 * The engine under a {@link Session}: one gRPC Session stream, its Attach, session commands matched
 * to results by client id (bounded in flight, `command-slots.ts`), event replies (written one
 * turn at a time as an EventReplyBatch when the bridge accepts it), items into the events queue,
 * and the end, which settles everything pending with one typed error. Separate from `session.ts`,
 * which holds the public Session surface, so that the stream plumbing and its per-event hot path
 * read on their own.
 *
 * @see ../../proto/kvmi/v1/session.proto
 * @internal
 */
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { status as GrpcStatus } from "@grpc/grpc-js";
import type { ClientDuplexStream, StatusObject } from "@grpc/grpc-js";
import { RegsSchema, Role, SessionRequestSchema } from "@kvmi/proto";
import type { Attached, Event, EventAction, EventFilterSchema, EventReplySchema, SessionRequest, SessionResponse } from "@kvmi/proto";
import type { Channel, CallOptions } from "./channel.js";
import { CommandSlots } from "./command-slots.js";
import type { X86Regs } from "./command-types.js";
import type { CommandName, Transport } from "./dispatch.js";
import { abortError, createError, DeadlineExceededError, fromStatus, PermissionDeniedError, SessionClosedError, StatusCode, toSdkError } from "./errors.js";
import type { KvmiBridgeError } from "./errors.js";
import { toFilterSummary, toUnhookNotice, toVcpuEvent } from "./events.js";
import type { EventReplier } from "./events.js";
import { parseEventFilter } from "./filter-syntax.js";
import { ItemQueue } from "./item-queue.js";
import { vmName } from "./names.js";
import type { RequestOf, ResponseOf } from "./rpc-methods.js";
import type { AttachOptions, EventFilterInput, ReleaseOptions, SessionRole } from "./session.js";

/** The filter as a message init; the compact syntax parsed (summaryIntervalMs applies to it). @internal */
export function filterInit(input: EventFilterInput, summaryIntervalMs?: number): MessageInitShape<typeof EventFilterSchema> {
  return typeof input === "string" ? parseEventFilter(input, summaryIntervalMs === undefined ? {} : { summaryIntervalMs }) : input;
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
export class SessionStream implements Transport<CommandName> {
  readonly items: ItemQueue;
  readonly attached: Promise<Attached>;
  readonly done: Promise<KvmiBridgeError | undefined>;
  role: SessionRole;
  private readonly call: ClientDuplexStream<SessionRequest, SessionResponse>;
  private readonly pending = new Map<bigint, PendingCommand>();
  private nextId = 1n;
  private readonly slots = new CommandSlots(64);
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
    if (this.slots.tryTake()) return this.send(name, request, options);
    return this.slots.acquire(signal).then(() => {
      if (this.usable) return this.send(name, request, options);
      this.slots.release();
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
        if (max > 0) this.slots.max = max;
        this.role = m.value.role === Role.OBSERVER ? "observer" : "controller";
        this.batchReplies = m.value.session?.eventBatches === true;
        this.resolveAttached(m.value);
        return;
      }
      case "commandResult": {
        const entry = this.pending.get(m.value.id);
        if (entry === undefined) return;
        this.pending.delete(m.value.id);
        this.slots.release();
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

  /** How an event's `continue()`/`reply()` reaches this stream: one function for every event. */
  private readonly replier: EventReplier = (e, action, extras) => this.reply(e, action, extras);

  private onEvent(message: Event): void {
    const event = toVcpuEvent(this.uuid, message, this.replier);
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
    this.slots.rejectAll(closeError);
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
