// SPDX-License-Identifier: Apache-2.0
/**
 * THE one place that turns an error into a gRPC status (conventions §5). Everything a handler,
 * a session or a bulk read can throw goes through {@link toGrpcStatus} (unary/stream end) or
 * {@link statusToProto} (a `google.rpc.Status` inside a message: CommandResult.error,
 * ReplyRejected.status, MemoryRangeResult.error). Handlers never pick codes themselves.
 *
 * Every status carries `google.rpc.ErrorInfo` (AIP-193) with `domain` = {@link ERROR_DOMAIN}, a
 * stable `reason` and `metadata` holding `errno`, `command`, `vm` and `vcpu` when known, plus
 * BadRequest / ResourceInfo / RetryInfo / PreconditionFailure where the table lists them. The status
 * travels as binary `google.rpc.Status` in the `grpc-status-details-bin` trailer, so any gRPC client
 * can decode it (`@kvmi/proto/status-details`, which the SDK uses too).
 *
 * Three files: the rows (`status-table.ts`), this classification, and the encoder
 * (`status-encoding.ts`).
 *
 * Messages are written here (or, for argument and bridge errors, at the throw site for the client).
 * The message of an unknown error is never sent: it becomes INTERNAL "internal error" and the caller
 * logs the cause.
 *
 * @see https://google.aip.dev/193 (errors), https://google.aip.dev/194 (retries)
 */
import { status as GrpcCode } from "@grpc/grpc-js";
import type { StatusObject } from "@grpc/grpc-js";
import {
  KvmiArgumentError,
  KvmiProtocolError,
  KvmiRemoteError,
  KvmiTimeoutError,
  KvmiTransportError,
  KvmiNotInDialectError,
  KvmiUnsupportedError,
} from "@kvmi/kvm-bridge";
import { commandByName, commandByOp, KNOWN_DIALECTS, layouts, v9 } from "@kvmi/kvm-bridge/wire";
import type { Status } from "@kvmi/proto";
import { AccessError } from "./access-error.js";
import { InvalidFieldsError } from "./field-violations.js";
import { BridgeError } from "./bridge-error.js";
import { grpcStatusObject, mappedToProto } from "./status-encoding.js";
import { assertNever, BRIDGE_ERROR_STATUS, bridgeDetails, errorInfoMetadata, mapRemoteError } from "./status-table.js";
import type { ErrorContext, MappedError } from "./status-table.js";
import type { WireFieldMapping } from "./wire-coverage.js";

export { ERROR_DOMAIN, STATUS_DETAILS_KEY } from "@kvmi/proto/status-details";
export { BRIDGE_ERROR_STATUS, COMMAND_ERRNO_OVERRIDES, EAGAIN_RETRY_DELAY_MS, errnoKind, remoteErrorRow } from "./status-table.js";
export type { ErrnoKind, ErrorContext, MappedError, StatusDetail } from "./status-table.js";
export { mappedToProto } from "./status-encoding.js";

/** The only message an unknown error ever shows. */
export const INTERNAL_MESSAGE = "internal error";

/** gRPC status codes (numerically `google.rpc.Code`). */
export { GrpcCode };

// ---------------------------------------------------------------------------------------------
// Classification and the table

type Classified =
  | { readonly kind: "argument"; readonly error: KvmiArgumentError }
  | { readonly kind: "remote"; readonly error: KvmiRemoteError }
  | { readonly kind: "notInDialect"; readonly error: KvmiNotInDialectError }
  | { readonly kind: "unsupported"; readonly error: KvmiUnsupportedError }
  | { readonly kind: "protocol"; readonly error: KvmiProtocolError }
  | { readonly kind: "timeout"; readonly error: KvmiTimeoutError }
  | { readonly kind: "transport"; readonly error: KvmiTransportError }
  | { readonly kind: "bridge"; readonly error: BridgeError }
  | { readonly kind: "access"; readonly error: AccessError }
  | { readonly kind: "aborted" }
  | { readonly kind: "unknown" };

function classify(err: unknown): Classified {
  // Order matters: KvmiTimeoutError is a KvmiTransportError.
  if (err instanceof KvmiArgumentError) return { kind: "argument", error: err };
  if (err instanceof KvmiRemoteError) return { kind: "remote", error: err };
  // Before KvmiUnsupportedError, its base class.
  if (err instanceof KvmiNotInDialectError) return { kind: "notInDialect", error: err };
  if (err instanceof KvmiUnsupportedError) return { kind: "unsupported", error: err };
  if (err instanceof KvmiProtocolError) return { kind: "protocol", error: err };
  if (err instanceof KvmiTimeoutError) return { kind: "timeout", error: err };
  if (err instanceof KvmiTransportError) return { kind: "transport", error: err };
  if (err instanceof BridgeError) return { kind: "bridge", error: err };
  if (err instanceof AccessError) return { kind: "access", error: err };
  // AbortSignal.abort() rejects with a DOMException named AbortError: the client went away.
  if (err instanceof Error && err.name === "AbortError") return { kind: "aborted" };
  return { kind: "unknown" };
}

/**
 * kvmi.v1 names commands as v9 does (its `Command` enum follows v9's ids): a kernel name of another
 * dialect (kvmi-v7's KVMI_SET_REGISTERS, v12's KVMI_VM_PAUSE_VCPU) is reported under the v9 name of
 * the same op, so ErrorInfo reads the same whatever the VM's dialect.
 */
