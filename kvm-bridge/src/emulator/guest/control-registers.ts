// SPDX-License-Identifier: Apache-2.0
/**
 * Control-register semantics of MOV to CRn: which values the CPU accepts and what else changes with
 * them (EFER.LMA follows CR0.PG). Kept apart from the instruction flow so the rules can be read, and
 * cited, in one place.
 *
 * @see Intel SDM vol. 3A §2.5 "Control Registers", §9.8.5 (IA-32e mode activation); KVM `kvm_set_cr0/3/4/8`
 */
import type { KvmSregs, VcpuState } from "./vcpu-state.js";
import {
  CR4_SUPPORTED_MASK, EFER_LMA, EFER_LME, X86_CR0_CD, X86_CR0_NW, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE, X86_CR4_PCIDE,
} from "./x86.js";

/** Current value of CR0, CR2, CR3, CR4 or (any other number) CR8. */
export function readCr(s: KvmSregs, cr: number): bigint {
  return cr === 0 ? s.cr0 : cr === 2 ? s.cr2 : cr === 3 ? s.cr3 : cr === 4 ? s.cr4 : s.cr8;
}

/**
 * Loads a control register with the CPU's validity checks.
 * @returns false where the CPU raises #GP; nothing changes then.
 */
export function loadCr(state: VcpuState, cr: number, v: bigint): boolean {
  const s = state.sregs;
  const longMode = (s.efer & EFER_LMA) !== 0n;
  switch (cr) {
    case 0: {
      const pg = (v & X86_CR0_PG) !== 0n;
      if (v >> 32n !== 0n || (pg && (v & X86_CR0_PE) === 0n)) return false;
      if ((v & X86_CR0_NW) !== 0n && (v & X86_CR0_CD) === 0n) return false;
      if (pg && (s.efer & EFER_LME) !== 0n && (s.cr4 & X86_CR4_PAE) === 0n) return false;
      if (!pg && longMode && s.cs.l !== 0) return false; // leaving long mode from 64-bit code
      s.cr0 = v;
      s.efer = pg && (s.efer & EFER_LME) !== 0n ? s.efer | EFER_LMA : s.efer & ~EFER_LMA;
      return true;
    }
    case 2:
      s.cr2 = v;
      return true;
    case 3: {
      const noFlush = (v >> 63n) & 1n;
      if (((v >> 52n) & 0x7ffn) !== 0n || (noFlush !== 0n && (s.cr4 & X86_CR4_PCIDE) === 0n)) return false;
      s.cr3 = v & ~(1n << 63n);
      return true;
    }
    case 4:
      if ((v & ~CR4_SUPPORTED_MASK) !== 0n || (longMode && (v & X86_CR4_PAE) === 0n)) return false;
      s.cr4 = v;
      return true;
    default:
      if (v > 15n) return false;
      s.cr8 = v;
      return true;
  }
}
