// SPDX-License-Identifier: Apache-2.0
/**
 * GET_CPUID for a VM behind kvmi-qemu, as far as QEMU reports its CPUID table (docs/qemu-backend.md
 * "CPUID"). Neither the gdbstub nor QMP executes CPUID for us, but QMP's `qom-get` on a vCPU object
 * gives the CPU model QEMU builds its table from: `vendor`, `family`/`model`/`stepping`, `model-id`,
 * `level`/`xlevel` and `feature-words` (the feature registers, by leaf). The leaves fully derived
 * from those are answered; every other leaf answers ENOENT, as KVM does for a leaf its table lacks,
 * rather than a guess.
 *
 * Leaf 1 also has bits QEMU computes when the guest executes CPUID: the APIC id, the logical
 * processor count with HTT, the CLFLUSH line size, and OSXSAVE (mirrors CR4.OSXSAVE); they are
 * computed the same way here.
 */
import type { CpuidLeaf } from "../emulator/kernel/guest-port.js";
import type { QmpClient } from "./qmp-client.js";

/** The CPU model of one vCPU, as QOM describes it. */
export interface QemuCpuModel {
  readonly vendor: string;
  readonly family: number;
  readonly model: number;
  readonly stepping: number;
  readonly modelId: string;
  readonly level: number;
  readonly xlevel: number;
  readonly apicId: number;
  /** Logical processors in this vCPU's package (cores × threads). */
  readonly logicalPerPackage: number;
  /** `feature-words`: register value by `fn:index:REG` (index 0 when the leaf has no subleaves). */
  readonly features: ReadonlyMap<string, number>;
}

/** The leaves of one vCPU, by `fn:index`. */
export type CpuidTable = ReadonlyMap<string, CpuidLeaf>;

const CPUID_1_EDX_HTT = 1 << 28;
const CPUID_1_ECX_OSXSAVE = 1 << 27;
const CR4_OSXSAVE = 1n << 18n;
/** CLFLUSH line size in 8-byte units (64 bytes), what QEMU reports (target/i386/cpu.c). */
const CLFLUSH_8_BYTES = 8;

const key = (fn: number, index: number) => `${fn}:${index}`;

/** Four bytes of ASCII as a little-endian register value (vendor and brand strings). */
function word(text: string, at: number): number {
  let value = 0;
  for (let i = 3; i >= 0; i--) value = (value << 8) | (text.charCodeAt(at + i) || 0);
  return value >>> 0;
}

/** Leaf 1's EAX from family, model and stepping (extended fields as Intel's SDM and QEMU encode them). */
export function cpuidVersion(family: number, model: number, stepping: number): number {
  const familyBits = family > 0x0f ? 0xf00 | ((family - 0x0f) << 20) : family << 8;
  return (familyBits | ((model & 0x0f) << 4) | ((model >> 4) << 16) | (stepping & 0x0f)) >>> 0;
}

/** The leaves derived from a CPU model, without the bits that depend on the vCPU's state. */
export function cpuidTable(m: QemuCpuModel): CpuidTable {
  const feature = (fn: number, index: number, reg: string) => m.features.get(`${fn}:${index}:${reg}`) ?? 0;
  const version = cpuidVersion(m.family, m.model, m.stepping);
  const vendor = { ebx: word(m.vendor, 0), edx: word(m.vendor, 4), ecx: word(m.vendor, 8) };
  const table = new Map<string, CpuidLeaf>();
  table.set(key(0, 0), { eax: m.level, ...vendor });
  if (m.level >= 1) {
    const htt = m.logicalPerPackage > 1;
    table.set(key(1, 0), {
      eax: version,
      ebx: ((m.apicId << 24) | ((htt ? m.logicalPerPackage : 0) << 16) | (CLFLUSH_8_BYTES << 8)) >>> 0,
      ecx: feature(1, 0, "ECX"),
      edx: (feature(1, 0, "EDX") | (htt ? CPUID_1_EDX_HTT : 0)) >>> 0,
    });
  }
  const extended = 0x80000000;
  if (m.xlevel >= extended) table.set(key(extended, 0), { eax: m.xlevel, ...vendor });
  if (m.xlevel >= extended + 1) table.set(key(extended + 1, 0), { eax: version, ebx: 0, ecx: feature(extended + 1, 0, "ECX"), edx: feature(extended + 1, 0, "EDX") });
  const brand = m.modelId.padEnd(48, "\0").slice(0, 48);
  for (let i = 0; i < 3 && m.xlevel >= extended + 2 + i; i++) {
    const at = i * 16;
    table.set(key(extended + 2 + i, 0), { eax: word(brand, at), ebx: word(brand, at + 4), ecx: word(brand, at + 8), edx: word(brand, at + 12) });
  }
  return table;
}

/**
 * One leaf for a vCPU whose CR4 is `cr4` (leaf 1's OSXSAVE follows it, as on hardware). No leaf
 * answered here has subleaves, so the index (ECX) does not matter, as for CPUID itself.
 */
export function cpuidLeaf(table: CpuidTable, fn: number, cr4: bigint): CpuidLeaf | undefined {
  const leaf = table.get(key(fn >>> 0, 0));
  if (leaf === undefined || fn !== 1 || (cr4 & CR4_OSXSAVE) === 0n) return leaf;
  return { ...leaf, ecx: (leaf.ecx | CPUID_1_ECX_OSXSAVE) >>> 0 };
}

/** Reads every vCPU's CPU model over QMP (by cpu-index) and builds its table. */
export async function readCpuidTables(qmp: QmpClient): Promise<CpuidTable[]> {
  const cpus = (await qmp.execute<Array<{ "cpu-index": number; "qom-path": string; props?: { "socket-id"?: number } }>>("query-cpus-fast"))
    .sort((a, b) => a["cpu-index"] - b["cpu-index"]);
  const get = <T>(path: string, property: string) => qmp.execute<T>("qom-get", { path, property });
  return Promise.all(
    cpus.map(async (cpu) => {
      const path = cpu["qom-path"];
      const [vendor, family, model, stepping, modelId, level, xlevel, apicId, words] = await Promise.all([
        get<string>(path, "vendor"), get<number>(path, "family"), get<number>(path, "model"), get<number>(path, "stepping"),
        get<string>(path, "model-id"), get<number>(path, "level"), get<number>(path, "xlevel"), get<number>(path, "apic-id"),
        get<Array<{ "cpuid-input-eax": number; "cpuid-input-ecx"?: number; "cpuid-register": string; features: number }>>(path, "feature-words"),
      ]);
      const features = new Map(words.map((w) => [`${w["cpuid-input-eax"]}:${w["cpuid-input-ecx"] ?? 0}:${w["cpuid-register"]}`, w.features >>> 0]));
      const socket = cpu.props?.["socket-id"];
      const logicalPerPackage = cpus.filter((c) => c.props?.["socket-id"] === socket).length;
      return cpuidTable({ vendor, family, model, stepping, modelId, level, xlevel, apicId, logicalPerPackage, features });
    }),
  );
}
