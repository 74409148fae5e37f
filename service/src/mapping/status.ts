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
 * can decode it ({@link parseStatusDetails}).
 *
 * Messages are written here (or, for argument and bridge errors, at the throw site for the client).
 * The message of an unknown error is never sent: it becomes INTERNAL "internal error" and the caller
 * logs the cause.
 *
 * @see https://google.aip.dev/193 (errors), https://google.aip.dev/194 (retries)
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { anyPack, anyUnpack, durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import type { Any } from "@bufbuild/protobuf/wkt";
import { Metadata, status as GrpcCode } from "@grpc/grpc-js";
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
import type { KvmiErrorContext } from "@kvmi/kvm-bridge";
import { commandByName, commandByOp, errno as kvmErrno, KNOWN_DIALECTS, layouts, v9, V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { V9CommandName } from "@kvmi/kvm-bridge/wire";
import {
  BadRequest_FieldViolationSchema,
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailure_ViolationSchema,
  PreconditionFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
  StatusSchema,
} from "@kvmi/proto";
import type { Status } from "@kvmi/proto";
import { BridgeError } from "./bridge-error.js";
import type { BridgeErrorCode } from "./bridge-error.js";
import { vcpuName, vmName } from "./resource-names.js";
import type { WireFieldMapping } from "./wire-coverage.js";

/** `google.rpc.ErrorInfo.domain` of every error (introspection_service.proto). */
export const ERROR_DOMAIN = "kvmi.v1.IntrospectionService";
/** The trailer that carries the binary `google.rpc.Status` (gRPC richer error model). */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";
/** RetryInfo delay for KVM_EAGAIN (a vCPU the guest has not started yet). */
export const EAGAIN_RETRY_DELAY_MS = 100;
/** The only message an unknown error ever shows. */
export const INTERNAL_MESSAGE = "internal error";

/** gRPC status codes (numerically `google.rpc.Code`). */
export { GrpcCode };

/** Where the error happened; the error's own context wins over the caller's. */
export type ErrorContext = KvmiErrorContext;

// ---------------------------------------------------------------------------------------------
// The mapped form

/** A detail message to attach besides ErrorInfo. */
export type StatusDetail =
  | { readonly kind: "badRequest"; readonly field: string; readonly description: string }
  | { readonly kind: "resourceInfo"; readonly resourceType: string; readonly resourceName: string; readonly description: string }
  | { readonly kind: "retryInfo"; readonly delayMs: number }
  | { readonly kind: "preconditionFailure"; readonly type: string; readonly subject: string; readonly description: string };

/** An error after the table: everything a status is built from. */
export interface MappedError {
  readonly code: GrpcCode;
  /** ErrorInfo.reason, UPPER_SNAKE. */
  readonly reason: string;
  /** Client-facing message. */
  readonly message: string;
  /** ErrorInfo.metadata (errno, errnoName, command, vm, vcpu when known). */
  readonly metadata: Readonly<Record<string, string>>;
  readonly details: readonly StatusDetail[];
  /** False for unknown errors: the caller must log the cause, the client only sees "internal error". */
  readonly known: boolean;
}

// ---------------------------------------------------------------------------------------------
// KVM errno rows (conventions §5 table) and per-command overrides

/** Error numbers the table knows (kvmi-abi §7), plus everything else. */
export type ErrnoKind =
  | "KVM_EINVAL"
  | "KVM_E2BIG"
  | "KVM_EFAULT"
  | "KVM_ENOENT"
  | "KVM_EPERM"
  | "KVM_EOPNOTSUPP"
  | "KVM_ENOSYS"
  | "KVM_EBUSY"
  | "KVM_EAGAIN"
  | "KVM_ENOMEM"
  | "OTHER";

/** Classifies a positive KVM errno. */
export function errnoKind(value: number): ErrnoKind {
  switch (value) {
    case kvmErrno.KVM_EINVAL:
      return "KVM_EINVAL";
    case kvmErrno.KVM_E2BIG:
      return "KVM_E2BIG";
    case kvmErrno.KVM_EFAULT:
      return "KVM_EFAULT";
    case kvmErrno.KVM_ENOENT:
      return "KVM_ENOENT";
    case kvmErrno.KVM_EPERM:
      return "KVM_EPERM";
    case kvmErrno.KVM_EOPNOTSUPP:
      return "KVM_EOPNOTSUPP";
    case kvmErrno.KVM_ENOSYS:
      return "KVM_ENOSYS";
    case kvmErrno.KVM_EBUSY:
      return "KVM_EBUSY";
    case kvmErrno.KVM_EAGAIN:
      return "KVM_EAGAIN";
    case kvmErrno.KVM_ENOMEM:
      return "KVM_ENOMEM";
    default:
      return "OTHER";
  }
}

/** One row of the errno table. */
interface ErrnoRow {
  readonly code: GrpcCode;
  readonly reason: string;
  /** Client message; `what` is the command's kernel name or "the command". */
  readonly message: (what: string) => string;
  /** Which detail to attach besides ErrorInfo. */
  readonly detail?: "badRequest" | "resourceInfo" | "retryInfo" | "preconditionFailure";
  /** BadRequest field (proto name) for EINVAL; default `name` for vCPU commands, `vm` otherwise. */
  readonly field?: string;
  /** ResourceInfo.resource_type for ENOENT. */
  readonly resourceType?: string;
}

/** The default row of each errno (conventions §5). */
function errnoRow(kind: ErrnoKind): ErrnoRow {
  switch (kind) {
    case "KVM_EINVAL":
    case "KVM_E2BIG":
      return {
        code: GrpcCode.INVALID_ARGUMENT,
        reason: "KVMI_INVALID_ARGUMENT",
        message: (what) => `the kernel rejected an argument of ${what}`,
        detail: "badRequest",
      };
    case "KVM_EFAULT":
      return {
        code: GrpcCode.OUT_OF_RANGE,
        reason: "KVMI_BAD_GUEST_ADDRESS",
        message: (what) => `${what} used a guest address the kernel could not access`,
      };
    case "KVM_ENOENT":
      return {
        code: GrpcCode.NOT_FOUND,
        reason: "KVMI_NOT_FOUND",
        message: (what) => `${what} named something the kernel does not have`,
        detail: "resourceInfo",
        resourceType: "kvmi.v1.Vm",
      };
    case "KVM_EPERM":
      return {
        code: GrpcCode.PERMISSION_DENIED,
        reason: "KVMI_NOT_ALLOWED",
        message: (what) => `the device manager has not allowed ${what} (or the event it needs) on this VM`,
      };
    case "KVM_EOPNOTSUPP":
    case "KVM_ENOSYS":
      return {
        code: GrpcCode.UNIMPLEMENTED,
        reason: "KVMI_UNSUPPORTED",
        message: (what) => `${what} is not supported by this VM's kernel or host`,
      };
    case "KVM_EBUSY":
      return {
        code: GrpcCode.FAILED_PRECONDITION,
        reason: "KVMI_BUSY",
        message: (what) => `${what} cannot run now because a previous request is still in progress`,
      };
    case "KVM_EAGAIN":
      return {
        code: GrpcCode.UNAVAILABLE,
        reason: "KVMI_TRY_AGAIN",
        message: () => "the vCPU is not ready yet (the guest has not started it); retry shortly",
        detail: "retryInfo",
      };
    case "KVM_ENOMEM":
      return {
        code: GrpcCode.RESOURCE_EXHAUSTED,
        reason: "KVMI_OUT_OF_MEMORY",
        message: (what) => `the host ran out of memory while running ${what}`,
      };
    case "OTHER":
      return {
        code: GrpcCode.INTERNAL,
        reason: "KVMI_UNKNOWN_ERRNO",
        message: (what) => `the kernel answered ${what} with an unexpected error`,
      };
    default:
      return assertNever(kind);
  }
}

/**
 * Per-command overrides, merged over the errno row (conventions §5: "per-command overrides go in
 * the same table, never in handlers"). Fields are proto field names of the command's request.
 */
export const COMMAND_ERRNO_OVERRIDES: {
  readonly [N in V9CommandName]?: { readonly [K in ErrnoKind]?: Partial<ErrnoRow> };
} = {
  KVMI_VM_CHECK_COMMAND: {
    KVM_EINVAL: { field: "command" },
    KVM_ENOENT: { resourceType: "kvmi.v1.Command", message: () => "this VM's kernel does not know the command" },
  },
  KVMI_VM_CHECK_EVENT: {
    KVM_EINVAL: { field: "event" },
    KVM_ENOENT: { resourceType: "kvmi.v1.EventType", message: () => "this VM's kernel does not know the event" },
  },
  KVMI_VM_CONTROL_EVENTS: {
    KVM_EINVAL: { field: "event", message: () => "the event cannot be controlled per VM (only EVENT_TYPE_UNHOOK can)" },
  },
  KVMI_VM_READ_PHYSICAL: {
    KVM_EINVAL: { field: "size", message: () => "the range must be 1..4096 bytes within one 4 KiB page" },
    KVM_ENOENT: {
      resourceType: "guest physical page",
      message: () => "the guest physical page is not backed by guest memory (no memslot, or at or above GetMaxGfn)",
    },
  },
  KVMI_VM_WRITE_PHYSICAL: {
    KVM_EINVAL: { field: "data", message: () => "the range must be 1..4096 bytes within one 4 KiB page" },
    KVM_ENOENT: {
      resourceType: "guest physical page",
      message: () => "the guest physical page is not backed by guest memory (no memslot, or at or above GetMaxGfn)",
    },
  },
  KVMI_VCPU_PAUSE: {
    KVM_EBUSY: { message: () => "more than 1001 pause requests are pending on this vCPU; wait for their PAUSE_VCPU events" },
  },
  KVMI_VCPU_CONTROL_EVENTS: {
    KVM_EINVAL: { field: "event" },
    KVM_EOPNOTSUPP: { message: () => "the host cannot intercept descriptor-table accesses (DESCRIPTOR events)" },
    KVM_EBUSY: { message: () => "the device manager already intercepts #BP on this vCPU, so BREAKPOINT events cannot be enabled" },
  },
  KVMI_VCPU_GET_REGISTERS: {
    KVM_EINVAL: { field: "msr_indices", message: () => "an MSR in msr_indices cannot be read, or the reply would be too large" },
  },
  KVMI_VCPU_SET_REGISTERS: {
    KVM_EOPNOTSUPP: {
      code: GrpcCode.FAILED_PRECONDITION,
      reason: "KVMI_NO_EVENT_PENDING",
      detail: "preconditionFailure",
      message: () => "the vCPU is not waiting for an event reply: set registers while an event is pending, or with EventReply.registers",
    },
  },
  KVMI_VCPU_GET_CPUID: {
    KVM_ENOENT: { resourceType: "CPUID leaf", message: () => "the guest has no such CPUID leaf (function, index)" },
  },
  KVMI_VCPU_CONTROL_CR: { KVM_EINVAL: { field: "cr" } },
  KVMI_VCPU_INJECT_EXCEPTION: {
    KVM_EBUSY: { message: () => "a previous exception injection on this vCPU is still in flight; wait for its TRAP event" },
  },
  KVMI_VCPU_GET_XCR: { KVM_EINVAL: { field: "xcr" } },
  KVMI_VCPU_SET_XSAVE: { KVM_EINVAL: { field: "region", message: () => "the kernel rejected the XSAVE area" } },
  KVMI_VCPU_CONTROL_MSR: { KVM_EINVAL: { field: "msr" } },
  KVMI_VM_SET_PAGE_ACCESS: {
    KVM_EINVAL: {
      field: "entries",
      message: () => "the kernel rejected an entry (unknown access bits, or visible=true on an invisible page); earlier entries may be applied",
    },
  },
  KVMI_VCPU_CONTROL_SINGLESTEP: {
    KVM_EOPNOTSUPP: { message: () => "the host cannot single-step vCPUs (see Features.singlestep)" },
  },
};

/** The row for `errno` returned by `command` (override merged over the default). */
export function remoteErrorRow(errnoValue: number, command: string | undefined): Readonly<ErrnoRow> {
  const kind = errnoKind(errnoValue);
  const base = errnoRow(kind);
  const override = command === undefined ? undefined : COMMAND_ERRNO_OVERRIDES[command as V9CommandName]?.[kind];
  return override === undefined ? base : { ...base, ...override };
}

function commandScope(command: string | undefined): "vm" | "vcpu" | undefined {
  return command === undefined ? undefined : V9_COMMANDS[command as V9CommandName]?.scope;
}

// ---------------------------------------------------------------------------------------------
// Bridge errors

/**
 * The status of each bridge error code, and why:
 * - VM_NOT_FOUND -> NOT_FOUND: the resource named does not exist (AIP-193), + ResourceInfo.
 * - VCPU_NOT_FOUND -> INVALID_ARGUMENT: command.proto documents "INVALID_ARGUMENT for a vCPU index >=
 *   vcpu_count", the kernel itself answers KVM_EINVAL for it, and a pre-checked and a
 *   kernel-checked bad index must look the same to a client. + BadRequest on `name`.
 * - CONTROLLER_PRESENT -> FAILED_PRECONDITION: session.proto; the VM is not in the state the call
 *   needs (no controller) and retrying will not help until the other controller releases
 *   (AIP-193). Not ABORTED: that is for concurrency conflicts a client should retry at a higher
 *   level (read-modify-write), and not ALREADY_EXISTS: nothing is being created. + PreconditionFailure.
 * - NOT_CONTROLLER -> PERMISSION_DENIED: the caller's role lacks the right (session.proto: an
 *   observer's reply or mutating command).
 * - VM_UNHOOKING -> UNAVAILABLE: command.proto says "UNAVAILABLE when the VM is not hooked"; the
 *   condition is transient (QEMU reconnects), so retrying an idempotent call later is right (AIP-194).
 * - VM_DISCONNECTED -> FAILED_PRECONDITION: ReleaseVm on a closed socket (vm.proto); retrying
 *   cannot succeed. + PreconditionFailure.
 * - EVENT_NOT_PENDING -> NOT_FOUND: no pending event with that (vcpu, seq) (session.proto ReplyRejected).
 * - SESSION_STATE -> FAILED_PRECONDITION: session.proto (attach first, exactly once; id in flight).
 * - TOO_MANY_IN_FLIGHT -> RESOURCE_EXHAUSTED: session.proto (max_inflight_commands).
 * - CANCELLED -> CANCELLED, DEADLINE_EXCEEDED -> DEADLINE_EXCEEDED.
 */
export const BRIDGE_ERROR_STATUS: { readonly [C in BridgeErrorCode]: GrpcCode } = {
  VM_NOT_FOUND: GrpcCode.NOT_FOUND,
  VCPU_NOT_FOUND: GrpcCode.INVALID_ARGUMENT,
  CONTROLLER_PRESENT: GrpcCode.FAILED_PRECONDITION,
  NOT_CONTROLLER: GrpcCode.PERMISSION_DENIED,
  VM_UNHOOKING: GrpcCode.UNAVAILABLE,
  VM_DISCONNECTED: GrpcCode.FAILED_PRECONDITION,
  EVENT_NOT_PENDING: GrpcCode.NOT_FOUND,
  SESSION_STATE: GrpcCode.FAILED_PRECONDITION,
  TOO_MANY_IN_FLIGHT: GrpcCode.RESOURCE_EXHAUSTED,
  CANCELLED: GrpcCode.CANCELLED,
  DEADLINE_EXCEEDED: GrpcCode.DEADLINE_EXCEEDED,
};

function bridgeDetails(err: BridgeError, ctx: ErrorContext): StatusDetail[] {
  const subject = ctx.vm === undefined ? "" : vmName(ctx.vm);
  switch (err.code) {
    case "VM_NOT_FOUND":
      return [{ kind: "resourceInfo", resourceType: "kvmi.v1.Vm", resourceName: subject, description: err.message }];
    case "VCPU_NOT_FOUND":
      return [{ kind: "badRequest", field: err.field ?? "name", description: err.message }];
    case "CONTROLLER_PRESENT":
      return [{ kind: "preconditionFailure", type: "CONTROLLER", subject, description: err.message }];
    case "VM_DISCONNECTED":
      return [{ kind: "preconditionFailure", type: "STATE", subject, description: err.message }];
    case "SESSION_STATE":
      return [{ kind: "preconditionFailure", type: "SESSION", subject, description: err.message }];
    case "EVENT_NOT_PENDING":
      return [
        {
          kind: "resourceInfo",
          resourceType: "kvmi.v1.Event",
          resourceName: ctx.vm !== undefined && ctx.vcpu !== undefined ? vcpuName(ctx.vm, ctx.vcpu) : subject,
          description: err.message,
        },
      ];
    case "NOT_CONTROLLER":
    case "VM_UNHOOKING":
    case "TOO_MANY_IN_FLIGHT":
    case "CANCELLED":
    case "DEADLINE_EXCEEDED":
      return err.field === undefined ? [] : [{ kind: "badRequest", field: err.field, description: err.message }];
    default:
      return assertNever(err.code);
  }
}

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
  const own = c.error.context;
  return {
    ...fallback,
    ...(own.command !== undefined && { command: kvmiV1CommandName(own.command) }),
    ...(own.vm !== undefined && { vm: own.vm }),
    ...(own.vcpu !== undefined && { vcpu: own.vcpu }),
  };
}

function errorInfoMetadata(ctx: ErrorContext, errnoValue?: number): Record<string, string> {
  const md: Record<string, string> = {};
  if (errnoValue !== undefined) {
    md["errno"] = String(errnoValue);
    const name = kvmErrno.KVM_ERRNO_NAMES[errnoValue];
    if (name !== undefined) md["errnoName"] = name;
  }
  if (ctx.command !== undefined) md["command"] = ctx.command;
  if (ctx.vm !== undefined) md["vm"] = ctx.vm;
  if (ctx.vcpu !== undefined) md["vcpu"] = String(ctx.vcpu);
  return md;
}

function remote(err: KvmiRemoteError, ctx: ErrorContext): MappedError {
  const row = remoteErrorRow(err.errno, ctx.command);
  const what = ctx.command ?? "the command";
  const message = row.message(what);
  const details: StatusDetail[] = [];
  switch (row.detail) {
    case "badRequest": {
      const field = row.field ?? (commandScope(ctx.command) === "vcpu" ? "name" : "vm");
      details.push({ kind: "badRequest", field, description: message });
      break;
    }
    case "resourceInfo":
      details.push({
        kind: "resourceInfo",
        resourceType: row.resourceType ?? "kvmi.v1.Vm",
        resourceName: ctx.vm === undefined ? "" : ctx.vcpu === undefined ? vmName(ctx.vm) : vcpuName(ctx.vm, ctx.vcpu),
        description: message,
      });
      break;
    case "retryInfo":
      details.push({ kind: "retryInfo", delayMs: EAGAIN_RETRY_DELAY_MS });
      break;
    case "preconditionFailure":
      details.push({
        kind: "preconditionFailure",
        type: row.reason,
        subject: ctx.vm === undefined ? "" : ctx.vcpu === undefined ? vmName(ctx.vm) : vcpuName(ctx.vm, ctx.vcpu),
        description: message,
      });
      break;
    case undefined:
      break;
    default:
      return assertNever(row.detail);
  }
  return { code: row.code, reason: row.reason, message, metadata: errorInfoMetadata(ctx, err.errno), details, known: true };
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
        details: [{ kind: "badRequest", field: c.error.field, description: c.error.message }],
        known: true,
      };
    case "remote":
      return remote(c.error, ctx);
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
    case "aborted":
      return { code: GrpcCode.CANCELLED, reason: "CANCELLED", message: "the call was cancelled", metadata: md, details: [], known: true };
    case "unknown":
      return { code: GrpcCode.INTERNAL, reason: "INTERNAL", message: INTERNAL_MESSAGE, metadata: md, details: [], known: false };
    default:
      return assertNever(c);
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

function packDetail(detail: StatusDetail): Any {
  switch (detail.kind) {
    case "badRequest":
      return anyPack(
        BadRequestSchema,
        create(BadRequestSchema, {
          fieldViolations: [create(BadRequest_FieldViolationSchema, { field: detail.field, description: detail.description })],
        }),
      );
    case "resourceInfo":
      return anyPack(
        ResourceInfoSchema,
        create(ResourceInfoSchema, {
          resourceType: detail.resourceType,
          resourceName: detail.resourceName,
          description: detail.description,
        }),
      );
    case "retryInfo":
      return anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: durationFromMs(detail.delayMs) }));
    case "preconditionFailure":
      return anyPack(
        PreconditionFailureSchema,
        create(PreconditionFailureSchema, {
          violations: [
            create(PreconditionFailure_ViolationSchema, { type: detail.type, subject: detail.subject, description: detail.description }),
          ],
        }),
      );
    default:
      return assertNever(detail);
  }
}

