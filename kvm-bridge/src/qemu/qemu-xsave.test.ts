// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { xsaveOf } from "./qemu-xsave.js";

describe("the XSAVE area from gdbstub registers", () => {
  it("places FCW, FSW, MXCSR, ST(i) and XMMi in the 64-bit legacy layout, with x87|SSE in XSTATE_BV", () => {
    const registers = new Map<string, bigint>([
      ["fctrl", 0x37fn], ["fstat", 0x3800n], ["mxcsr", 0x1f80n],
      ["st0", 0x4000_c90f_daa2_2168_c235n], // pi as an 80-bit extended value
      ["xmm0", 0x00112233_44556677_8899aabb_ccddeeffn], ["xmm15", 0xffn << 120n],
    ]);
    const area = xsaveOf(registers)!;
    const view = new DataView(area.buffer);
    expect(area).toHaveLength(4096);
    expect(view.getUint16(0, true)).toBe(0x37f);
    expect(view.getUint16(2, true)).toBe(0x3800);
    expect(view.getUint32(24, true)).toBe(0x1f80);
    expect(view.getUint32(28, true)).toBe(0xffff);
    expect(Buffer.from(area.subarray(32, 42)).toString("hex")).toBe("35c26821a2da0fc90040");
    expect(area.subarray(42, 48).every((b) => b === 0)).toBe(true);
    expect(Buffer.from(area.subarray(160, 176)).toString("hex")).toBe("ffeeddccbbaa99887766554433221100");
    expect(area[160 + 15 * 16 + 15]).toBe(0xff);
    expect(view.getBigUint64(512, true)).toBe(3n);
    expect(area.subarray(520).every((b) => b === 0)).toBe(true);
  });

  it("is undefined for a stub without SSE registers (GET_XSAVE then gives an empty area)", () => {
    expect(xsaveOf(new Map([["rax", 1n]]))).toBeUndefined();
  });
});
