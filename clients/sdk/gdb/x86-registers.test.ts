// SPDX-License-Identifier: Apache-2.0
// The register table: gdb's numbering (the i386 core feature's order, which gdb requires), the
// `g` layout, the target description it generates, and which writes KVMI can make. Plus the RSP
// session's stop replies and qXfer chunks.
import { create } from "@bufbuild/protobuf";
import { SregsSchema } from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import type { X86Regs } from "../command-types.js";
import { stopReply, xferChunk } from "./rsp-session.js";
import { fromHex, toHex } from "./rsp-packet.js";
import {
  plainRegs, readAllRegisters, readRegister, ReadOnlyRegisterError, RIP_REGNUM, targetXml, writeAllRegisters, writeRegister,
  X86_64_REGISTERS,
} from "./x86-registers.js";
import type { RegisterSource } from "./x86-registers.js";

const regs: X86Regs = {
  rax: 0x1111n, rbx: 0x2222n, rcx: 3n, rdx: 4n, rsi: 5n, rdi: 6n, rsp: 0xffffffff80101ff8n, rbp: 8n,
  r8: 9n, r9: 10n, r10: 11n, r11: 12n, r12: 13n, r13: 14n, r14: 15n, r15: 0x1515n,
  rip: 0xffffffff80001000n, rflags: 0x246n,
};

function source(xsave?: Uint8Array): RegisterSource {
  const sregs = create(SregsSchema, {
    cs: { selector: 0x10 }, ss: { selector: 0x18 }, ds: { selector: 0x18 }, es: { selector: 0 },
    fs: { selector: 0, base: 0x7f0000001000n }, gs: { selector: 0, base: 0xffffffff80020000n },
    cr0: 0x80050033n, cr2: 0n, cr3: 0x1234000n, cr4: 0x3606e0n, cr8: 0n, efer: 0xd01n,
  });
  return { regs, sregs, kernelGsBase: 0xabcdn, xsave };
}

