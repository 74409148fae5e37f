// SPDX-License-Identifier: Apache-2.0
/**
 * The x86-64 register file the GDB gateway serves: one table gives gdb's register numbers, the
 * target description XML (qXfer:features:read) and the bytes of `g`/`p` replies, so the three
 * cannot disagree. The features gdb knows by name come first (`org.gnu.gdb.i386.core` with the x87
 * registers gdb requires, `.sse`, `.segments` with fs_base/gs_base); the system registers KVMI
 * reports (CR0..CR8, EFER, KERNEL_GS_BASE, descriptor tables) follow in a feature of our own, which
 * gdb shows with `info registers cr3` and `info all-registers`.
 *
 * Only what KVMI can change is writable: the 18 registers of `struct kvm_regs`, sent with the event
 * reply (kvmi-abi §3.5). Segment, control and FPU registers are read-only.
 */
import type { Sregs } from "@kvmi/proto";
import type { X86Regs } from "../command-types.js";
import { fromLittleEndian, littleEndian } from "./rsp-packet.js";

/** What one vCPU's registers are read from. */
export interface RegisterSource {
  readonly regs: X86Regs;
  readonly sregs: Sregs | undefined;
  /** MSR_KERNEL_GS_BASE (the event's `shadow_gs`). */
  readonly kernelGsBase: bigint;
  /** The XSAVE region (its first 512 bytes are the FXSAVE legacy area); `undefined` reads the FPU as zeros. */
  readonly xsave: Uint8Array | undefined;
}

type GprName = Exclude<keyof X86Regs, never>;

interface RegisterDef {
  readonly name: string;
  readonly bits: number;
  readonly type: string;
  readonly group?: string;
  readonly feature: Feature;
  /** The `kvm_regs` field this register is, when it is writable. */
  readonly gpr?: GprName;
  read(source: RegisterSource): Uint8Array;
}

type Feature = "core" | "sse" | "segments" | "system";

const FEATURE_NAMES: Readonly<Record<Feature, string>> = {
  core: "org.gnu.gdb.i386.core",
  sse: "org.gnu.gdb.i386.sse",
  segments: "org.gnu.gdb.i386.segments",
  system: "org.kvmi.bridge.x86.system",
};

// FXSAVE legacy area offsets (Intel SDM vol. 1, table 10-2).
const FX_FCW = 0;
const FX_FSW = 2;
const FX_FTW = 4;
const FX_FOP = 6;
const FX_FIP = 8;
const FX_FCS = 12;
const FX_FDP = 16;
const FX_FDS = 20;
const FX_MXCSR = 24;
const FX_ST0 = 32;
const FX_XMM0 = 160;
const FXSAVE_BYTES = 512;

function fx(source: RegisterSource, offset: number, bytes: number): Uint8Array {
  const area = source.xsave;
  if (area === undefined || area.length < FXSAVE_BYTES) return new Uint8Array(bytes);
  return area.slice(offset, offset + bytes);
}

/** `bytes` of the FXSAVE area widened to `width` bytes. */
function fxWide(source: RegisterSource, offset: number, bytes: number, width: number): Uint8Array {
  const out = new Uint8Array(width);
  out.set(fx(source, offset, bytes));
  return out;
}

/** The full x87 tag word from the abridged one: empty (11) where the bit is clear, valid (00) otherwise. */
function fullTagWord(source: RegisterSource): Uint8Array {
  const abridged = fx(source, FX_FTW, 1)[0]!;
  let tag = 0;
  for (let i = 0; i < 8; i++) if ((abridged & (1 << i)) === 0) tag |= 3 << (2 * i);
  return littleEndian(source.xsave === undefined ? 0xffffn : BigInt(tag), 4);
}

const u64 = (value: bigint | undefined): Uint8Array => littleEndian(value ?? 0n, 8);
const u32 = (value: bigint | number | undefined): Uint8Array => littleEndian(BigInt(value ?? 0) & 0xffffffffn, 4);

function gpr(name: string, field: GprName, type = "int64"): RegisterDef {
  return { name, bits: 64, type, feature: "core", gpr: field, read: (s) => u64(s.regs[field] as bigint) };
}

function selector(name: "cs" | "ss" | "ds" | "es" | "fs" | "gs"): RegisterDef {
  return { name, bits: 32, type: "int32", feature: "core", read: (s) => u32(s.sregs?.[name]?.selector) };
}

function system(name: string, read: (s: RegisterSource) => bigint | undefined): RegisterDef {
  return { name, bits: 64, type: "int64", feature: "system", read: (s) => u64(read(s)) };
}

