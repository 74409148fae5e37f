// SPDX-License-Identifier: Apache-2.0
/**
 * x86-64 architectural constants used by the guest model. Names follow the Linux kernel headers
 * (`arch/x86/include/asm/msr-index.h`, `uapi/asm/processor-flags.h`, `asm/trapnr.h`) so that grepping a
 * kernel name finds the same constant here (conventions §3).
 *
 * @see Intel SDM vol. 3A §2.5 (control registers), §4.5 (4-level paging), §6.15 (exceptions)
 */

/** CR0 bits (`X86_CR0_*`). */
export const X86_CR0_PE = 1n << 0n;
export const X86_CR0_MP = 1n << 1n;
export const X86_CR0_EM = 1n << 2n;
export const X86_CR0_TS = 1n << 3n;
export const X86_CR0_ET = 1n << 4n;
export const X86_CR0_NE = 1n << 5n;
export const X86_CR0_WP = 1n << 16n;
export const X86_CR0_AM = 1n << 18n;
export const X86_CR0_NW = 1n << 29n;
export const X86_CR0_CD = 1n << 30n;
export const X86_CR0_PG = 1n << 31n;

/** CR4 bits (`X86_CR4_*`). */
export const X86_CR4_VME = 1n << 0n;
export const X86_CR4_PVI = 1n << 1n;
export const X86_CR4_TSD = 1n << 2n;
export const X86_CR4_DE = 1n << 3n;
export const X86_CR4_PSE = 1n << 4n;
export const X86_CR4_PAE = 1n << 5n;
export const X86_CR4_MCE = 1n << 6n;
export const X86_CR4_PGE = 1n << 7n;
export const X86_CR4_PCE = 1n << 8n;
export const X86_CR4_OSFXSR = 1n << 9n;
export const X86_CR4_OSXMMEXCPT = 1n << 10n;
export const X86_CR4_UMIP = 1n << 11n;
export const X86_CR4_FSGSBASE = 1n << 16n;
export const X86_CR4_PCIDE = 1n << 17n;
export const X86_CR4_OSXSAVE = 1n << 18n;
export const X86_CR4_SMEP = 1n << 20n;
export const X86_CR4_SMAP = 1n << 21n;

/** CR4 bits the modelled CPU implements; setting any other bit is a #GP (KVM `kvm_valid_cr4`). */
export const CR4_SUPPORTED_MASK =
  X86_CR4_VME | X86_CR4_PVI | X86_CR4_TSD | X86_CR4_DE | X86_CR4_PSE | X86_CR4_PAE | X86_CR4_MCE |
  X86_CR4_PGE | X86_CR4_PCE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT | X86_CR4_UMIP | X86_CR4_FSGSBASE |
  X86_CR4_PCIDE | X86_CR4_OSXSAVE | X86_CR4_SMEP | X86_CR4_SMAP;

/** EFER bits (`EFER_*`). LMA is set by the CPU, not by software (SDM vol. 3A §9.8.5). */
export const EFER_SCE = 1n << 0n;
export const EFER_LME = 1n << 8n;
export const EFER_LMA = 1n << 10n;
export const EFER_NX = 1n << 11n;
export const EFER_SUPPORTED_MASK = EFER_SCE | EFER_LME | EFER_LMA | EFER_NX;

/** RFLAGS bits (`X86_EFLAGS_*`). Bit 1 is reserved and always reads as 1. */
export const X86_EFLAGS_FIXED = 1n << 1n;
export const X86_EFLAGS_IF = 1n << 9n;
export const X86_EFLAGS_TF = 1n << 8n;

