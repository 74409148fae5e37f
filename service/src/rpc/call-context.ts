// SPDX-License-Identifier: Apache-2.0
/**
 * What every RPC handler needs from a grpc-js call, in one place: the command deadline (the
 * client's gRPC deadline, else the configured default), an AbortSignal that fires when the client
 * cancels, the controller's session id from metadata, and the one wrapper that maps errors to a
 * status. The access log and request counters come from the server's interceptor.
 */
import type { Metadata, ServerUnaryCall, sendUnaryData, StatusObject } from "@grpc/grpc-js";
import type { Logger, VmRegistry } from "@kvmi/kvm-bridge";
import type { AuditTrail } from "../audit/audit-log.js";
import type { AccessControl } from "../auth/access-control.js";
import { mapError, toGrpcStatus } from "../mapping/status.js";
import type { ErrorContext } from "../mapping/status.js";
import type { VmHosts } from "../vm/vm-hosts.js";

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
}

/** Milliseconds left before the call's gRPC deadline, capped by the default. */
export function callTimeoutMs(call: ServerSurfaceCall, defaultMs: number): number {
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  if (!Number.isFinite(at)) return defaultMs;
  return Math.max(1, Math.min(defaultMs, at - Date.now()));
}

/** An AbortSignal that fires when the client cancels the call. */
export function abortSignalOf(call: ServerSurfaceCall): AbortSignal {
  const controller = new AbortController();
  call.once("cancelled", () => controller.abort(new Error("the client cancelled the call")));
  return controller.signal;
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
    handler(call).then(
      (response) => callback(null, response),
      (err: unknown) => callback(failure(deps, method, err, contextOf?.(call.request))),
    );
  };
}
