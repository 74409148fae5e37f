// SPDX-License-Identifier: Apache-2.0
// Profiles: the ISF loader (exact 64-bit addresses, anonymous members, symbolization), the BTF
// reader on a hand-assembled blob, and the kallsyms parser's refusals.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { BtfKind, parseBtf } from "./btf.js";
import { parseKallsyms } from "./build-linux.js";
import type { VmCommands } from "../command-types.js";
import { linux } from "./linux.js";
import { Profile, stringifyIsf, type IsfDocument } from "./profile.js";

const workload = Profile.parse(readFileSync(new URL("../../profiles/kvmi-sim-workload.json", import.meta.url), "utf8"));

describe("Profile (ISF)", () => {
  it("keeps 64-bit addresses exact (JSON numbers beyond 2^53)", () => {
    expect(workload.symbol("init_task")).toBe(0xffffffff80010000n);
    expect(workload.symbol("entry_SYSCALL_64")).toBe(0xffffffff80001000n);
    expect(workload.os).toBe("linux");
  });

  it("symbolizes an address to the closest symbol below it", () => {
    expect(workload.symbolize(0xffffffff80001004n)).toEqual({ name: "entry_SYSCALL_64", offset: 4n });
    expect(workload.symbolize(0x1000n)).toBeUndefined();
  });

  it("gives the workload's task_struct layout as the README documents it", () => {
    expect(workload.sizeOf("task_struct")).toBe(0x100);
    expect(workload.offsetOf("task_struct", "comm")).toBe(0x40);
    expect(workload.fieldSize("task_struct", "comm")).toBe(16);
    expect(workload.offsetOf("task_struct", "tasks.next")).toBe(0);
    expect(workload.hasField("task_struct", "mm")).toBe(false);
  });

  it("finds fields through anonymous members, and round-trips through stringifyIsf", () => {
    const document: IsfDocument = {
      metadata: { linux: {} },
      base_types: { "unsigned long": { size: 8, kind: "int", signed: false } },
      user_types: {
        mm_struct: { kind: "struct", size: 128, fields: { unnamed_field_0: { offset: 16, type: { kind: "struct", name: "__anon_7" }, anonymous: true } } },
        __anon_7: { kind: "struct", size: 100, fields: { pgd: { offset: 72, type: { kind: "pointer", subtype: { kind: "base", name: "unsigned long" } } } } },
      },
      enums: {},
      symbols: { init_mm: { address: 0xffffffff82b5c940n } },
    };
    const profile = Profile.parse(stringifyIsf(document));
    expect(profile.offsetOf("mm_struct", "pgd")).toBe(88);
    expect(profile.fieldSize("mm_struct", "pgd")).toBe(8);
    expect(profile.symbol("init_mm")).toBe(0xffffffff82b5c940n);
    expect(() => profile.offsetOf("mm_struct", "nope")).toThrow(/no field mm_struct.nope/);
  });

  it("reads a Volatility 3 symbol file as dwarf2json writes it (format 6.2.0: metadata, bitfields, enums, anonymous structs)", () => {
    // An excerpt in dwarf2json's shape (fixtures/volatility3-linux-excerpt.json): what users already have.
    const isf = Profile.parse(readFileSync(new URL("./fixtures/volatility3-linux-excerpt.json", import.meta.url), "utf8"));
    expect(isf.os).toBe("linux");
    expect(isf.symbol("init_task")).toBe(0xffffffff8275e040n); // beyond 2^53, still exact
    expect(isf.symbolize(0xffffffff81045007n)).toEqual({ name: "__x64_sys_getppid", offset: 7n });
    expect(isf.sizeOf("task_struct")).toBe(9792);
    expect([isf.offsetOf("task_struct", "pid"), isf.offsetOf("task_struct", "tasks.next"), isf.fieldSize("task_struct", "comm")]).toEqual([2464, 2192, 16]);
    expect(isf.fieldSize("task_struct", "policy")).toBe(4); // an enum, sized by its own entry
    expect(isf.fieldSize("task_struct", "in_execve")).toBe(4); // a bitfield, sized by its storage type
    expect(isf.offsetOf("mm_struct", "pgd")).toBe(80); // through the anonymous struct
    // It is enough for the Linux helpers: every field they need resolves.
    expect(() => linux({} as VmCommands, isf)).not.toThrow();
  });

  it("refuses what is not ISF", () => {
    expect(() => Profile.parse('{"hello": 1}')).toThrow(/not an ISF profile/);
  });
});

