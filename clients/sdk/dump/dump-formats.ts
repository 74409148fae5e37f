// SPDX-License-Identifier: Apache-2.0
/**
 * The byte layouts of the dump formats: ELF64 core files (the System V gABI `Elf64_Ehdr`,
 * `Elf64_Phdr` and `Elf64_Nhdr`; Linux's x86-64 `struct elf_prstatus` for NT_PRSTATUS, 336 bytes)
 * as QEMU's `dump-guest-memory` writes them, and LiME's range header (`lime_mem_range_header`,
 * 32 bytes, version 1). Every field is written at an explicit offset, little-endian.
 *
 * @see ../../README.md ("Memory dumps")
 */
import type { X86Regs } from "../command-types.js";
import type { Sregs } from "@kvmi/proto";

export const ELF64_EHDR_BYTES = 64;
export const ELF64_PHDR_BYTES = 56;
const ET_CORE = 4;
const EM_X86_64 = 62;
export const PT_LOAD = 1;
export const PT_NOTE = 4;
const PF_X = 1;
const PF_W = 2;
const PF_R = 4;
/** Readers check e_phnum against this; more program headers would need the PN_XNUM extension. */
export const ELF_MAX_PHNUM = 0xfffe;

/** `struct elf_prstatus` on x86-64 (`include/uapi/linux/elfcore.h`, `user_regs_struct` as `pr_reg`). */
export const PRSTATUS_BYTES = 336;
const PRSTATUS_PID = 32;
const PRSTATUS_REG = 112;
export const NT_PRSTATUS = 1;

/** LiME: `"EMiL"` as a little-endian u32, and the header of each range. */
export const LIME_MAGIC = 0x4c694d45;
export const LIME_VERSION = 1;
export const LIME_HEADER_BYTES = 32;

/** The ELF header of a core file whose program header table is at `phoff`. */
export function elfHeader(phoff: bigint, phnum: number): Uint8Array {
  if (phnum > ELF_MAX_PHNUM) throw new RangeError(`${phnum} program headers do not fit an ELF header`);
  const b = new Uint8Array(ELF64_EHDR_BYTES);
  const v = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2 /* ELFCLASS64 */, 1 /* ELFDATA2LSB */, 1 /* EV_CURRENT */, 0 /* ELFOSABI_NONE */]);
  v.setUint16(16, ET_CORE, true); // e_type
  v.setUint16(18, EM_X86_64, true); // e_machine
  v.setUint32(20, 1, true); // e_version
  v.setBigUint64(32, phoff, true); // e_phoff
  v.setUint16(52, ELF64_EHDR_BYTES, true); // e_ehsize
  v.setUint16(54, ELF64_PHDR_BYTES, true); // e_phentsize
  v.setUint16(56, phnum, true); // e_phnum
  return b;
}

/** One program header. */
export interface ProgramHeader {
  readonly type: number;
  readonly offset: bigint;
  readonly vaddr: bigint;
  readonly paddr: bigint;
  readonly filesz: bigint;
  readonly memsz: bigint;
}

/** `Elf64_Phdr`; PT_LOAD segments are readable, writable and executable (guest RAM is all three). */
export function programHeader(h: ProgramHeader): Uint8Array {
  const b = new Uint8Array(ELF64_PHDR_BYTES);
  const v = new DataView(b.buffer);
  v.setUint32(0, h.type, true); // p_type
  v.setUint32(4, h.type === PT_LOAD ? PF_R | PF_W | PF_X : 0, true); // p_flags
  v.setBigUint64(8, h.offset, true); // p_offset
  v.setBigUint64(16, h.vaddr, true); // p_vaddr
  v.setBigUint64(24, h.paddr, true); // p_paddr
  v.setBigUint64(32, h.filesz, true); // p_filesz
  v.setBigUint64(40, h.memsz, true); // p_memsz
  v.setBigUint64(48, 0n, true); // p_align
  return b;
}

/** `user_regs_struct` order of `pr_reg` (27 × u64). */
const PR_REG_ORDER = [
  "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
  "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
] as const;

