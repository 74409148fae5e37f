// SPDX-License-Identifier: Apache-2.0
/**
 * The vCPU's model-specific registers. Only the MSRs listed here exist: reading any other index fails,
 * which the kernel side reports as `-KVM_EINVAL` from KVMI_VCPU_GET_REGISTERS (kvmi-abi §4 id 11) and a
 * guest WRMSR turns into #GP. MSRs that KVM keeps in `kvm_sregs` (EFER, APIC base, FS/GS base) are
 * views of those fields, so the two can never disagree.
 */
import {
  EFER_LMA, EFER_LME, EFER_SUPPORTED_MASK, MSR_CSTAR, MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_IA32_APICBASE,
  MSR_IA32_CR_PAT, MSR_IA32_FEATURE_CONTROL, MSR_IA32_MISC_ENABLE, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_EIP,
  MSR_IA32_SYSENTER_ESP, MSR_IA32_TSC, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_MISC_FEATURES_ENABLES, MSR_MTRRcap,
  MSR_MTRRdefType, MSR_STAR, MSR_SYSCALL_MASK, MSR_TSC_AUX, U64_MASK, X86_CR0_PG, isCanonical,
} from "./x86.js";

/** The register fields an MSR may alias. */
export interface MsrBacking {
  readonly sregs: {
    efer: bigint;
    apic_base: bigint;
    cr0: bigint;
    readonly fs: { base: bigint };
    readonly gs: { base: bigint };
  };
  tsc: bigint;
}

/** MSR storage with the set of MSRs that exist on the modelled CPU. */
export interface MsrFile {
  /** Whether MSR `index` exists. */
  has(index: number): boolean;
  /** Current value, or `undefined` if the MSR does not exist. */
  read(index: number): bigint | undefined;
  /**
   * WRMSR with architectural checks (reserved bits, canonical addresses, read-only MSRs).
   * @returns false where the CPU would raise #GP; the value is then unchanged.
   */
  write(index: number, value: bigint): boolean;
  /** Indices of all existing MSRs, ascending. */
  indices(): readonly number[];
  /** Restores power-on values. @internal */
  reset(): void;
}

/** Default PAT: WB, WT, UC-, UC repeated (SDM vol. 3A §11.12.4). */
const PAT_DEFAULT = 0x0007040600070406n;

/** Power-on values of the MSRs stored in the file itself (the aliased ones live in `sregs`/`tsc`). */
const STORED_DEFAULTS: ReadonlyArray<readonly [number, bigint]> = [
  [MSR_IA32_FEATURE_CONTROL, 0x5n], // locked, VMX outside SMX (what OVMF/SeaBIOS leave behind)
  [MSR_MTRRcap, 0x508n], // 8 variable ranges, fixed ranges, WC
  [MSR_MISC_FEATURES_ENABLES, 0n],
  [MSR_IA32_SYSENTER_CS, 0n],
  [MSR_IA32_SYSENTER_ESP, 0n],
  [MSR_IA32_SYSENTER_EIP, 0n],
  [MSR_IA32_MISC_ENABLE, 0x1n], // fast strings
  [MSR_IA32_CR_PAT, PAT_DEFAULT],
  [MSR_MTRRdefType, 0xc00n], // MTRRs and fixed ranges enabled, default UC
  [MSR_STAR, 0n],
  [MSR_LSTAR, 0n],
  [MSR_CSTAR, 0n],
  [MSR_SYSCALL_MASK, 0n],
  [MSR_KERNEL_GS_BASE, 0n],
  [MSR_TSC_AUX, 0n],
];

const ALIASED = [MSR_IA32_TSC, MSR_IA32_APICBASE, MSR_EFER, MSR_FS_BASE, MSR_GS_BASE];
const READ_ONLY = new Set([MSR_MTRRcap]);
const CANONICAL = new Set([
  MSR_LSTAR, MSR_CSTAR, MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP,
]);
/** Valid PAT memory types per byte: UC, WC, WT, WP, WB, UC-. */
const PAT_TYPES = new Set([0, 1, 4, 5, 6, 7]);

