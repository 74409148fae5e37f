// SPDX-License-Identifier: Apache-2.0
/**
 * The public shapes of the channel (kvmi-abi §3): its options, per-command options, the request and
 * reply types of an op, and the event it delivers to its sink. Separate from channel.ts so that
 * channel-core.ts and channel.ts share them without importing each other; channel.ts re-exports them.
 */
import type { Logger } from "../logger.js";
import type { Dialect, EventSpec } from "../wire/dialect.js";
import type { CommandOp, EventKind, OpReply, OpRequest } from "../wire/ops.js";

/** The request body of `op` (dialect-neutral; integers as number or bigint). */
export type CommandRequest<O extends CommandOp> = OpRequest<O>;
/** The decoded reply data of `op` (dialect-neutral). */
export type CommandReply<O extends CommandOp> = OpReply<O>;

/** An event as the channel delivers it (kvmi-abi §3.3), the same shape in every dialect. */
export interface KvmiEvent {
  readonly seq: number;
  readonly vcpu: number;
  /** The dialect-neutral kind (`spec.kind`). */
  readonly kind: EventKind;
  /** The event's entry in the channel's dialect table (wire id, kernel name, layouts). */
  readonly spec: EventSpec;
  readonly arch: Record<string, unknown>;
  readonly payload: Record<string, unknown> | undefined;
  /** `process.hrtime.bigint()` when the event was decoded, for latency metrics. */
  readonly receivedAt: bigint;
  /** Wall-clock `Date.now()` at the same moment, for clients (`Event.receive_time`). */
  readonly receivedAtMs: number;
}

/**
 * Receives events. Returns false when it cannot take more: the channel then stops reading the
 * socket until {@link KvmiChannel.resumeEvents}.
 */
export type EventSink = (event: KvmiEvent) => boolean;

/**
 * How a caller gives up on a command: an `AbortSignal`, or any object with the members the channel
 * uses. A listener runs once, when the signal aborts. The bridge passes a lighter object per unary
 * call (service `CallCancellation`): reading `AbortController.signal` and adding one listener cost
 * ≈ 8 µs on the development VM, a few percent of a unary call.
 */
export interface CancelSignal {
  readonly aborted: boolean;
  readonly reason: unknown;
  throwIfAborted(): void;
  addEventListener(type: "abort", listener: () => void, options?: { readonly once?: boolean }): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

/** Per-command options. */
export interface CommandOptions {
  /** Fails with KvmiTimeoutError when no reply arrived in time; the entry is removed. */
  readonly timeoutMs?: number;
  /** Fails with its reason when it aborts before the reply (the command still waits for it). */
  readonly signal?: CancelSignal;
}

/** Options of {@link createKvmiChannel}. */
export interface KvmiChannelOptions {
  /** The dialect the kernel on the other end speaks: every id, layout and limit comes from it. */
  readonly dialect: Dialect;
  readonly logger?: Logger;
  /** VM UUID, for error context. */
  readonly vm?: string;
  /** Commands in flight at once; further ones wait their turn. Default 256. */
  readonly maxInFlight?: number;
  /** Default command deadline when none is given. Default 30 s. */
  readonly defaultTimeoutMs?: number;
}