/** MSR indices (`MSR_*`, `arch/x86/include/asm/msr-index.h`). */
export const MSR_IA32_TSC = 0x10;
export const MSR_IA32_APICBASE = 0x1b;
export const MSR_IA32_FEATURE_CONTROL = 0x3a;
export const MSR_MTRRcap = 0xfe;
export const MSR_MISC_FEATURES_ENABLES = 0x140;
export const MSR_IA32_SYSENTER_CS = 0x174;
export const MSR_IA32_SYSENTER_ESP = 0x175;
export const MSR_IA32_SYSENTER_EIP = 0x176;
export const MSR_IA32_MISC_ENABLE = 0x1a0;
export const MSR_IA32_CR_PAT = 0x277;
export const MSR_MTRRdefType = 0x2ff;
export const MSR_EFER = 0xc0000080;
export const MSR_STAR = 0xc0000081;
export const MSR_LSTAR = 0xc0000082;
export const MSR_CSTAR = 0xc0000083;
export const MSR_SYSCALL_MASK = 0xc0000084;
export const MSR_FS_BASE = 0xc0000100;
export const MSR_GS_BASE = 0xc0000101;
export const MSR_KERNEL_GS_BASE = 0xc0000102;
export const MSR_TSC_AUX = 0xc0000103;

/** APIC base MSR bits: BSP flag and global enable (SDM vol. 3A §10.4.4). */
export const MSR_IA32_APICBASE_BSP = 1n << 8n;
export const MSR_IA32_APICBASE_ENABLE = 1n << 11n;
export const APIC_DEFAULT_PHYS_BASE = 0xfee00000n;

/** XCR0 feature bits (`XFEATURE_MASK_*`). */
export const XFEATURE_MASK_FP = 1n << 0n;
export const XFEATURE_MASK_SSE = 1n << 1n;
export const XFEATURE_MASK_YMM = 1n << 2n;

/** Exception vectors (`X86_TRAP_*`, `asm/trapnr.h`). */
export const X86_TRAP_DE = 0;
export const X86_TRAP_DB = 1;
export const X86_TRAP_BP = 3;
export const X86_TRAP_UD = 6;
export const X86_TRAP_DF = 8;
export const X86_TRAP_TS = 10;
export const X86_TRAP_NP = 11;
export const X86_TRAP_SS = 12;
export const X86_TRAP_GP = 13;
export const X86_TRAP_PF = 14;
export const X86_TRAP_AC = 17;
export const X86_TRAP_CP = 21;

/** #PF error-code bits (`X86_PF_*`, `asm/trap_pf.h`). */
export const X86_PF_PROT = 1 << 0;
export const X86_PF_WRITE = 1 << 1;
export const X86_PF_USER = 1 << 2;
export const X86_PF_INSTR = 1 << 4;

/**
 * Whether an exception vector pushes an error code (SDM vol. 3A table 6-1). KVM uses the same list
 * (`exception_type`/`x86_exception_has_error_code`) when it injects an exception on the tool's behalf.
 */
export function exceptionHasErrorCode(nr: number): boolean {
  return (
    nr === X86_TRAP_DF || nr === X86_TRAP_TS || nr === X86_TRAP_NP || nr === X86_TRAP_SS ||
    nr === X86_TRAP_GP || nr === X86_TRAP_PF || nr === X86_TRAP_AC || nr === X86_TRAP_CP
  );
}

/** `KVM_HC_XEN_HVM_OP` and its `KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT` sub-function (kvmi-abi §5, HYPERCALL). */
export const KVM_HC_XEN_HVM_OP = 34n;
export const KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT = 24n;
/** `-KVM_ENOSYS` as the guest sees it in RAX (u64). */
export const KVM_ENOSYS_U64 = (1n << 64n) - 1000n;

/** Mask for a u64 value. */
export const U64_MASK = (1n << 64n) - 1n;

/**
 * Whether a 64-bit linear address is canonical for 48-bit (4-level) paging: bits 63..47 all equal.
 * Non-canonical addresses never translate (KVMI_VCPU_TRANSLATE_GVA answers ~0, kvmi-abi §4 id 25).
 */
export function isCanonical(gva: bigint): boolean {
  const upper = (gva & U64_MASK) >> 47n;
  return upper === 0n || upper === 0x1ffffn;
}
