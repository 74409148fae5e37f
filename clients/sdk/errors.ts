// SPDX-License-Identifier: Apache-2.0
/**
 * Typed errors of the SDK, built from the bridge's rich error model: every error status of
 * `kvmi.v1.IntrospectionService` carries a binary `google.rpc.Status` in the
 * `grpc-status-details-bin` trailer with `google.rpc.ErrorInfo` (reason, domain
 * `kvmi.v1.IntrospectionService`, metadata `errno`/`errnoName`/`command`/`vm`/`vcpu`) and, where it
 * helps, BadRequest, ResourceInfo, RetryInfo or PreconditionFailure (AIP-193). The same
 * `google.rpc.Status` also travels inside messages (CommandResult.error, ReplyRejected.status,
 * MemoryRangeResult.error), so both paths end in {@link fromStatus}.
 *
 * {@link toSdkError} is the one function that turns anything a gRPC call can throw into a
 * {@link KvmiBridgeError} subclass chosen by the gRPC code.
 *
 * @see https://google.aip.dev/193
 * @see ../../proto/kvmi/v1/introspection_service.proto
 */
import { Metadata, status as GrpcCode } from "@grpc/grpc-js";
import type { Status } from "@kvmi/proto";
import { decodeStatus, ERROR_DOMAIN, readStatusDetails, STATUS_DETAILS_KEY } from "@kvmi/proto/status-details";
import type { FieldViolation, PreconditionViolation, ResourceInfo } from "@kvmi/proto/status-details";

/** `google.rpc.ErrorInfo.domain` of every error the bridge sends. */
export { ERROR_DOMAIN };

/** The trailer that carries the binary `google.rpc.Status` (gRPC richer error model). */
export const STATUS_DETAILS_TRAILER = STATUS_DETAILS_KEY;

export type { FieldViolation, PreconditionViolation, ResourceInfo };

/** gRPC status codes by name (numerically `google.rpc.Code`). */
export const StatusCode = GrpcCode;

/** The name of a gRPC status code, e.g. `"NOT_FOUND"`. */
export type StatusCodeName = keyof typeof GrpcCode;

/** The decoded error details besides ErrorInfo. */
export interface ErrorDetails {
  /** BadRequest field violations; empty when the status had none. */
  readonly fieldViolations: readonly FieldViolation[];
  /** ResourceInfo, when the status had one (NOT_FOUND). */
  readonly resourceInfo: ResourceInfo | undefined;
  /** RetryInfo.retry_delay in milliseconds, when the server suggested one (UNAVAILABLE). */
  readonly retryDelayMs: number | undefined;
  /** PreconditionFailure violations; empty when the status had none. */
  readonly preconditionViolations: readonly PreconditionViolation[];
}

/** Everything a {@link KvmiBridgeError} is built from. */
export interface KvmiBridgeErrorInit {
  /** The gRPC status code. */
  readonly code: number;
  /** Short English message (the status message). */
  readonly message: string;
  /** `ErrorInfo.reason`, e.g. `KVMI_NOT_FOUND`, `CONTROLLER_PRESENT`. */
  readonly reason?: string | undefined;
  /** `ErrorInfo.domain`. */
  readonly domain?: string | undefined;
  /** `ErrorInfo.metadata`. */
  readonly metadata?: Readonly<Record<string, string>>;
  readonly details?: Partial<ErrorDetails>;
  readonly cause?: unknown;
}

const kSdkError = Symbol.for("kvmi-bridge.clients.sdk-error");

const NO_DETAILS: ErrorDetails = { fieldViolations: [], resourceInfo: undefined, retryDelayMs: undefined, preconditionViolations: [] };

/**
 * The base class of every error the SDK throws. `code` is the gRPC status code; the other fields
 * come from `google.rpc.ErrorInfo` (conventions §5, AIP-193): `reason` is stable and meant for
 * programs, `message` for people.
 *
 * Use the subclasses for control flow (`err instanceof NotFoundError`) and `reason` for the exact
 * cause (`KVMI_NOT_ALLOWED`, `CONTROLLER_PRESENT`, `KVMI_TRY_AGAIN`, …).
 */