function kvmiV1CommandName(name: string): string {
  for (const dialect of KNOWN_DIALECTS) {
    const spec = commandByName(dialect, name);
    if (spec !== undefined) return commandByOp(v9, spec.op)?.name ?? name;
  }
  return name;
}

function contextOf(c: Classified, fallback: ErrorContext): ErrorContext {
  if (c.kind === "aborted" || c.kind === "unknown") return fallback;
  if (c.kind === "access") return { ...fallback, ...(c.error.vm !== undefined && { vm: c.error.vm }) };
  const own = c.error.context;
  return {
    ...fallback,
    ...(own.command !== undefined && { command: kvmiV1CommandName(own.command) }),
    ...(own.vm !== undefined && { vm: own.vm }),
    ...(own.vcpu !== undefined && { vcpu: own.vcpu }),
  };
}

/**
 * Runs an error through the table.
 * @param context what the caller knows (command, VM UUID, vCPU); the error's own context wins.
 */
export function mapError(err: unknown, context: ErrorContext = {}): MappedError {
  const c = classify(err);
  const ctx = contextOf(c, context);
  const what = ctx.command ?? "the command";
  const md = errorInfoMetadata(ctx);
  switch (c.kind) {
    case "argument":
      return {
        code: GrpcCode.INVALID_ARGUMENT,
        reason: c.error.code,
        message: c.error.message,
        metadata: md,
        details: [
          {
            kind: "badRequest",
            field: c.error.field,
            description: c.error.message,
            ...(c.error instanceof InvalidFieldsError && { violations: c.error.violations }),
          },
        ],
        known: true,
      };
    case "remote":
      return mapRemoteError(c.error, ctx);
    // The VM's dialect has no such command or event (v12 has no GET_MAX_GFN): a fact of this VM,
    // not of the bridge, so FAILED_PRECONDITION rather than UNIMPLEMENTED (docs/protocol/README.md).
    case "notInDialect":
      return {
        code: GrpcCode.FAILED_PRECONDITION,
        reason: "NOT_IN_DIALECT",
        message: `${what} does not exist in the ${c.error.dialect} dialect this VM's kernel speaks`,
        metadata: { ...md, dialect: c.error.dialect },
        details: [],
        known: true,
      };
    case "unsupported":
      return {
        code: GrpcCode.UNIMPLEMENTED,
        reason: c.error.code,
        message: `${what} is not offered by this VM's kernel`,
        metadata: md,
        details: [],
        known: true,
      };
    case "protocol":
      return {
        code: GrpcCode.INTERNAL,
        reason: c.error.code,
        message: "the bridge received a malformed KVMI message and closed the VM's connection",
        metadata: md,
        details: [],
        known: true,
      };
    case "timeout":
      return {
        code: GrpcCode.DEADLINE_EXCEEDED,
        reason: c.error.code,
        message: `the kernel did not answer ${what} in time (is the VM paused?)`,
        metadata: md,
        details: [],
        known: true,
      };
    case "transport":
      return {
        code: GrpcCode.UNAVAILABLE,
        reason: c.error.code,
        message: "the KVMI connection to the VM is closed; retry after the VM reconnects",
        metadata: md,
        details: [],
        known: true,
      };
    case "bridge":
      return {
        code: BRIDGE_ERROR_STATUS[c.error.code],
        reason: c.error.code,
        message: c.error.message,
        metadata: md,
        details: bridgeDetails(c.error, ctx),
        known: true,
      };
    case "access":
      // ErrorInfo names the verb that is missing (AIP-193 "permission" metadata).
      return {
        code: c.error.code === "UNAUTHENTICATED" ? GrpcCode.UNAUTHENTICATED : GrpcCode.PERMISSION_DENIED,
        reason: c.error.code,
        message: c.error.message,
        metadata: c.error.verb === undefined ? md : { ...md, verb: c.error.verb },
        details: [],
        known: true,
      };
    case "aborted":
      return { code: GrpcCode.CANCELLED, reason: "CANCELLED", message: "the call was cancelled", metadata: md, details: [], known: true };
    case "unknown":
      return { code: GrpcCode.INTERNAL, reason: "INTERNAL", message: INTERNAL_MESSAGE, metadata: md, details: [], known: false };
    default:
      return assertNever(c);
  }
}

/**
 * Maps any error to a `google.rpc.Status`, for errors carried inside messages (CommandResult.error,
 * ReplyRejected.status, MemoryRangeResult.error).
 */
export function statusToProto(err: unknown, context: ErrorContext = {}): Status {
  return mappedToProto(mapError(err, context));
}

/**
 * Maps any error to what a grpc-js handler returns (`callback(status)`, `call.destroy(status)`):
 * code, message, and the `grpc-status-details-bin` trailer with the binary `google.rpc.Status`.
 */
export function toGrpcStatus(err: unknown, context: ErrorContext = {}): StatusObject {
  return grpcStatusObject(statusToProto(err, context));
}

/** The wire fields the status mapping carries (see wire-coverage.ts). */
export const STATUS_WIRE_FIELDS: readonly WireFieldMapping[] = [
  { wire: `${layouts.kvmiErrorCode.name}.err`, proto: "google.rpc.ErrorInfo.metadata" },
  { wire: `${layouts.kvmiErrorCode.name}.err`, proto: "google.rpc.Status.code" },
];
