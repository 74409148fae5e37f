// SPDX-License-Identifier: Apache-2.0
/**
 * XCR0 and the XSAVE area (`struct kvm_xsave`, 4096 bytes, kvmi-abi §6) of one vCPU, with the checks KVM
 * applies: `__kvm_set_xcr` for XSETBV and `kvm_vcpu_ioctl_x86_set_xsave` plus the fpu header check for
 * KVMI_VCPU_SET_XSAVE (kvmi-abi §4 id 20: "KVM rejects the state" → `-KVM_EINVAL`).
 *
 * The area uses the standard (non-compacted) format: legacy FXSAVE region at 0, XSAVE header at 512,
 * AVX (YMM_Hi128) state at 576 (CPUID.(0xd,2)).
 *
 * @see Intel SDM vol. 1 §13.4 "XSAVE Area", §13.8.1 (header validity on XRSTOR)
 */
import { SUPPORTED_XCR0 } from "./cpuid.js";
import { XFEATURE_MASK_FP, XFEATURE_MASK_SSE, XFEATURE_MASK_YMM } from "./x86.js";

/** `sizeof(struct kvm_xsave)`. */
export const XSAVE_AREA_BYTES = 4096;
/** Offset of the x87 control word (FCW) in the legacy region. */
export const XSAVE_FCW_OFFSET = 0;
/** Offset of MXCSR in the legacy region (`XSAVE_MXCSR_OFFSET` in KVM). */
export const XSAVE_MXCSR_OFFSET = 24;
/** Offset of MXCSR_MASK in the legacy region. */
export const XSAVE_MXCSR_MASK_OFFSET = 28;
/** Offset of the XSAVE header (`XSAVE_HDR_OFFSET`): XSTATE_BV @+0, XCOMP_BV @+8, reserved to +64. */
export const XSAVE_HDR_OFFSET = 512;
/** Size of the XSAVE header. */
export const XSAVE_HDR_BYTES = 64;
/** MXCSR bits the CPU implements (`mxcsr_feature_mask`); setting others makes SET_XSAVE fail. */
export const MXCSR_FEATURE_MASK = 0xffff;

/** Why a SET_XSAVE image was rejected. */
export type XsaveRejectReason =
  | "TOO_LARGE"
  | "XSTATE_BV_NOT_IN_XCR0"
  | "XCOMP_BV_SET"
  | "HEADER_RESERVED_SET"
  | "MXCSR_RESERVED_SET";

export type XsaveSetResult = { readonly ok: true } | { readonly ok: false; readonly reason: XsaveRejectReason };

/** XCR0 plus the XSAVE area of one vCPU. */
export interface XsaveState {
  /** Current XCR0 (XCR index 0, `XCR_XFEATURE_ENABLED_MASK`). */
  readonly xcr0: bigint;
  /**
   * Loads XCR0 if the value is valid ({@link isValidXcr0}); XSTATE_BV bits of components that get
   * disabled are cleared so that the area stays loadable.
   * @returns false where XSETBV would raise #GP; XCR0 is then unchanged.
   */
  setXcr0(value: bigint): boolean;
  /** Copy of the 4096-byte area (KVMI_VCPU_GET_XSAVE). */
  getArea(): Uint8Array;
  /** Loads an area of at most 4096 bytes, zero-extended (KVMI_VCPU_SET_XSAVE). Nothing changes on rejection. */
  setArea(bytes: Uint8Array): XsaveSetResult;
  /** Restores power-on state. @internal */
  reset(): void;
}

/**
 * Whether XSETBV may load `value` into XCR0 (`__kvm_set_xcr`): x87 must stay enabled, AVX needs SSE,
 * and only bits the CPU supports may be set.
 */
export function isValidXcr0(value: bigint): boolean {
  if (value < 0n || (value & ~SUPPORTED_XCR0) !== 0n) return false;
  if ((value & XFEATURE_MASK_FP) === 0n) return false;
  return !((value & XFEATURE_MASK_YMM) !== 0n && (value & XFEATURE_MASK_SSE) === 0n);
}

/** Power-on XCR0 of the modelled guest: Linux enables x87, SSE and AVX when CPUID offers them. */
export const INITIAL_XCR0 = XFEATURE_MASK_FP | XFEATURE_MASK_SSE | XFEATURE_MASK_YMM;

function initialArea(): Uint8Array {
  const area = new Uint8Array(XSAVE_AREA_BYTES);
  const view = new DataView(area.buffer);
  view.setUint16(XSAVE_FCW_OFFSET, 0x037f, true); // FNINIT control word
  view.setUint32(XSAVE_MXCSR_OFFSET, 0x1f80, true); // all SIMD exceptions masked
  view.setUint32(XSAVE_MXCSR_MASK_OFFSET, MXCSR_FEATURE_MASK, true);
  view.setBigUint64(XSAVE_HDR_OFFSET, XFEATURE_MASK_FP | XFEATURE_MASK_SSE, true);
  return area;
}

/** Validates a (zero-extended) area against the current XCR0. */
function validate(area: Uint8Array, xcr0: bigint): XsaveSetResult {
  const view = new DataView(area.buffer, area.byteOffset, area.byteLength);
  const xstateBv = view.getBigUint64(XSAVE_HDR_OFFSET, true);
  if ((xstateBv & ~xcr0) !== 0n) return { ok: false, reason: "XSTATE_BV_NOT_IN_XCR0" };
  // KVM hands out and accepts only the standard format, so any XCOMP_BV bit is invalid.
  if (view.getBigUint64(XSAVE_HDR_OFFSET + 8, true) !== 0n) return { ok: false, reason: "XCOMP_BV_SET" };
  for (let i = XSAVE_HDR_OFFSET + 16; i < XSAVE_HDR_OFFSET + XSAVE_HDR_BYTES; i++) {
    if (area[i] !== 0) return { ok: false, reason: "HEADER_RESERVED_SET" };
  }
  if ((view.getUint32(XSAVE_MXCSR_OFFSET, true) & ~MXCSR_FEATURE_MASK) !== 0) {
    return { ok: false, reason: "MXCSR_RESERVED_SET" };
  }
  return { ok: true };
}

/** Creates the XCR0/XSAVE state of one vCPU at its power-on values. */
export function createXsaveState(): XsaveState {
  let xcr0 = INITIAL_XCR0;
  let area = initialArea();
  return {
    get xcr0() {
      return xcr0;
    },
    setXcr0(value) {
      if (!isValidXcr0(value)) return false;
      xcr0 = value;
      const view = new DataView(area.buffer);
      view.setBigUint64(XSAVE_HDR_OFFSET, view.getBigUint64(XSAVE_HDR_OFFSET, true) & value, true);
      return true;
    },
    getArea: () => area.slice(),
    setArea(bytes) {
      if (bytes.length > XSAVE_AREA_BYTES) return { ok: false, reason: "TOO_LARGE" };
      const next = new Uint8Array(XSAVE_AREA_BYTES);
      next.set(bytes);
      const verdict = validate(next, xcr0);
      if (verdict.ok) area = next;
      return verdict;
    },
    reset() {
      xcr0 = INITIAL_XCR0;
      area = initialArea();
    },
  };
}
