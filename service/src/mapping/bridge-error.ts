// SPDX-License-Identifier: Apache-2.0
/**
 * Errors the bridge itself raises (registry, sessions, leases), as opposed to the `Kvmi*Error`s of
 * kvm-bridge. Each has a stable UPPER_SNAKE {@link BridgeErrorCode} that `status.ts` maps to one gRPC
 * code and uses as `google.rpc.ErrorInfo.reason`.
 *
 * Unlike unknown errors, a BridgeError's `message` IS sent to the client: write it as short,
 * actionable English and never paste a cause's message into it (conventions §5).
 */
import type { KvmiErrorContext } from "@kvmi/kvm-bridge";
import { vcpuName, vmName } from "./resource-names.js";

const kBridgeError = Symbol.for("kvmi-bridge.service.bridge-error");

/**
 * Stable codes of bridge errors. The gRPC code each one maps to (and why) is in `status.ts`
 * (`BRIDGE_ERROR_STATUS`).
 */
export type BridgeErrorCode =
  /** The bridge does not know the VM UUID. */
  | "VM_NOT_FOUND"
  /** The vCPU index is not below the VM's vCPU count. */
  | "VCPU_NOT_FOUND"
  /** A second CONTROLLER tried to attach to a VM that already has one. */
  | "CONTROLLER_PRESENT"
  /** A session without the CONTROLLER role tried something only the controller may do. */
  | "NOT_CONTROLLER"
  /** The VM is not hooked right now (handshaking, releasing, or its socket closed): retry later. */
  | "VM_UNHOOKING"
  /** ReleaseVm on a VM whose socket is already closed. */
  | "VM_DISCONNECTED"
  /** An EventReply names no pending event (unknown or already answered vcpu/seq). */
  | "EVENT_NOT_PENDING"
  /** A session message out of order (anything before `attach`, a second `attach`, a busy command id). */
  | "SESSION_STATE"
  /** More commands in flight than the session allows. */
  | "TOO_MANY_IN_FLIGHT"
  /** A per-identity or bridge-wide limit is reached ({@link QuotaExceededError}). */
  | "QUOTA_EXCEEDED"
  /** The client cancelled the call. */
  | "CANCELLED"
  /** The call's deadline passed inside the bridge (not a KVMI command timeout). */
  | "DEADLINE_EXCEEDED";

/** Options of {@link BridgeError}. */
export interface BridgeErrorOptions {
  readonly cause?: unknown;
  /** The request field at fault, for BadRequest (`name`, `entries[3].gpa`). */
  readonly field?: string;
}

/** An error raised by the bridge's own logic; mapped by `status.ts`. */
export class BridgeError extends Error {
  readonly code: BridgeErrorCode;
  readonly context: KvmiErrorContext;
  readonly field: string | undefined;

  constructor(code: BridgeErrorCode, message: string, context: KvmiErrorContext = {}, options: BridgeErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "BridgeError";
    this.code = code;
    this.context = context;
    this.field = options.field;
    Object.defineProperty(this, kBridgeError, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[kBridgeError] === true;
  }
}

/** `vms/{uuid}` is unknown to this bridge (NOT_FOUND). */
export function vmNotFound(uuid: string): BridgeError {
  return new BridgeError("VM_NOT_FOUND", `VM ${vmName(uuid)} is not known to this bridge`, { vm: uuid });
}

/**
 * Checks a vCPU index against the VM's vCPU count, before the request reaches the socket.
 * @param field the request field holding the vCPU name (`name`), for BadRequest.
 * @throws BridgeError VCPU_NOT_FOUND (INVALID_ARGUMENT) when `vcpu >= vcpuCount`.
 */
export function checkVcpuIndex(uuid: string, vcpu: number, vcpuCount: number, field = "name"): void {
  if (Number.isInteger(vcpu) && vcpu >= 0 && vcpu < vcpuCount) return;
  const range = vcpuCount === 0 ? "the VM reports no online vCPUs yet" : `valid indexes are 0..${vcpuCount - 1}`;
  throw new BridgeError("VCPU_NOT_FOUND", `vCPU ${vcpuName(uuid, vcpu)} does not exist: ${range}`, { vm: uuid, vcpu }, { field });
}

/**
 * A limit is reached: sessions, watchers, commands or bulk bytes in flight, per identity or for the
 * whole bridge, or a bound on what one call may make the bridge hold (a client that does not read).
 * Maps to RESOURCE_EXHAUSTED with google.rpc.QuotaFailure naming the limit.
 */
export class QuotaExceededError extends BridgeError {
  /** QuotaFailure.Violation.subject: whose limit (`identity:local`, `bridge`, `session`, `call`). */
  readonly subject: string;
  /** The limit's name, as in the flag without dashes (`maxSessionsPerIdentity`). */
  readonly limit: string;

  constructor(subject: string, limit: string, message: string, context: KvmiErrorContext = {}) {
    super("QUOTA_EXCEEDED", message, context);
    this.name = "QuotaExceededError";
    this.subject = subject;
    this.limit = limit;
  }
}
