// SPDX-License-Identifier: Apache-2.0
/**
 * The sending half of a Session stream (session-rpc.ts): writing responses, the turn's event batch,
 * and backpressure (quota held until `drain`, reading paused while backed up, the bounds past which
 * events are refused and a session that does not read is dropped). A base class of the stream, not
 * an object it calls, so the per-message path keeps the same direct method calls; separate from
 * session-rpc.ts, which owns attach, command dispatch and event replies.
 */
import { create } from "@bufbuild/protobuf";
import type { ServerDuplexStream } from "@grpc/grpc-js";
import { EventBatchSchema, SessionResponseSchema } from "@kvmi/proto";
import type { Event, SessionRequest, SessionResponse } from "@kvmi/proto";
import { QuotaExceededError } from "../mapping/bridge-error.js";
import type { RpcDeps } from "./call-context.js";
import { dropUnreadStream, failStream, failure } from "./call-context.js";
import type { QuotaLease } from "./quotas.js";

/**
 * Responses grpc-js may hold for a client before the bridge stops sending it events; a session
 * that lets more pile up (VM changes keep coming) is dropped with RESOURCE_EXHAUSTED.
 */
export const MAX_BUFFERED_RESPONSES = 256;
/**
 * Events (delivered ones and notifications) the session's written messages may hold before
 * HTTP/2 has taken them: batches put many events in one message, so messages alone do not bound
 * the memory a client that stops reading makes the bridge keep. Past it, events are refused as
 * past {@link MAX_BUFFERED_RESPONSES} (the bridge answers, a notification is dropped and counted).
 */
export const MAX_BUFFERED_EVENTS = 1024;

export type Call = ServerDuplexStream<SessionRequest, SessionResponse>;

/** Writes a session's responses and applies its backpressure; the stream subclass ends the session. */
export abstract class SessionOutput {
  protected ended = false;
  /** Quota held by results written while the stream was backed up: given back on `drain`. */
  protected heldUntilDrain: QuotaLease[] = [];
  /** True while requests are not read because responses are backed up. */
  private readingPaused = false;
  /**
   * Events received in this turn, written as one message on the next tick (or before any other
   * response, so the order of the stream stays the order of the bridge).
   * docs/decisions/0160-event-batches.md
   */
  protected turnEvents: Event[] = [];
  /** Events in messages written to the stream that HTTP/2 has not taken yet ({@link MAX_BUFFERED_EVENTS}). */
  protected unsentEvents = 0;
  private readonly flushTurnEvents = (): void => this.writeTurnEvents();

  constructor(
    protected readonly deps: RpcDeps,
    protected readonly call: Call,
  ) {}

  /** Ends the session (the stream subclass: abort commands, detach, end the stream). */
  protected abstract finish(reason: string, endStream?: boolean, keepChanges?: boolean): Promise<void>;

  protected write(message: Parameters<typeof create<typeof SessionResponseSchema>>[1], lease?: QuotaLease, events = 0): boolean {
    if (this.ended) {
      lease?.release();
      return false;
    }
    if (this.turnEvents.length > 0) this.writeTurnEvents();
    return this.send(message, lease, events);
  }

  /** Writes `message`; `events` is how many events it carries (counted until HTTP/2 takes them). */
  private send(message: Parameters<typeof create<typeof SessionResponseSchema>>[1], lease?: QuotaLease, events = 0): boolean {
    let flowing: boolean;
    if (events === 0) flowing = this.call.write(create(SessionResponseSchema, message));
    else {
      this.unsentEvents += events;
      flowing = this.call.write(create(SessionResponseSchema, message), () => (this.unsentEvents -= events));
    }
    if (flowing) {
      lease?.release();
    } else {
      // Backed up: what was just written still sits in memory, so its quota stays held, and no
      // further request is read (each would add a result or a refusal) until the client drains
      // (issue 18; conventions §4 backpressure).
      if (lease !== undefined) this.heldUntilDrain.push(lease);
      if (!this.readingPaused) {
        this.readingPaused = true;
        this.call.pause();
      }
    }
    return this.call.writableLength <= MAX_BUFFERED_RESPONSES;
  }

  /**
   * Queues an event for this turn's message: the first of a turn schedules the write. One event
   * goes out as an Event, several as one EventBatch.
   */
  protected queueEvent(event: Event): void {
    if (this.turnEvents.push(event) === 1) process.nextTick(this.flushTurnEvents);
  }

  private writeTurnEvents(): void {
    const events = this.turnEvents;
    if (events.length === 0 || this.ended) return;
    this.turnEvents = [];
    if (events.length === 1) this.send({ message: { case: "event", value: events[0]! } }, undefined, 1);
    else this.send({ message: { case: "events", value: create(EventBatchSchema, { events }) } }, undefined, events.length);
  }

  protected onDrain(): void {
    for (const lease of this.heldUntilDrain.splice(0)) lease.release();
    if (this.readingPaused && !this.ended) {
      this.readingPaused = false;
      this.call.resume();
    }
  }

  /**
   * Drops a session whose client does not read while messages keep coming for it (VM changes,
   * observer events): memory stays bounded by {@link MAX_BUFFERED_RESPONSES} per receiver.
   */
  protected dropUnread(): void {
    if (this.ended) return;
    const err = new QuotaExceededError(
      "session",
      "sessionSendBuffer",
      `the client did not read its session while ${this.call.writableLength} messages waited for it; read the stream and attach again`,
    );
    void this.finish("the client does not read", false);
    dropUnreadStream(this.call, failure(this.deps, "session", err));
  }

  protected fail(err: unknown): void {
    if (this.ended) return;
    const status = failure(this.deps, "session", err);
    void this.finish("ended with an error", false);
    failStream(this.call, status);
  }
}