describe("register numbering", () => {
  it("follows gdb's amd64 order: 16 GPRs, rip, eflags, 6 selectors, 8 x87, 8 control words, 16 xmm, mxcsr", () => {
    const names = X86_64_REGISTERS.map((r) => r.name);
    expect(names.slice(0, 24)).toEqual([
      "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
      "rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs",
    ]);
    expect(names.slice(24, 40)).toEqual(["st0", "st1", "st2", "st3", "st4", "st5", "st6", "st7", "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]);
    expect(names.slice(40, 57)).toEqual([...Array.from({ length: 16 }, (_, i) => `xmm${i}`), "mxcsr"]);
    expect(names.slice(57)).toEqual(["fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer", "gdtr_base", "idtr_base", "tr_base", "apic_base"]);
    expect(RIP_REGNUM).toBe(16);
  });

  it("lays out `g` little-endian at the sizes of the description", () => {
    const g = readAllRegisters(source());
    const expectedBytes = X86_64_REGISTERS.reduce((n, r) => n + r.bits / 8, 0);
    expect(g.length).toBe(expectedBytes);
    // rax first, rip at 16 × 8, eflags 4 bytes after it, cs after that.
    expect(toHex(g.subarray(0, 8))).toBe("1111000000000000");
    expect(toHex(g.subarray(128, 136))).toBe("00100080ffffffff");
    expect(toHex(g.subarray(136, 140))).toBe("46020000");
    expect(toHex(g.subarray(140, 144))).toBe("10000000");
    expect(toHex(readRegister(X86_64_REGISTERS.findIndex((r) => r.name === "cr3"), source())!)).toBe("0040230100000000");
    expect(toHex(readRegister(X86_64_REGISTERS.findIndex((r) => r.name === "gs_base"), source())!)).toBe("00000280ffffffff");
    expect(toHex(readRegister(X86_64_REGISTERS.findIndex((r) => r.name === "k_gs_base"), source())!)).toBe("cdab000000000000");
    expect(readRegister(999, source())).toBeUndefined();
  });

  it("reads x87 and SSE state from the FXSAVE area of the XSAVE region, and zeros without one", () => {
    const area = new Uint8Array(4096);
    const view = new DataView(area.buffer);
    view.setUint16(0, 0x037f, true); // FCW
    area[4] = 0x01; // abridged tag: st0 valid
    view.setUint32(24, 0x1f80, true); // MXCSR
    area.set(fromHex("00112233445566778899aabbccddeeff"), 160 + 16 * 3); // xmm3
    const s = source(area);
    const at = (name: string) => toHex(readRegister(X86_64_REGISTERS.findIndex((r) => r.name === name), s)!);
    expect(at("fctrl")).toBe("7f030000");
    expect(at("ftag")).toBe("fcff0000"); // st0 valid (00), the other seven empty (11)
    expect(at("mxcsr")).toBe("801f0000");
    expect(at("xmm3")).toBe("00112233445566778899aabbccddeeff");
    expect(toHex(readRegister(X86_64_REGISTERS.findIndex((r) => r.name === "xmm3"), source())!)).toBe("0".repeat(32));
  });
});

describe("register writes", () => {
  it("takes P writes of the general registers, rip and eflags", () => {
    const next = writeRegister(regs, RIP_REGNUM, fromHex("0310008000000000"));
    expect(next.rip).toBe(0x80001003n);
    expect(writeRegister(regs, 17, fromHex("02000000")).rflags).toBe(2n);
    expect(next.rax).toBe(regs.rax);
  });

  it("refuses segment, control and FPU registers, wrong sizes and unknown numbers", () => {
    expect(() => writeRegister(regs, 18, fromHex("10000000"))).toThrow(ReadOnlyRegisterError);
    expect(() => writeRegister(regs, X86_64_REGISTERS.findIndex((r) => r.name === "cr3"), new Uint8Array(8))).toThrow(ReadOnlyRegisterError);
    expect(() => writeRegister(regs, 0, new Uint8Array(4))).toThrow(RangeError);
    expect(() => writeRegister(regs, 500, new Uint8Array(8))).toThrow(RangeError);
  });

  it("takes a G write that changes only writable registers", () => {
    const s = source();
    const g = readAllRegisters(s);
    g.set(fromHex("efbeadde00000000"), 8); // rbx
    expect(writeAllRegisters(s, g)).toEqual({ ...regs, rbx: 0xdeadbeefn });
    g.set(fromHex("2b000000"), 140); // cs
    expect(() => writeAllRegisters(s, g)).toThrow(ReadOnlyRegisterError);
    expect(() => writeAllRegisters(s, g.subarray(0, 100))).toThrow(RangeError);
  });

  it("keeps only the kvm_regs fields of a proto Regs", () => {
    expect(Object.keys(plainRegs({ ...regs, $typeName: "kvmi.v1.Regs" } as X86Regs)).sort()).toEqual(Object.keys(regs).sort());
  });
});

describe("target description", () => {
  const xml = targetXml();

  it("declares x86-64 and the features gdb validates, in table order with explicit numbers", () => {
    expect(xml).toContain("<architecture>i386:x86-64</architecture>");
    const features = [...xml.matchAll(/<feature name="([^"]+)">/g)].map((m) => m[1]);
    expect(features).toEqual(["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments", "org.kvmi.bridge.x86.system"]);
    const regs = [...xml.matchAll(/<reg name="([^"]+)" bitsize="(\d+)" type="([^"]+)" regnum="(\d+)"/g)];
    expect(regs.map((m) => m[1])).toEqual(X86_64_REGISTERS.map((r) => r.name));
    expect(regs.map((m) => Number(m[4]))).toEqual(X86_64_REGISTERS.map((_, i) => i));
    // Every non-builtin type used is defined in the document.
    for (const type of new Set(regs.map((m) => m[3]))) {
      if (!["int64", "int32", "int", "code_ptr", "data_ptr", "i387_ext"].includes(type!)) expect(xml).toMatch(new RegExp(`id="${type}"`));
    }
  });

  it("is served in qXfer chunks that concatenate back to the document", () => {
    let offset = 0;
    let text = "";
    for (;;) {
      const chunk = xferChunk(xml, `${offset.toString(16)},200`);
      text += chunk.slice(1);
      offset += 0x200;
      if (chunk[0] === "l") break;
      expect(chunk[0]).toBe("m");
    }
    expect(text).toBe(xml);
    expect(xferChunk(xml, `${(xml.length + 10).toString(16)},10`)).toBe("l");
  });
});

describe("stop replies", () => {
  it("names the signal, the thread (vCPU + 1) and swbreak", () => {
    expect(stopReply({ thread: 0, signal: 5, swbreak: true })).toBe("T05thread:1;swbreak:;");
    expect(stopReply({ thread: 15, signal: 2 })).toBe("T02thread:10;");
  });
});
