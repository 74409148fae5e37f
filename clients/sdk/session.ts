// SPDX-License-Identifier: Apache-2.0
/**
 * The Session stream (session.proto) as an object: attach as controller or observer, run every
 * command over the stream (client ids, results matched by id, bounded in flight), iterate events
 * and notices, answer events, release. When the stream ends, nothing is left hanging: commands in
 * flight, waiting commands, event replies and the events iterator all settle with a typed error
 * (the stream's error, or {@link SessionClosedError} after a clean end).
 *
 * This file is the public surface (options, the Session interface, openSession); the stream
 * engine under it is `session-stream.ts`.
 *
 * @see ../../proto/kvmi/v1/session.proto
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import type { Attached, EventFilterSchema, SetEventFilterResponse, Vm } from "@kvmi/proto";
import type { Channel } from "./channel.js";
import { CommandSurface } from "./commands.js";
import type { VmCommands } from "./command-types.js";
import type { Transport } from "./dispatch.js";
import type { KvmiBridgeError } from "./errors.js";
import { toFilterSummary } from "./events.js";
import type { FilterSummaryNotice, SessionItem } from "./events.js";
import type { RetryPolicy } from "./retry.js";
import { filterInit, SessionStream } from "./session-stream.js";

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
