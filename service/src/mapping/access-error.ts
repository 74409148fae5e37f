// SPDX-License-Identifier: Apache-2.0
/**
 * The error of the authorization point (`service/src/auth/`): a caller without a valid identity
 * (UNAUTHENTICATED) or without the verb a call needs on a VM (PERMISSION_DENIED). `status.ts` maps
 * it; ErrorInfo.metadata then holds `verb` and `vm`, so that a client can tell which grant it lacks.
 *
 * The message is sent to the client: it names the verb and the VM, never who else holds what.
 */
import { vmName } from "./resource-names.js";

const kAccessError = Symbol.for("kvmi-bridge.service.access-error");

/** The verbs a policy grants (docs/authorization.md). */
export type Verb = "list" | "read" | "observe" | "control" | "release" | "admin";

/** Why a call was refused. */
export type AccessErrorCode = "PERMISSION_DENIED" | "UNAUTHENTICATED";

/** A refused call: no valid identity, or no grant of `verb` on `vm`. */
export class AccessError extends Error {
  readonly code: AccessErrorCode;
  readonly verb: Verb | undefined;
  /** VM UUID, when the call names one. */
  readonly vm: string | undefined;

  constructor(code: AccessErrorCode, message: string, verb?: Verb, vm?: string) {
    super(message);
    this.name = "AccessError";
    this.code = code;
    this.verb = verb;
    this.vm = vm;
    Object.defineProperty(this, kAccessError, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[kAccessError] === true;
  }
}

/** PERMISSION_DENIED for `verb` on `vm` (or bridge-wide). */
export function permissionDenied(verb: Verb, vm: string | undefined): AccessError {
  const target = vm === undefined ? "this bridge" : vmName(vm);
  return new AccessError("PERMISSION_DENIED", `the policy does not grant "${verb}" on ${target} to this caller`, verb, vm);
}

/** UNAUTHENTICATED: the credential was given but is not valid (expired, wrong issuer or audience…). */
export function unauthenticated(message: string): AccessError {
  return new AccessError("UNAUTHENTICATED", message);
}