/** Creates the MSR file of one vCPU; `backing` supplies the aliased registers. */
export function createMsrFile(backing: MsrBacking): MsrFile {
  const stored = new Map<number, bigint>(STORED_DEFAULTS);
  const all = [...ALIASED, ...stored.keys()].sort((a, b) => a - b);

  const read = (index: number): bigint | undefined => {
    switch (index) {
      case MSR_IA32_TSC:
        return backing.tsc;
      case MSR_IA32_APICBASE:
        return backing.sregs.apic_base;
      case MSR_EFER:
        return backing.sregs.efer;
      case MSR_FS_BASE:
        return backing.sregs.fs.base;
      case MSR_GS_BASE:
        return backing.sregs.gs.base;
      default:
        return stored.get(index);
    }
  };

  const valid = (index: number, value: bigint): boolean => {
    if (value < 0n || value > U64_MASK || READ_ONLY.has(index)) return false;
    if (CANONICAL.has(index)) return isCanonical(value);
    switch (index) {
      case MSR_EFER: {
        if ((value & ~EFER_SUPPORTED_MASK) !== 0n) return false;
        // Toggling LME while paging is on is a #GP (SDM vol. 3A §9.8.5); KVM `set_efer` agrees.
        const paging = (backing.sregs.cr0 & X86_CR0_PG) !== 0n;
        return !(paging && ((value ^ backing.sregs.efer) & EFER_LME) !== 0n);
      }
      case MSR_IA32_CR_PAT:
        for (let i = 0n; i < 64n; i += 8n) if (!PAT_TYPES.has(Number((value >> i) & 0xffn))) return false;
        return true;
      case MSR_MISC_FEATURES_ENABLES:
        return (value & ~0x3n) === 0n; // CPUID faulting, ring-3 MWAIT
      case MSR_MTRRdefType:
        return (value & ~0xcffn) === 0n;
      case MSR_IA32_SYSENTER_CS:
      case MSR_TSC_AUX:
        return value <= 0xffffffffn;
      default:
        return true;
    }
  };

  return {
    has: (index) => all.includes(index),
    read,
    write(index, value) {
      if (!all.includes(index) || !valid(index, value)) return false;
      switch (index) {
        case MSR_IA32_TSC:
          backing.tsc = value;
          break;
        case MSR_IA32_APICBASE:
          backing.sregs.apic_base = value;
          break;
        case MSR_EFER:
          // LMA is owned by the CPU: it follows CR0.PG && EFER.LME, whatever software writes.
          backing.sregs.efer = (value & ~EFER_LMA) | (backing.sregs.efer & EFER_LMA);
          break;
        case MSR_FS_BASE:
          backing.sregs.fs.base = value;
          break;
        case MSR_GS_BASE:
          backing.sregs.gs.base = value;
          break;
        default:
          stored.set(index, value);
      }
      return true;
    },
    indices: () => all,
    reset() {
      stored.clear();
      for (const [k, v] of STORED_DEFAULTS) stored.set(k, v);
    },
  };
}

/** The `msrs` block of `kvmi_event_arch` (kvmi-abi §6); `shadow_gs` is MSR_KERNEL_GS_BASE. */
export interface KvmiEventArchMsrs {
  readonly sysenter_cs: bigint;
  readonly sysenter_esp: bigint;
  readonly sysenter_eip: bigint;
  readonly efer: bigint;
  readonly star: bigint;
  readonly lstar: bigint;
  readonly cstar: bigint;
  readonly pat: bigint;
  readonly shadow_gs: bigint;
}

/** Collects the MSRs every vCPU event carries, in `kvmi_event_arch` field names. */
export function eventArchMsrs(msrs: MsrFile): KvmiEventArchMsrs {
  const r = (index: number) => msrs.read(index) ?? 0n;
  return {
    sysenter_cs: r(MSR_IA32_SYSENTER_CS),
    sysenter_esp: r(MSR_IA32_SYSENTER_ESP),
    sysenter_eip: r(MSR_IA32_SYSENTER_EIP),
    efer: r(MSR_EFER),
    star: r(MSR_STAR),
    lstar: r(MSR_LSTAR),
    cstar: r(MSR_CSTAR),
    pat: r(MSR_IA32_CR_PAT),
    shadow_gs: r(MSR_KERNEL_GS_BASE),
  };
}