/** The registers of one vCPU for its NT_PRSTATUS note; `undefined` registers are written as zeros. */
export interface VcpuRegisters {
  readonly index: number;
  readonly regs: X86Regs | undefined;
  readonly sregs: Sregs | undefined;
}

/** The `elf_prstatus` descriptor of a vCPU: `pr_pid` is the vCPU index + 1, as in QEMU's dumps. */
export function prstatus(cpu: VcpuRegisters): Uint8Array {
  const b = new Uint8Array(PRSTATUS_BYTES);
  const v = new DataView(b.buffer);
  v.setUint32(PRSTATUS_PID, cpu.index + 1, true);
  const r = cpu.regs;
  const s = cpu.sregs;
  const values: Record<(typeof PR_REG_ORDER)[number], bigint> = {
    r15: r?.r15 ?? 0n, r14: r?.r14 ?? 0n, r13: r?.r13 ?? 0n, r12: r?.r12 ?? 0n, rbp: r?.rbp ?? 0n, rbx: r?.rbx ?? 0n,
    r11: r?.r11 ?? 0n, r10: r?.r10 ?? 0n, r9: r?.r9 ?? 0n, r8: r?.r8 ?? 0n, rax: r?.rax ?? 0n, rcx: r?.rcx ?? 0n,
    rdx: r?.rdx ?? 0n, rsi: r?.rsi ?? 0n, rdi: r?.rdi ?? 0n, orig_rax: 0n, rip: r?.rip ?? 0n,
    cs: BigInt(s?.cs?.selector ?? 0), eflags: r?.rflags ?? 0n, rsp: r?.rsp ?? 0n, ss: BigInt(s?.ss?.selector ?? 0),
    fs_base: s?.fs?.base ?? 0n, gs_base: s?.gs?.base ?? 0n, ds: BigInt(s?.ds?.selector ?? 0), es: BigInt(s?.es?.selector ?? 0),
    fs: BigInt(s?.fs?.selector ?? 0), gs: BigInt(s?.gs?.selector ?? 0),
  };
  PR_REG_ORDER.forEach((name, i) => v.setBigUint64(PRSTATUS_REG + 8 * i, values[name], true));
  return b;
}

/** An ELF note (`Elf64_Nhdr`, name and descriptor each padded to 4 bytes). */
export function elfNote(name: string, type: number, desc: Uint8Array): Uint8Array {
  const nameBytes = new TextEncoder().encode(`${name}\0`);
  const pad = (n: number) => (n + 3) & ~3;
  const b = new Uint8Array(12 + pad(nameBytes.length) + pad(desc.length));
  const v = new DataView(b.buffer);
  v.setUint32(0, nameBytes.length, true); // n_namesz
  v.setUint32(4, desc.length, true); // n_descsz
  v.setUint32(8, type, true); // n_type
  b.set(nameBytes, 12);
  b.set(desc, 12 + pad(nameBytes.length));
  return b;
}

/** The PT_NOTE contents of a core: one `CORE` NT_PRSTATUS per vCPU, in vCPU order. */
export function prstatusNotes(cpus: readonly VcpuRegisters[]): Uint8Array {
  const notes = cpus.map((cpu) => elfNote("CORE", NT_PRSTATUS, prstatus(cpu)));
  const out = new Uint8Array(notes.reduce((n, x) => n + x.length, 0));
  let at = 0;
  for (const n of notes) {
    out.set(n, at);
    at += n.length;
  }
  return out;
}

/** LiME's range header: `[start, endInclusive]` follows it in the file. */
export function limeHeader(start: bigint, endInclusive: bigint): Uint8Array {
  const b = new Uint8Array(LIME_HEADER_BYTES);
  const v = new DataView(b.buffer);
  v.setUint32(0, LIME_MAGIC, true); // magic
  v.setUint32(4, LIME_VERSION, true); // version
  v.setBigUint64(8, start, true); // s_addr
  v.setBigUint64(16, endInclusive, true); // e_addr (inclusive)
  return b; // reserved[8] stays zero
}