/** gdb's register numbers are the indexes of this table. */
export const X86_64_REGISTERS: readonly RegisterDef[] = [
  gpr("rax", "rax"),
  gpr("rbx", "rbx"),
  gpr("rcx", "rcx"),
  gpr("rdx", "rdx"),
  gpr("rsi", "rsi"),
  gpr("rdi", "rdi"),
  gpr("rbp", "rbp", "data_ptr"),
  gpr("rsp", "rsp", "data_ptr"),
  ...(["r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"] as const).map((r) => gpr(r, r)),
  gpr("rip", "rip", "code_ptr"),
  { name: "eflags", bits: 32, type: "i386_eflags", feature: "core", gpr: "rflags", read: (s) => u32(s.regs.rflags) },
  ...(["cs", "ss", "ds", "es", "fs", "gs"] as const).map(selector),
  ...Array.from({ length: 8 }, (_, i): RegisterDef => ({
    name: `st${i}`, bits: 80, type: "i387_ext", feature: "core", read: (s) => fx(s, FX_ST0 + 16 * i, 10),
  })),
  { name: "fctrl", bits: 32, type: "int", group: "float", feature: "core", read: (s) => fxWide(s, FX_FCW, 2, 4) },
  { name: "fstat", bits: 32, type: "int", group: "float", feature: "core", read: (s) => fxWide(s, FX_FSW, 2, 4) },
  { name: "ftag", bits: 32, type: "int", group: "float", feature: "core", read: fullTagWord },
  { name: "fiseg", bits: 32, type: "int", group: "float", feature: "core", read: (s) => fxWide(s, FX_FCS, 2, 4) },
  { name: "fioff", bits: 32, type: "int", group: "float", feature: "core", read: (s) => fx(s, FX_FIP, 4) },
  { name: "foseg", bits: 32, type: "int", group: "float", feature: "core", read: (s) => fxWide(s, FX_FDS, 2, 4) },
  { name: "fooff", bits: 32, type: "int", group: "float", feature: "core", read: (s) => fx(s, FX_FDP, 4) },
  { name: "fop", bits: 32, type: "int", group: "float", feature: "core", read: (s) => fxWide(s, FX_FOP, 2, 4) },
  ...Array.from({ length: 16 }, (_, i): RegisterDef => ({
    name: `xmm${i}`, bits: 128, type: "vec128", feature: "sse", read: (s) => fx(s, FX_XMM0 + 16 * i, 16),
  })),
  { name: "mxcsr", bits: 32, type: "i386_mxcsr", group: "vector", feature: "sse", read: (s) => fx(s, FX_MXCSR, 4) },
  { name: "fs_base", bits: 64, type: "int64", feature: "segments", read: (s) => u64(s.sregs?.fs?.base) },
  { name: "gs_base", bits: 64, type: "int64", feature: "segments", read: (s) => u64(s.sregs?.gs?.base) },
  system("k_gs_base", (s) => s.kernelGsBase),
  system("cr0", (s) => s.sregs?.cr0),
  system("cr2", (s) => s.sregs?.cr2),
  system("cr3", (s) => s.sregs?.cr3),
  system("cr4", (s) => s.sregs?.cr4),
  system("cr8", (s) => s.sregs?.cr8),
  system("efer", (s) => s.sregs?.efer),
  system("gdtr_base", (s) => s.sregs?.gdt?.base),
  system("idtr_base", (s) => s.sregs?.idt?.base),
  system("tr_base", (s) => s.sregs?.tr?.base),
  system("apic_base", (s) => s.sregs?.apicBase),
];

/** The number of `rip` (gdb's PC). */
export const RIP_REGNUM = X86_64_REGISTERS.findIndex((r) => r.name === "rip");

/** The bytes of register `regnum` (little-endian), or `undefined` for an unknown number. */
export function readRegister(regnum: number, source: RegisterSource): Uint8Array | undefined {
  return X86_64_REGISTERS[regnum]?.read(source);
}

