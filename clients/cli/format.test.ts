// SPDX-License-Identifier: Apache-2.0
// kvmictl's output formats: the hex dump matches `xxd -o <addr>` byte for byte.
import { describe, expect, it } from "vitest";
import { formatBytes, hex, hexdump, progressBar, table, toJson } from "./format.js";

describe("hexdump", () => {
  it("matches xxd: groups of two bytes, ASCII column, address column of the first byte", () => {
    const text = new TextEncoder().encode("Linux version 5.8.0-kvmi\n\0\x01\x7f");
    // `printf 'Linux version 5.8.0-kvmi\n\0\1\177' | xxd -o 0xffffffff80006000` (offset widened to 16 digits)
    expect(hexdump(text, 0xffffffff80006000n)).toBe(
      "ffffffff80006000: 4c69 6e75 7820 7665 7273 696f 6e20 352e  Linux version 5.\n" +
        "ffffffff80006010: 382e 302d 6b76 6d69 0a00 017f            8.0-kvmi....\n",
    );
  });

  it("handles an odd final byte and empty input", () => {
    expect(hexdump(Uint8Array.of(0x41, 0x42, 0x43), 0x1000n)).toBe("0000000000001000: 4142 43                                  ABC\n");
    expect(hexdump(new Uint8Array(0))).toBe("");
  });

  it("keeps every line the same width", () => {
    const lines = hexdump(new Uint8Array(100).map((_, i) => i)).trimEnd().split("\n");
    expect(lines).toHaveLength(7);
    expect(new Set(lines.slice(0, -1).map((l) => l.length)).size).toBe(1);
  });
});

describe("formatting", () => {
  it("renders u64 values as hex in JSON", () => {
    expect(toJson({ gpa: 4096n, data: Uint8Array.of(1, 255), msrs: new Map([[0xc0000080, 0xd01n]]) })).toBe(
      '{"gpa":"0x1000","data":"01ff","msrs":{"0xc0000080":"0xd01"}}',
    );
    expect(hex(0xabn, 4)).toBe("0x00ab");
  });

  it("leaves protobuf-es bookkeeping out of JSON and keeps counts as numbers", () => {
    const segment = { $typeName: "kvmi.v1.Segment", base: 0n, selector: 16, present: true };
    expect(toJson({ regs: { $typeName: "kvmi.v1.Regs", rip: 0xffffffff81000000n }, cs: segment, bytes: 4096 })).toBe(
      '{"regs":{"rip":"0xffffffff81000000"},"cs":{"base":"0x0","selector":16,"present":true},"bytes":4096}',
    );
  });

  it("formats sizes, progress and tables", () => {
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(4096)).toBe("4.0 KiB");
    expect(formatBytes(64n * 1024n * 1024n)).toBe("64.0 MiB");
    expect(progressBar(32n << 20n, 64n << 20n, 10)).toBe("[#####     ]  50%  32.0 MiB / 64.0 MiB");
    expect(progressBar(0n, 0n, 4)).toBe("[####] 100%  0 B / 0 B");
    expect(table([["A", "BB"], ["CCC", "D"]])).toBe("A    BB\nCCC  D\n");
  });
});
