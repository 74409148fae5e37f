// SPDX-License-Identifier: Apache-2.0
/**
 * The error table of the status mapping (conventions §5): one row per KVM errno, the per-command
 * overrides merged over those rows, and the status of every bridge error code. `status.ts`
 * classifies an error and looks it up here; `status-encoding.ts` turns the result into a
 * `google.rpc.Status`. Clients decode it with `@kvmi/proto/status-details`.
 *
 * @see https://google.aip.dev/193 (errors), https://google.aip.dev/194 (retries)
 */
import { status as GrpcCode } from "@grpc/grpc-js";
import type { KvmiErrorContext, KvmiRemoteError } from "@kvmi/kvm-bridge";
import { errno as kvmErrno, V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { V9CommandName } from "@kvmi/kvm-bridge/wire";
import { QuotaExceededError } from "./bridge-error.js";
import type { BridgeError } from "./bridge-error.js";
import type { BridgeErrorCode } from "./bridge-error.js";
import { vcpuName, vmName } from "./resource-names.js";

/** RetryInfo delay for KVM_EAGAIN (a vCPU the guest has not started yet). */
export const EAGAIN_RETRY_DELAY_MS = 100;

/** Where the error happened; the error's own context wins over the caller's. */
export type ErrorContext = KvmiErrorContext;

// ---------------------------------------------------------------------------------------------
// The mapped form

/** A detail message to attach besides ErrorInfo. */
export type StatusDetail =
  | {
      readonly kind: "badRequest";
      readonly field: string;
      readonly description: string;
      /** Every violation when there are several (a rejected EventFilter); `field` is the first. */
      readonly violations?: ReadonlyArray<{ readonly field: string; readonly description: string }>;
    }
  | { readonly kind: "resourceInfo"; readonly resourceType: string; readonly resourceName: string; readonly description: string }
  | { readonly kind: "retryInfo"; readonly delayMs: number }
  | { readonly kind: "preconditionFailure"; readonly type: string; readonly subject: string; readonly description: string }
  | { readonly kind: "quotaFailure"; readonly subject: string; readonly description: string };

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
 * - QUOTA_EXCEEDED -> RESOURCE_EXHAUSTED + QuotaFailure (subject and limit): a per-identity or
 *   bridge-wide limit, or a client that does not read (AIP-193 "quota"). Retrying later may work.
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
  QUOTA_EXCEEDED: GrpcCode.RESOURCE_EXHAUSTED,
  CANCELLED: GrpcCode.CANCELLED,
  DEADLINE_EXCEEDED: GrpcCode.DEADLINE_EXCEEDED,
};

/** The details a bridge error carries besides ErrorInfo. */
export function bridgeDetails(err: BridgeError, ctx: ErrorContext): StatusDetail[] {
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
    case "QUOTA_EXCEEDED":
      return err instanceof QuotaExceededError
        ? [{ kind: "quotaFailure", subject: err.subject, description: `${err.limit}: ${err.message}` }]
        : [];
    case "TOO_MANY_IN_FLIGHT":
    case "CANCELLED":
    case "DEADLINE_EXCEEDED":
      return err.field === undefined ? [] : [{ kind: "badRequest", field: err.field, description: err.message }];
    default:
      return assertNever(err.code);
  }
}

// ---------------------------------------------------------------------------------------------
// Applying a row

/** ErrorInfo.metadata of an error: errno (and its name), command, vm, vcpu when known. */
export function errorInfoMetadata(ctx: ErrorContext, errnoValue?: number): Record<string, string> {
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

/** A kernel error (`-errno` reply) through its row: code, reason, message and the detail the row names. */
export function mapRemoteError(err: KvmiRemoteError, ctx: ErrorContext): MappedError {
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

/** Exhaustiveness guard of the switches over closed unions. */
export function assertNever(value: never): never {
  throw new Error(`unhandled case ${String(value)}`);
}
