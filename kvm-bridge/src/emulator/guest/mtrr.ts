// SPDX-License-Identifier: Apache-2.0
/**
 * Guest MTRR memory types, as KVMI_VCPU_GET_MTRR_TYPE reports them (kvmi-abi §4 id 21,
 * `kvm_mtrr_get_guest_memory_type`). The model is what SeaBIOS programs on a QEMU guest: fixed ranges
 * make the legacy VGA window UC and the option-ROM/BIOS shadow WP, a variable range covers RAM as WB,
 * and the default type (MSR_MTRRdefType = 0xc00) is UC, so holes and MMIO are UC.
 */
import { PAGE_SHIFT, type GuestMemory } from "./memory.js";

/** MTRR memory types (`MTRR_TYPE_*`, `arch/x86/include/uapi/asm/mtrr.h`). */
export const MTRR_TYPE_UNCACHABLE = 0;
export const MTRR_TYPE_WRCOMB = 1;
export const MTRR_TYPE_WRTHROUGH = 4;
export const MTRR_TYPE_WRPROT = 5;
export const MTRR_TYPE_WRBACK = 6;

/** Memory type of the page containing `gpa`. */
export function mtrrTypeForGpa(memory: GuestMemory, gpa: bigint): number {
  if (gpa < 0xa0000n && gpa >= 0n) return MTRR_TYPE_WRBACK;
  if (gpa >= 0xa0000n && gpa < 0xc0000n) return MTRR_TYPE_UNCACHABLE;
  if (gpa >= 0xc0000n && gpa < 0x100000n) return MTRR_TYPE_WRPROT;
  return memory.isMapped(gpa >> BigInt(PAGE_SHIFT)) ? MTRR_TYPE_WRBACK : MTRR_TYPE_UNCACHABLE;
}
