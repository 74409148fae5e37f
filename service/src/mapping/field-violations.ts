// SPDX-License-Identifier: Apache-2.0
/**
 * An argument error with several field violations: a request whose parts are each checked (an
 * EventFilter's rules) reports every bad field at once, as one google.rpc.BadRequest with one
 * FieldViolation per problem (AIP-193), through status.ts like any other KvmiArgumentError.
 */
import { KvmiArgumentError } from "@kvmi/kvm-bridge";

/** One bad field: its path in the request (`attach.event_filter.rules[2].action`) and why. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

const kViolations = Symbol.for("kvmi-bridge.InvalidFieldsError");

/** INVALID_ARGUMENT with every violation; `field` is the first one's. */
export class InvalidFieldsError extends KvmiArgumentError {
  readonly violations: readonly FieldViolation[];

  constructor(violations: readonly FieldViolation[]) {
    if (violations.length === 0) throw new Error("InvalidFieldsError needs at least one violation");
    const first = violations[0]!;
    const more = violations.length > 1 ? ` (and ${violations.length - 1} more: ${violations.slice(1).map((v) => v.field).join(", ")})` : "";
    super(first.field, `${first.field}: ${first.description}${more}`);
    this.name = "InvalidFieldsError";
    this.violations = violations;
    Object.defineProperty(this, kViolations, { value: true });
  }

  // KvmiArgumentError brands its instances (errors.ts); without its own brand every argument error
  // would pass `instanceof InvalidFieldsError`.
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[kViolations] === true;
  }
}