/** Builds the `google.rpc.Status` of a mapped error: ErrorInfo first, then the other details. */
export function mappedToProto(mapped: MappedError): Status {
  const errorInfo = create(ErrorInfoSchema, { reason: mapped.reason, domain: ERROR_DOMAIN, metadata: { ...mapped.metadata } });
  return create(StatusSchema, {
    code: mapped.code,
    message: mapped.message,
    details: [anyPack(ErrorInfoSchema, errorInfo), ...mapped.details.map(packDetail)],
  });
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
  const st = statusToProto(err, context);
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(toBinary(StatusSchema, st)));
  return { code: st.code as GrpcCode, details: st.message, metadata };
}

// ---------------------------------------------------------------------------------------------
// Decoding (clients, tests)

/** What {@link parseStatusDetails} extracts. */
export interface StatusDetails {
  readonly code: number;
  readonly message: string;
  readonly reason: string;
  readonly domain: string;
  /** Positive KVM errno, for KVMI remote errors. */
  readonly errno?: number;
  readonly command?: string;
  /** VM UUID. */
  readonly vm?: string;
  readonly vcpu?: number;
  /** All ErrorInfo metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  readonly fieldViolations: ReadonlyArray<{ readonly field: string; readonly description: string }>;
  readonly resourceInfo?: { readonly resourceType: string; readonly resourceName: string; readonly description: string };
  readonly retryDelayMs?: number;
  readonly preconditionViolations: ReadonlyArray<{ readonly type: string; readonly subject: string; readonly description: string }>;
}

/** A plain Uint8Array view (decoding a Buffer would leave Buffers in the message's bytes fields). */
function plainBytes(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function statusFrom(source: Metadata | Status | Uint8Array): Status | undefined {
  if (source instanceof Metadata) {
    const value = source.get(STATUS_DETAILS_KEY)[0];
    if (value === undefined || typeof value === "string") return undefined;
    return fromBinary(StatusSchema, plainBytes(value));
  }
  if (source instanceof Uint8Array) return fromBinary(StatusSchema, plainBytes(source));
  return source;
}

/**
 * Decodes the rich error of a status: from grpc-js trailers (`err.metadata`), from the binary
 * trailer value, or from a `google.rpc.Status` message. Undefined when there is none.
 */
export function parseStatusDetails(source: Metadata | Status | Uint8Array): StatusDetails | undefined {
  const st = statusFrom(source);
  if (st === undefined) return undefined;
  let info: { reason: string; domain: string; metadata: Record<string, string> } = { reason: "", domain: "", metadata: {} };
  const fieldViolations: Array<{ field: string; description: string }> = [];
  const preconditionViolations: Array<{ type: string; subject: string; description: string }> = [];
  let resourceInfo: StatusDetails["resourceInfo"];
  let retryDelayMs: number | undefined;
  for (const any of st.details) {
    const errorInfo = anyUnpack(any, ErrorInfoSchema);
    if (errorInfo !== undefined) info = errorInfo;
    const badRequest = anyUnpack(any, BadRequestSchema);
    if (badRequest !== undefined) {
      for (const v of badRequest.fieldViolations) fieldViolations.push({ field: v.field, description: v.description });
    }
    const resource = anyUnpack(any, ResourceInfoSchema);
    if (resource !== undefined) {
      resourceInfo = { resourceType: resource.resourceType, resourceName: resource.resourceName, description: resource.description };
    }
    const retry = anyUnpack(any, RetryInfoSchema);
    if (retry?.retryDelay !== undefined) retryDelayMs = durationMs(retry.retryDelay);
    const precondition = anyUnpack(any, PreconditionFailureSchema);
    if (precondition !== undefined) {
      for (const v of precondition.violations) preconditionViolations.push({ type: v.type, subject: v.subject, description: v.description });
    }
  }
  const md = info.metadata;
  const num = (key: string): number | undefined => (md[key] === undefined ? undefined : Number(md[key]));
  return {
    code: st.code,
    message: st.message,
    reason: info.reason,
    domain: info.domain,
    ...(md["errno"] !== undefined && { errno: num("errno") }),
    ...(md["command"] !== undefined && { command: md["command"] }),
    ...(md["vm"] !== undefined && { vm: md["vm"] }),
    ...(md["vcpu"] !== undefined && { vcpu: num("vcpu") }),
    metadata: { ...md },
    fieldViolations,
    ...(resourceInfo !== undefined && { resourceInfo }),
    ...(retryDelayMs !== undefined && { retryDelayMs }),
    preconditionViolations,
  };
}

// ---------------------------------------------------------------------------------------------

function assertNever(value: never): never {
  throw new Error(`unhandled case ${String(value)}`);
}

/** The wire fields the status mapping carries (see wire-coverage.ts). */
export const STATUS_WIRE_FIELDS: readonly WireFieldMapping[] = [
  { wire: `${layouts.kvmiErrorCode.name}.err`, proto: "google.rpc.ErrorInfo.metadata" },
  { wire: `${layouts.kvmiErrorCode.name}.err`, proto: "google.rpc.Status.code" },
];
