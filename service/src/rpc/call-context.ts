// SPDX-License-Identifier: Apache-2.0
/**
 * What every RPC handler needs from a grpc-js call, in one place: the command deadline (the
 * client's gRPC deadline, else the configured default), a cancel signal that fires when the client
 * cancels, the controller's session id from metadata, and the one wrapper that maps errors to a
 * status. The access log and request counters come from the server's interceptor.
 */
import type { Metadata, ServerUnaryCall, sendUnaryData, StatusObject } from "@grpc/grpc-js";
import type { CancelSignal, Logger, VmRegistry } from "@kvmi/kvm-bridge";
import type { AuditTrail } from "../audit/audit-log.js";
import type { AccessControl } from "../auth/access-control.js";
import { mapError, toGrpcStatus } from "../mapping/status.js";
import type { ErrorContext } from "../mapping/status.js";
import { constants as http2Constants } from "node:http2";
// authorization.ts imports this module too; both only call each other at request time.
import { ownerOf, principalOf } from "./principals.js";
import { atCallEnd } from "../server/call-end.js";
import type { VmHosts } from "../vm/vm-hosts.js";
import { Quotas, UNLIMITED } from "./quotas.js";

/** The parts of a grpc-js call every kind shares (grpc-js does not export `ServerSurfaceCall`). */
export type ServerSurfaceCall = Pick<ServerUnaryCall<unknown, unknown>, "getDeadline" | "metadata" | "once">;

/** Metadata key carrying the controller's session id on unary mutating RPCs. */
export const SESSION_ID_METADATA = "kvmi-session-id";

/** Everything the RPC handlers share. */
export interface RpcDeps {
  readonly hosts: VmHosts;
  readonly registry: VmRegistry;
  readonly logger: Logger;
  /** Command deadline when the client sets none. */
  readonly requestTimeoutMs: number;
  /** Aborted when the bridge starts shutting down: endless streams (WatchVms) end then. */
  readonly shuttingDown?: AbortSignal;
  /** The authorization point every call passes (rpc/authorization.ts applies it). */
  readonly access: AccessControl;
  /** Where security-relevant actions are recorded. */
  readonly audit: AuditTrail;
  /** Per-identity and bridge-wide limits; unlimited when absent. */
  readonly quotas?: Quotas;
  /** Bytes of unbacked guest memory in a row after which a DumpMemory stops (RESOURCE_EXHAUSTED). */
  readonly dumpMaxHoleBytes?: number;
}

const UNLIMITED_QUOTAS = new Quotas(UNLIMITED);

/** The quotas of `deps` (unlimited when none are configured). */
export function quotasOf(deps: RpcDeps): Quotas {
  return deps.quotas ?? UNLIMITED_QUOTAS;
}

/** A stream the bridge failed but whose client does not read gets this long to take the status. */
const UNREAD_STATUS_GRACE_MS = 5_000;

/**
 * Ends a stream whose client does not read: sends the status like {@link failStream}, and if the
 * stream is still open after a grace period (the client reads nothing, so neither the buffered
 * messages nor the trailers can leave), resets the HTTP/2 stream so that grpc-js frees what it
 * buffered for it. Without the reset a silent client keeps that memory for as long as it stays
 * connected (keepalive pings are answered by its HTTP/2 layer, not by the application).
 */
export function dropUnreadStream(call: { emit(event: "error", err: Error): boolean; once(event: "close", listener: () => void): unknown }, status: StatusObject): void {
  let closed = false;
  call.once("close", () => (closed = true));
  failStream(call, status);
  const timer = setTimeout(() => {
    if (!closed) resetHttp2Stream(call);
  }, UNREAD_STATUS_GRACE_MS);
  timer.unref();
}

/**
 * Resets the HTTP/2 stream under a grpc-js server call (RST_STREAM CANCEL). grpc-js has no public
 * API for it: walk its call chain (`call`, `nextCall`) to the object that owns the `stream`.
 */
function resetHttp2Stream(call: object): void {
  let at: unknown = call;
  for (let depth = 0; depth < 6 && at !== null && typeof at === "object"; depth++) {
    const stream = (at as { stream?: { close?: (code: number) => void; closed?: boolean } }).stream;
    if (stream !== undefined && typeof stream.close === "function") {
      if (stream.closed !== true) stream.close(http2Constants.NGHTTP2_CANCEL);
      return;
    }
    const next = at as { call?: unknown; nextCall?: unknown };
    at = next.nextCall ?? next.call;
  }
}