export class KvmiBridgeError extends Error {
  /** The gRPC status code (`StatusCode.NOT_FOUND` = 5, …). */
  readonly code: number;
  /** `ErrorInfo.reason`; `undefined` when the status carried no ErrorInfo (e.g. a transport error). */
  readonly reason: string | undefined;
  /** `ErrorInfo.domain`: {@link ERROR_DOMAIN} for the bridge's own errors. */
  readonly domain: string | undefined;
  /** The KVM error number the kernel returned (`ErrorInfo.metadata.errno`), e.g. 2 for KVM_ENOENT. */
  readonly errno: number | undefined;
  /** The KVM error name (`ErrorInfo.metadata.errnoName`), e.g. `KVM_ENOENT`. */
  readonly errnoName: string | undefined;
  /** The KVMI command that failed (`ErrorInfo.metadata.command`), e.g. `KVMI_VM_READ_PHYSICAL`. */
  readonly command: string | undefined;
  /** The VM UUID (`ErrorInfo.metadata.vm`). */
  readonly vm: string | undefined;
  /** The vCPU index (`ErrorInfo.metadata.vcpu`). */
  readonly vcpu: number | undefined;
  /** The raw `ErrorInfo.metadata`. */
  readonly metadata: Readonly<Record<string, string>>;
  /** BadRequest, ResourceInfo, RetryInfo and PreconditionFailure, decoded. */
  readonly details: ErrorDetails;

  constructor(init: KvmiBridgeErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.reason = init.reason || undefined;
    this.domain = init.domain || undefined;
    const md = init.metadata ?? {};
    this.metadata = md;
    this.errno = md["errno"] !== undefined && /^\d+$/.test(md["errno"]) ? Number(md["errno"]) : undefined;
    this.errnoName = md["errnoName"];
    this.command = md["command"];
    this.vm = md["vm"];
    this.vcpu = md["vcpu"] !== undefined && /^\d+$/.test(md["vcpu"]) ? Number(md["vcpu"]) : undefined;
    this.details = { ...NO_DETAILS, ...init.details };
    Object.defineProperty(this, kSdkError, { value: true });
  }

  /** The name of {@link code}, e.g. `"NOT_FOUND"`. */
  get codeName(): StatusCodeName {
    return statusCodeName(this.code);
  }
}

/** CANCELLED: the caller aborted (AbortSignal) or the call was cancelled. */
export class CancelledError extends KvmiBridgeError {}
/** UNKNOWN: an error the SDK could not classify (its `cause` holds the original). */
export class UnknownError extends KvmiBridgeError {}
/** INVALID_ARGUMENT: a malformed request, a range the kernel refused, a vCPU index out of range. See `details.fieldViolations`. */
export class InvalidArgumentError extends KvmiBridgeError {}
/** DEADLINE_EXCEEDED: the call's deadline passed, or the kernel did not answer in time. */
export class DeadlineExceededError extends KvmiBridgeError {}
/** NOT_FOUND: an unknown VM, unbacked guest memory, a missing CPUID leaf, an event that is not pending. */
export class NotFoundError extends KvmiBridgeError {}
/** ALREADY_EXISTS. */
export class AlreadyExistsError extends KvmiBridgeError {}
/** PERMISSION_DENIED: the device manager disallowed the command or event, or the session is not the controller. */
export class PermissionDeniedError extends KvmiBridgeError {}
/** RESOURCE_EXHAUSTED: too many commands in flight, host out of memory, a watcher that stopped reading. */
export class ResourceExhaustedError extends KvmiBridgeError {}
/** FAILED_PRECONDITION: a controller is already attached, the kernel is busy, no event is pending. */
export class FailedPreconditionError extends KvmiBridgeError {}
/** ABORTED. */
export class AbortedError extends KvmiBridgeError {}
/** OUT_OF_RANGE: a guest address the kernel could not access (KVM_EFAULT). */
export class OutOfRangeError extends KvmiBridgeError {}
/** UNIMPLEMENTED: the VM's kernel or host lacks the command or feature (e.g. single-step on AMD). */
export class UnimplementedError extends KvmiBridgeError {}
/** INTERNAL: the bridge failed; the message never contains internals. */
export class InternalError extends KvmiBridgeError {}
/**
 * UNAVAILABLE: the bridge is unreachable, the VM is not hooked right now, a vCPU is not started yet
 * (`KVMI_TRY_AGAIN`, with `details.retryDelayMs`), or a session lost its VM (`KVMI_SESSION_LOST`).
 * The SDK retries idempotent methods (reads, idempotent changes) on it by itself.
 */
