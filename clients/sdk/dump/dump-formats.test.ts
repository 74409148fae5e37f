// SPDX-License-Identifier: Apache-2.0
// The dump layouts against offsets copied from the specifications, not from the encoder: the
// System V gABI (Elf64_Ehdr 64 bytes, Elf64_Phdr 56, Elf64_Nhdr 12), Linux's x86-64
// `struct elf_prstatus` (336 bytes: pr_pid at 32, pr_reg at 112 in `user_regs_struct` order, rip
// the 17th u64) and LiME's `lime_mem_range_header` (magic, version, s_addr, e_addr, reserved[8]).
import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { SregsSchema } from "@kvmi/proto";
import { elfHeader, elfNote, limeHeader, programHeader, prstatus, prstatusNotes, PT_LOAD, PT_NOTE } from "./dump-formats.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("ELF64 core layout", () => {
  it("writes Elf64_Ehdr for ET_CORE / EM_X86_64 with the program header table where it is", () => {
    const h = elfHeader(0x1234n, 3);
    expect(h.length).toBe(64);
    expect(hex(h.subarray(0, 16))).toBe("7f454c46020101000000000000000000");
    const v = Buffer.from(h);
    expect(v.readUInt16LE(16)).toBe(4); // e_type ET_CORE
    expect(v.readUInt16LE(18)).toBe(62); // e_machine EM_X86_64
    expect(v.readUInt32LE(20)).toBe(1); // e_version
    expect(v.readBigUInt64LE(32)).toBe(0x1234n); // e_phoff
    expect(v.readBigUInt64LE(40)).toBe(0n); // e_shoff
    expect(v.readUInt16LE(52)).toBe(64); // e_ehsize
    expect(v.readUInt16LE(54)).toBe(56); // e_phentsize
    expect(v.readUInt16LE(56)).toBe(3); // e_phnum
    expect(v.readUInt16LE(60)).toBe(0); // e_shnum
    expect(() => elfHeader(0n, 0x10000)).toThrow(RangeError);
  });

  it("writes Elf64_Phdr with p_paddr and p_vaddr at 24 and 16", () => {
    const p = Buffer.from(programHeader({ type: PT_LOAD, offset: 0x400n, vaddr: 0x100000n, paddr: 0x100000n, filesz: 0x2000n, memsz: 0x2000n }));
    expect(p.length).toBe(56);
    expect(p.readUInt32LE(0)).toBe(1); // p_type PT_LOAD
    expect(p.readUInt32LE(4)).toBe(7); // p_flags R|W|X
    expect(p.readBigUInt64LE(8)).toBe(0x400n); // p_offset
    expect(p.readBigUInt64LE(16)).toBe(0x100000n); // p_vaddr
    expect(p.readBigUInt64LE(24)).toBe(0x100000n); // p_paddr
    expect(p.readBigUInt64LE(32)).toBe(0x2000n); // p_filesz
    expect(p.readBigUInt64LE(40)).toBe(0x2000n); // p_memsz
    expect(Buffer.from(programHeader({ type: PT_NOTE, offset: 64n, vaddr: 0n, paddr: 0n, filesz: 10n, memsz: 0n })).readUInt32LE(4)).toBe(0);
  });

  it("pads note names and descriptors to 4 bytes", () => {
    const n = Buffer.from(elfNote("CORE", 1, Uint8Array.of(1, 2, 3, 4, 5)));
    expect(n.readUInt32LE(0)).toBe(5); // n_namesz, with the NUL
    expect(n.readUInt32LE(4)).toBe(5); // n_descsz
    expect(n.readUInt32LE(8)).toBe(1); // n_type NT_PRSTATUS
    expect(n.subarray(12, 20).toString("latin1")).toBe("CORE\0\0\0\0");
    expect([...n.subarray(20)]).toEqual([1, 2, 3, 4, 5, 0, 0, 0]);
  });

  it("fills elf_prstatus: pr_pid = vCPU + 1, pr_reg in user_regs_struct order", () => {
    const regs = {
      rax: 0xa0n, rbx: 0xb0n, rcx: 0xc0n, rdx: 0xd0n, rsi: 0x51n, rdi: 0xd1n, rsp: 0x5b0n, rbp: 0xb9n,
      r8: 8n, r9: 9n, r10: 10n, r11: 11n, r12: 12n, r13: 13n, r14: 14n, r15: 15n, rip: 0xffffffff80001000n, rflags: 0x246n,
    };
    const sregs = create(SregsSchema, { cs: { selector: 0x10 }, ss: { selector: 0x18 }, fs: { base: 0xf5n }, gs: { base: 0x65n, selector: 0 } });
    const d = Buffer.from(prstatus({ index: 2, regs, sregs }));
    expect(d.length).toBe(336);
    expect(d.readUInt32LE(32)).toBe(3);
    const reg = (i: number) => d.readBigUInt64LE(112 + 8 * i);
    expect([reg(0), reg(5), reg(10), reg(11), reg(14)]).toEqual([15n, 0xb0n, 0xa0n, 0xc0n, 0xd1n]); // r15 rbx rax rcx rdi
    expect([reg(16), reg(17), reg(18), reg(19), reg(20)]).toEqual([0xffffffff80001000n, 0x10n, 0x246n, 0x5b0n, 0x18n]); // rip cs eflags rsp ss
    expect([reg(21), reg(22)]).toEqual([0xf5n, 0x65n]); // fs_base gs_base
    expect(d.readUInt32LE(328)).toBe(0); // pr_fpvalid
    expect(Buffer.from(prstatus({ index: 0, regs: undefined, sregs: undefined })).subarray(112).every((b) => b === 0)).toBe(true);
  });

  it("puts one CORE note per vCPU in vCPU order", () => {
    const notes = Buffer.from(prstatusNotes([0, 1].map((index) => ({ index, regs: undefined, sregs: undefined }))));
    const record = 12 + 8 + 336;
    expect(notes.length).toBe(2 * record);
    expect(notes.readUInt32LE(record + 12 + 8 + 32)).toBe(2);
  });
});

describe("LiME range header", () => {
  it("is magic 0x4C694D45, version 1, first and last (inclusive) address, 8 zero bytes", () => {
    const h = limeHeader(0x100000n, 0x3ffffffn);
    expect(hex(h)).toBe("454d694c" + "01000000" + "0000100000000000" + "ffffff0300000000" + "0000000000000000");
  });
});