/** Every register in table order: the payload of a `g` reply. */
export function readAllRegisters(source: RegisterSource): Uint8Array {
  const parts = X86_64_REGISTERS.map((r) => r.read(source));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

const GPR_NAMES = [
  "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
] as const satisfies ReadonlyArray<keyof X86Regs>;

/** The 18 fields of `struct kvm_regs` alone (a proto `Regs` also carries `$typeName`). */
export function plainRegs(regs: X86Regs): X86Regs {
  return Object.fromEntries(GPR_NAMES.map((name) => [name, regs[name]])) as unknown as X86Regs;
}

/** Thrown for a write KVMI cannot make (a segment, control or FPU register). */
export class ReadOnlyRegisterError extends Error {
  override readonly name = "ReadOnlyRegisterError";
}

/**
 * Applies a `P` write to `regs`; returns the new register set.
 * @throws ReadOnlyRegisterError for a register outside `struct kvm_regs`; RangeError for a bad size or number.
 */
export function writeRegister(regs: X86Regs, regnum: number, value: Uint8Array): X86Regs {
  const def = X86_64_REGISTERS[regnum];
  if (def === undefined) throw new RangeError(`no register ${regnum}`);
  if (value.length !== def.bits / 8) throw new RangeError(`register ${def.name} takes ${def.bits / 8} bytes, got ${value.length}`);
  if (def.gpr === undefined) throw new ReadOnlyRegisterError(`${def.name} is read-only through KVMI (only the general purpose registers, rip and eflags can be set)`);
  // eflags is 32 bits in gdb's view; the upper half of RFLAGS is reserved (zero).
  return { ...plainRegs(regs), [def.gpr]: fromLittleEndian(value) };
}

/**
 * Applies a `G` write: the general purpose registers take the new values; every other register
 * must be sent unchanged.
 * @throws ReadOnlyRegisterError when a read-only register differs; RangeError for a short payload.
 */
export function writeAllRegisters(source: RegisterSource, data: Uint8Array): X86Regs {
  let regs = plainRegs(source.regs);
  let offset = 0;
  X86_64_REGISTERS.forEach((def, regnum) => {
    const size = def.bits / 8;
    if (offset + size > data.length) throw new RangeError(`G packet too short for ${def.name}`);
    const value = data.subarray(offset, offset + size);
    offset += size;
    if (def.gpr !== undefined) regs = writeRegister(regs, regnum, value);
    else if (!Buffer.from(value).equals(Buffer.from(def.read(source)))) {
      throw new ReadOnlyRegisterError(`${def.name} is read-only through KVMI`);
    }
  });
  return regs;
}

const EFLAGS_FIELDS = [
  ["CF", 0], ["", 1], ["PF", 2], ["AF", 4], ["ZF", 6], ["SF", 7], ["TF", 8], ["IF", 9], ["DF", 10], ["OF", 11],
  ["NT", 14], ["RF", 16], ["VM", 17], ["AC", 18], ["VIF", 19], ["VIP", 20], ["ID", 21],
] as const;
const MXCSR_FIELDS = ["IE", "DE", "ZE", "OE", "UE", "PE", "DAZ", "IM", "DM", "ZM", "OM", "UM", "PM", "FZ"];

function typeDefinitions(feature: Feature): string {
  if (feature === "core") {
    const fields = EFLAGS_FIELDS.map(([name, bit]) => `<field name="${name}" start="${bit}" end="${bit}"/>`).join("");
    return `<flags id="i386_eflags" size="4">${fields}</flags>`;
  }
  if (feature === "sse") {
    const vectors = [
      ["v4f", "ieee_single", 4], ["v2d", "ieee_double", 2],
      ["v16i8", "int8", 16], ["v8i16", "int16", 8], ["v4i32", "int32", 4], ["v2i64", "int64", 2],
    ] as const;
    // Types every gdb with XML support knows (bfloat16 and half need gdb 12).
    const members = [["v4_float", "v4f"], ["v2_double", "v2d"], ["v16_int8", "v16i8"],
      ["v8_int16", "v8i16"], ["v4_int32", "v4i32"], ["v2_int64", "v2i64"], ["uint128", "uint128"]];
    return (
      vectors.map(([id, type, count]) => `<vector id="${id}" type="${type}" count="${count}"/>`).join("") +
      `<union id="vec128">${members.map(([name, type]) => `<field name="${name}" type="${type}"/>`).join("")}</union>` +
      `<flags id="i386_mxcsr" size="4">${MXCSR_FIELDS.map((n, i) => `<field name="${n}" start="${i}" end="${i}"/>`).join("")}</flags>`
    );
  }
  return "";
}

/** The target description (`target.xml`): architecture i386:x86-64 and the register table above. */
export function targetXml(): string {
  const features = (Object.keys(FEATURE_NAMES) as Feature[]).map((feature) => {
    const regs = X86_64_REGISTERS.map((r, regnum) => ({ r, regnum }))
      .filter(({ r }) => r.feature === feature)
      .map(({ r, regnum }) => `<reg name="${r.name}" bitsize="${r.bits}" type="${r.type}" regnum="${regnum}"${r.group ? ` group="${r.group}"` : ""}/>`)
      .join("");
    return `<feature name="${FEATURE_NAMES[feature]}">${typeDefinitions(feature)}${regs}</feature>`;
  });
  return `<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0"><architecture>i386:x86-64</architecture>${features.join("")}</target>`;
}