export class UnavailableError extends KvmiBridgeError {}
/** DATA_LOSS. */
export class DataLossError extends KvmiBridgeError {}
/** UNAUTHENTICATED: TLS client authentication failed. */
export class UnauthenticatedError extends KvmiBridgeError {}

/**
 * A session command, event reply or event iterator ended because the session stream closed
 * cleanly (the client released it, or the bridge ended it with OK). `reason` is `SESSION_RELEASED`
 * or `SESSION_ENDED`. A session that ends with an error status rejects with that status's error
 * instead (e.g. {@link UnavailableError} with reason `KVMI_SESSION_LOST`).
 */
export class SessionClosedError extends CancelledError {}

/**
 * Guest memory could not be read or written as a whole: some pages are not mapped (virtual
 * addresses) or not backed by guest memory (physical addresses). `data` holds what was read, with
 * zeros in the holes; `holes` lists them. Reason `MEMORY_HOLE`.
 */
export class MemoryHoleError extends NotFoundError {
  /** The unreadable parts, in the address space of the request. */
  readonly holes: readonly MemoryHoleInfo[];
  /** The bytes read (zeros inside the holes); empty for a write. */
  readonly data: Uint8Array;

  constructor(message: string, holes: readonly MemoryHoleInfo[], data: Uint8Array = new Uint8Array(0)) {
    super({ code: GrpcCode.NOT_FOUND, message, reason: "MEMORY_HOLE" });
    this.holes = holes;
    this.data = data;
  }
}

/** One unreadable range (`kvmi.v1.MemoryHole`). */
export interface MemoryHoleInfo {
  /** First address of the hole, in the address space of the request. */
  readonly address: bigint;
  /** Length in bytes. */
  readonly length: bigint;
  /** Why: `notMapped` (no translation), `notPresent` (no guest memory), `unspecified`. */
  readonly reason: "notMapped" | "notPresent" | "unspecified";
}

