// SPDX-License-Identifier: Apache-2.0
/**
 * The guest-visible CPUID table (what QEMU would set with KVM_SET_CPUID2): a Skylake-class Intel CPU
 * under KVM, with XSAVE/AVX so the XSETBV and XSAVE scenarios of the v9 selftest (kvmi-abi §8 items 22
 * and 24) have something to work with. A few bits are computed on every lookup because KVM recomputes
 * them too: CPUID.1:ECX.OSXSAVE mirrors CR4.OSXSAVE and CPUID.(0xd,0):EBX is the XSAVE size for the
 * current XCR0 (`kvm_update_cpuid`).
 *
 * Lookups follow `kvm_find_cpuid_entry`: `index` only matters for leaves whose sub-leaf is significant
 * (`KVM_CPUID_FLAG_SIGNIFCANT_INDEX`); a missing leaf is `undefined` (KVMI_VCPU_GET_CPUID → `-KVM_ENOENT`).
 */
import { X86_CR4_OSXSAVE, XFEATURE_MASK_YMM } from "./x86.js";

/** One CPUID result (`kvm_cpuid_entry2` registers; u32 each). */
export interface CpuidEntry {
  readonly eax: number;
  readonly ebx: number;
  readonly ecx: number;
  readonly edx: number;
}

/** A leaf as stored in the table. */
export interface CpuidLeaf {
  readonly function: number;
  readonly index: number;
  readonly entry: CpuidEntry;
}

/** The vCPU's CPUID table. */
export interface CpuidTable {
  /** CPUID(function, index), or `undefined` when the leaf does not exist. */
  get(fn: number, index: number): CpuidEntry | undefined;
  /** All stored leaves (sub-leaf 0 for index-insensitive leaves). */
  leaves(): readonly CpuidLeaf[];
}

/** What the dynamic bits depend on. */
export interface CpuidContext {
  readonly apicId: number;
  readonly vcpuCount: number;
  cr4(): bigint;
  xcr0(): bigint;
}

/** CPUID.1:ECX.XSAVE. */
export const CPUID_1_ECX_XSAVE = 1 << 26;
/** CPUID.1:ECX.OSXSAVE. */
export const CPUID_1_ECX_OSXSAVE = 1 << 27;
/** CPUID.1:ECX.AVX. */
export const CPUID_1_ECX_AVX = 1 << 28;
/** XCR0 bits the CPU supports (CPUID.(0xd,0):EAX): x87, SSE, AVX. */
export const SUPPORTED_XCR0 = 0x7n;

/** Leaves whose sub-leaf index selects a different entry (`kvm_find_cpuid_entry`). */
const SIGNIFICANT_INDEX = new Set([0x4, 0x7, 0xb, 0xd, 0xf, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1d, 0x1e, 0x1f, 0x8000001d]);

const bits = (...positions: number[]): number => positions.reduce((v, p) => (v | (1 << p)) >>> 0, 0);

/** Packs up to 4 ASCII characters into a little-endian u32, as CPUID returns vendor strings. */
function ascii4(text: string): number {
  let v = 0;
  for (let i = 0; i < 4; i++) v |= (text.charCodeAt(i) || 0) << (8 * i);
  return v >>> 0;
}

function brandLeaves(): CpuidLeaf[] {
  const brand = "Intel(R) Xeon(R) CPU (kvmi-bridge emulated)".padEnd(48, "\0").slice(0, 47) + "\0";
  return [0, 1, 2].map((n) => {
    const s = brand.slice(n * 16, n * 16 + 16);
    const entry = { eax: ascii4(s.slice(0, 4)), ebx: ascii4(s.slice(4, 8)), ecx: ascii4(s.slice(8, 12)), edx: ascii4(s.slice(12, 16)) };
    return { function: 0x80000002 + n, index: 0, entry };
  });
}

/** Static leaves; the context-dependent ones are patched in {@link createCpuidTable}. */
function staticLeaves(ctx: CpuidContext): CpuidLeaf[] {
  const leaf = (fn: number, index: number, eax: number, ebx: number, ecx: number, edx: number): CpuidLeaf => ({
    function: fn,
    index,
    entry: { eax: eax >>> 0, ebx: ebx >>> 0, ecx: ecx >>> 0, edx: edx >>> 0 },
  });
  return [
    leaf(0x0, 0, 0xd, ascii4("Genu"), ascii4("ntel"), ascii4("ineI")),
    leaf(
      0x1, 0,
      0x000506e3, // family 6, model 0x5e (Skylake), stepping 3
      (ctx.apicId << 24) | ((ctx.vcpuCount & 0xff) << 16) | (8 << 8),
      // SSE3 PCLMUL SSSE3 FMA CX16 PCID SSE4.1 SSE4.2 x2APIC MOVBE POPCNT TSC-deadline AES XSAVE AVX F16C RDRAND hypervisor
      bits(0, 1, 9, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 28, 29, 30, 31),
      // FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2 SS
      bits(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 23, 24, 25, 26, 27),
    ),
    // FSGSBASE BMI1 AVX2 SMEP BMI2 ERMS INVPCID SMAP
    leaf(0x7, 0, 0, bits(0, 3, 5, 7, 8, 9, 10, 20), 0, 0),
    leaf(0xd, 0, Number(SUPPORTED_XCR0), 0, 832, 0),
    leaf(0xd, 1, 0x1, 0, 0, 0), // XSAVEOPT only: the area stays in the standard (non-compacted) format
    leaf(0xd, 2, 256, 576, 0, 0), // AVX state: 256 bytes at offset 576
    leaf(0x40000000, 0, 0x40000001, ascii4("KVMK"), ascii4("VMKV"), ascii4("M")),
    leaf(0x40000001, 0, bits(0, 3, 24), 0, 0, 0), // clocksource, clocksource2, stable bit
    leaf(0x80000000, 0, 0x80000008, 0, 0, 0),
    leaf(0x80000001, 0, 0, 0, bits(0, 5, 8), bits(11, 20, 26, 27, 29)), // SYSCALL NX 1G-pages RDTSCP LM
    ...brandLeaves(),
    leaf(0x80000008, 0, 0x3028, 0, 0, 0), // 40 physical / 48 virtual address bits
  ];
}

/** Creates the CPUID table of one vCPU. */
export function createCpuidTable(ctx: CpuidContext): CpuidTable {
  const table = staticLeaves(ctx);
  const dynamic = (fn: number, index: number, e: CpuidEntry): CpuidEntry => {
    if (fn === 0x1) {
      const osxsave = (ctx.cr4() & X86_CR4_OSXSAVE) !== 0n ? CPUID_1_ECX_OSXSAVE : 0;
      return { ...e, ecx: ((e.ecx & ~CPUID_1_ECX_OSXSAVE) | osxsave) >>> 0 };
    }
    if (fn === 0xd && index === 0) {
      return { ...e, ebx: (ctx.xcr0() & XFEATURE_MASK_YMM) !== 0n ? 832 : 576 };
    }
    return e;
  };
  return {
    get(fn, index) {
      const significant = SIGNIFICANT_INDEX.has(fn);
      const hit = table.find((l) => l.function === fn >>> 0 && (!significant || l.index === index >>> 0));
      return hit === undefined ? undefined : dynamic(hit.function, hit.index, hit.entry);
    },
    leaves: () => table.map((l) => ({ ...l, entry: dynamic(l.function, l.index, l.entry) })),
  };
}
