// SPDX-License-Identifier: Apache-2.0
/**
 * The one error class the guest model throws. Guest-visible failures (an unmapped GFN, an invalid
 * XCR0, a missing CPUID leaf) are *results*, never exceptions, because the emulated kernel turns them
 * into KVM errno values; this error is only for misuse of the model itself (bad options, an
 * allocator that ran out of guest RAM, a mapping that conflicts with an existing large page).
 */
import { KvmiError } from "../../errors.js";

const kGuestModel = Symbol.for("kvmi-bridge.error.guest-model");

/** Stable codes of {@link GuestModelError} (conventions §3: UPPER_SNAKE). */
export type GuestModelErrorCode =
  | "GUEST_INVALID_ARGUMENT"
  | "GUEST_OUT_OF_MEMORY"
  | "GUEST_MAPPING_CONFLICT"
  | "GUEST_INVALID_STATE";

/** Misuse of the guest model (not a guest-visible fault). */
export class GuestModelError extends KvmiError {
  readonly code: GuestModelErrorCode;

  constructor(code: GuestModelErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, {}, options);
    this.name = "GuestModelError";
    this.code = code;
    Object.defineProperty(this, kGuestModel, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[kGuestModel] === true;
  }
}