const CLASSES: Readonly<Record<number, new (init: KvmiBridgeErrorInit) => KvmiBridgeError>> = {
  [GrpcCode.CANCELLED]: CancelledError,
  [GrpcCode.UNKNOWN]: UnknownError,
  [GrpcCode.INVALID_ARGUMENT]: InvalidArgumentError,
  [GrpcCode.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [GrpcCode.NOT_FOUND]: NotFoundError,
  [GrpcCode.ALREADY_EXISTS]: AlreadyExistsError,
  [GrpcCode.PERMISSION_DENIED]: PermissionDeniedError,
  [GrpcCode.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [GrpcCode.FAILED_PRECONDITION]: FailedPreconditionError,
  [GrpcCode.ABORTED]: AbortedError,
  [GrpcCode.OUT_OF_RANGE]: OutOfRangeError,
  [GrpcCode.UNIMPLEMENTED]: UnimplementedError,
  [GrpcCode.INTERNAL]: InternalError,
  [GrpcCode.UNAVAILABLE]: UnavailableError,
  [GrpcCode.DATA_LOSS]: DataLossError,
  [GrpcCode.UNAUTHENTICATED]: UnauthenticatedError,
};

/** The name of a gRPC status code (`5` → `"NOT_FOUND"`); `"UNKNOWN"` for values outside 0..16. */
export function statusCodeName(code: number): StatusCodeName {
  const entry = Object.entries(GrpcCode).find(([, value]) => value === code);
  return (entry?.[0] as StatusCodeName | undefined) ?? "UNKNOWN";
}

/** True for any error the SDK created, also across copies of the SDK (a `Symbol.for` brand). */
export function isKvmiBridgeError(value: unknown): value is KvmiBridgeError {
  return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[kSdkError] === true;
}

/** Creates the subclass of {@link KvmiBridgeError} that matches `init.code`. */
export function createError(init: KvmiBridgeErrorInit): KvmiBridgeError {
  const Class = CLASSES[init.code] ?? KvmiBridgeError;
  return new Class(init);
}

/**
 * Builds the typed error of a `google.rpc.Status` (CommandResult.error, ReplyRejected.status,
 * MemoryRangeResult.error, or the decoded `grpc-status-details-bin` trailer). Unknown detail types
 * are ignored, so a newer bridge with more details still decodes.
 */
export function fromStatus(status: Status, cause?: unknown): KvmiBridgeError {
  const d = readStatusDetails(status);
  return createError({
    code: d.code,
    message: d.message || statusCodeName(d.code),
    reason: d.reason,
    domain: d.domain,
    metadata: d.metadata,
    details: {
      fieldViolations: d.fieldViolations,
      preconditionViolations: d.preconditionViolations,
      resourceInfo: d.resourceInfo,
      retryDelayMs: d.retryDelayMs,
    },
    cause,
  });
}

/** Decodes a binary `google.rpc.Status`; `undefined` if the bytes are not one. */
export function decodeStatusDetails(bytes: Uint8Array): Status | undefined {
  return decodeStatus(bytes);
}

/** The shape of a grpc-js call error (`ServiceError`). */
interface GrpcErrorLike {
  readonly code: number;
  readonly details?: string;
  readonly message?: string;
  readonly metadata?: Metadata;
}

function isGrpcErrorLike(err: unknown): err is GrpcErrorLike {
  if (typeof err !== "object" || err === null) return false;
  const e = err as Record<string, unknown>;
  return typeof e["code"] === "number" && ("metadata" in e || "details" in e);
}

/**
 * Turns anything a gRPC call or the SDK can throw into a {@link KvmiBridgeError} (the one mapping
 * of the SDK, conventions §5):
 * - a grpc-js `ServiceError`: its `grpc-status-details-bin` trailer is decoded (ErrorInfo and the
 *   other details); without the trailer, code and message alone;
 * - an `AbortError` (an aborted `AbortSignal`): {@link CancelledError} with the signal's reason as
 *   `cause`;
 * - an SDK error: returned unchanged;
 * - anything else: {@link UnknownError} with the original as `cause`.
 */
export function toSdkError(err: unknown): KvmiBridgeError {
  if (isKvmiBridgeError(err)) return err;
  if (isGrpcErrorLike(err)) {
    const raw = err.metadata instanceof Metadata ? err.metadata.get(STATUS_DETAILS_TRAILER)[0] : undefined;
    const status = raw instanceof Uint8Array ? decodeStatusDetails(raw) : undefined;
    if (status !== undefined && status.code === err.code) return fromStatus(status, err);
    return createError({ code: err.code, message: err.details || err.message || statusCodeName(err.code), cause: err });
  }
  if (err instanceof Error && err.name === "AbortError") {
    return new CancelledError({ code: GrpcCode.CANCELLED, message: "the operation was aborted", reason: "ABORTED_BY_CALLER", cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new UnknownError({ code: GrpcCode.UNKNOWN, message, cause: err });
}

/** The error a call rejects with when its AbortSignal fires. @internal */
export function abortError(signal: AbortSignal): CancelledError {
  return new CancelledError({
    code: GrpcCode.CANCELLED,
    message: "the operation was aborted",
    reason: "ABORTED_BY_CALLER",
    cause: signal.reason,
  });
}