/** Milliseconds left before the call's gRPC deadline, capped by the default. */
export function callTimeoutMs(call: ServerSurfaceCall, defaultMs: number): number {
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  if (!Number.isFinite(at)) return defaultMs;
  return Math.max(1, Math.min(defaultMs, at - Date.now()));
}

/**
 * Calls whose handler has settled. grpc-js emits 'cancelled' after every call whose status it sent,
 * not only on a client's cancel (`notifyOnCancel` in its `sendStatus`): aborting then would build an
 * Error and run every abort listener of a finished call, which was a fifth of a unary call's CPU.
 */
const settledCalls = new WeakSet<object>();

/** Marks the call's handler done, so that grpc-js's 'cancelled' after the status aborts nothing. */
export function markSettled(call: object): void {
  settledCalls.add(call);
}

/**
 * A call's {@link CancelSignal}: what the KVMI channel and the memory readers need of an
 * AbortSignal, without Node's EventTarget machinery (reading `AbortController.signal` and adding
 * one listener cost ≈ 8 µs per unary call on the development VM; this, a fraction of a µs).
 * Listeners run once, in the order added, when the client cancels.
 */
class CallCancellation implements CancelSignal {
  aborted = false;
  reason: unknown = undefined;
  private listeners: (() => void)[] = [];

  throwIfAborted(): void {
    if (this.aborted) throw this.reason;
  }

  addEventListener(_type: "abort", listener: () => void): void {
    if (!this.aborted) this.listeners.push(listener);
  }

  removeEventListener(_type: "abort", listener: () => void): void {
    const at = this.listeners.indexOf(listener);
    if (at >= 0) this.listeners.splice(at, 1);
  }

  abort(reason: Error): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listeners = this.listeners;
    this.listeners = [];
    for (const listener of listeners) listener();
  }
}

/** A signal that fires when the client cancels the call before its handler settled. */
export function cancellationOf(call: ServerSurfaceCall): CancelSignal {
  const cancellation = new CallCancellation();
  call.once("cancelled", () => {
    if (!settledCalls.has(call)) cancellation.abort(new Error("the client cancelled the call"));
  });
  return cancellation;
}

/** The `kvmi-session-id` metadata value, if any. */
export function sessionIdOf(metadata: Metadata): string | undefined {
  const value = metadata.get(SESSION_ID_METADATA)[0];
  return typeof value === "string" && value.length > 0 ? value : undefined;
}

/**
 * Ends a server-streaming or bidi call with an error status. grpc-js sends a stream's status from
 * its own 'error' listener (which ends the stream, and `_final` writes the trailers); `destroy(err)`
 * would tear the stream down without ever sending them, and the client would wait forever.
 */
export function failStream(call: { emit(event: "error", err: Error): boolean }, status: StatusObject): void {
  call.emit("error", Object.assign(new Error(status.details), status));
}

/** Maps an error to a status, logging unknown causes (they never reach the client). */
export function failure(deps: RpcDeps, method: string, err: unknown, context: ErrorContext = {}): StatusObject {
  const mapped = mapError(err, context);
  if (!mapped.known) deps.logger.error({ err, method }, "unexpected error in an RPC");
  return toGrpcStatus(err, context);
}

/**
 * Wraps a unary handler: resolves to the response or to the mapped error status.
 * @param contextOf what an error of this call is about (command, VM, vCPU), for ErrorInfo metadata
 *   of errors that do not carry it themselves (argument checks made before the socket).
 */
export function unary<Req, Res>(
  deps: RpcDeps,
  method: string,
  handler: (call: ServerUnaryCall<Req, Res>) => Promise<Res>,
  contextOf?: (request: Req) => ErrorContext,
): (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void {
  return (call, callback) => {
    let lease;
    try {
      // Per identity: the one the authorization guard found for this call.
      lease = quotasOf(deps).acquire("inflight", ownerOf(principalOf(call)));
    } catch (err) {
      callback(failure(deps, method, err, contextOf?.(call.request)));
      return;
    }
    const done = lease;
    handler(call).then(
      (response) => {
        // The call stays in flight until its response is written out (call-end.ts).
        atCallEnd(call.metadata, done.release);
        markSettled(call);
        callback(null, response);
      },
      (err: unknown) => {
        done.release();
        markSettled(call);
        callback(failure(deps, method, err, contextOf?.(call.request)));
      },
    );
  };
}