/** Assembles BTF: header, types (u32 words), strings. */
function btfBlob(words: number[], strings: string): Uint8Array {
  const typeBytes = words.length * 4;
  const str = new TextEncoder().encode(strings);
  const out = new Uint8Array(24 + typeBytes + str.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, 0xeb9f, true);
  view.setUint8(2, 1);
  view.setUint32(4, 24, true);
  view.setUint32(8, 0, true);
  view.setUint32(12, typeBytes, true);
  view.setUint32(16, typeBytes, true);
  view.setUint32(20, str.length, true);
  words.forEach((word, i) => view.setUint32(24 + i * 4, word, true));
  out.set(str, 24 + typeBytes);
  return out;
}

describe("parseBtf", () => {
  it("reads ints, pointers, arrays and structs with bitfields", () => {
    // strings: 0 "", 1 "int", 5 "task", 10 "pid", 14 "next", 19 "bits"
    const strings = "\0int\0task\0pid\0next\0bits\0";
    const info = (kind: number, vlen = 0, kindFlag = 0) => ((kindFlag << 31) | (kind << 24) | vlen) >>> 0;
    const blob = btfBlob(
      [
        1, info(BtfKind.Int), 4, (1 << 24) | 32, // [1] int, signed 32-bit
        0, info(BtfKind.Ptr), 3, // [2] struct task *
        5, info(BtfKind.Struct, 3, 1), 24, // [3] struct task (kind_flag: bitfield sizes in the offsets)
        10, 1, 0, // pid @0
        14, 2, 64, // next @8
        19, 1, (3 << 24) | 128, // bits:3 @16
        0, info(BtfKind.Array), 0, 1, 1, 16, // [4] int[16]
      ],
      strings,
    );
    const btf = parseBtf(blob);
    expect(btf.types[1]).toMatchObject({ kind: BtfKind.Int, name: "int", sizeOrType: 4, int: { signed: true, bits: 32 } });
    expect(btf.types[3]!.members).toEqual([
      { name: "pid", type: 1, bitOffset: 0, bitSize: 0 },
      { name: "next", type: 2, bitOffset: 64, bitSize: 0 },
      { name: "bits", type: 1, bitOffset: 128, bitSize: 3 },
    ]);
    expect(btf.types[4]!.array).toEqual({ type: 1, count: 16 });
  });

  it("refuses data without the magic or with sections past the end", () => {
    expect(() => parseBtf(new Uint8Array(32))).toThrow(/magic/);
    const blob = btfBlob([1, 0x01000000, 4, 32], "\0int\0");
    new DataView(blob.buffer).setUint32(12, 4096, true);
    expect(() => parseBtf(blob)).toThrow(/past the data/);
  });
});

describe("parseKallsyms", () => {
  it("reads kallsyms lines and skips module symbols", () => {
    const lines = Array.from({ length: 120 }, (_, i) => `ffffffff81${i.toString(16).padStart(6, "0")} T f${i}`);
    lines.push("ffffffffc0000000 t mod_fn\t[floppy]");
    const symbols = parseKallsyms(lines.join("\n"));
    expect(symbols).toHaveLength(120);
    expect(symbols[1]).toEqual({ address: 0xffffffff81000001n, type: "T", name: "f1" });
  });

  it("refuses Debian's System.map stub and address-less kallsyms", () => {
    expect(() => parseKallsyms("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")).toThrow(/stub/);
    const hidden = Array.from({ length: 200 }, (_, i) => `0000000000000000 T f${i}`).join("\n");
    expect(() => parseKallsyms(hidden)).toThrow(/kptr_restrict/);
  });
});
