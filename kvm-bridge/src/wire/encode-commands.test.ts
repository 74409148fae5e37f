// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { KvmiArgumentError } from "../errors.js";
import { commandByOp, encodeCommand, encodeCommands, v12, v9 } from "./index.js";

describe("encodeCommands (a burst in one buffer)", () => {
  it("writes the same bytes as encodeCommand of each command, back to back, for every dialect", () => {
    for (const dialect of [v9, v12]) {
      const read = commandByOp(dialect, "READ_PHYSICAL")!;
      const seqs = [7, 8, 9, 0xfffffff0];
      const bodies = seqs.map((_, i) => ({ gpa: 0x1000n * BigInt(i + 1), size: 4096 - i }));
      const expected = Buffer.concat(seqs.map((seq, i) => encodeCommand(dialect, read, seq, bodies[i]!)));
      expect(Buffer.from(encodeCommands(dialect, read, seqs, bodies)).equals(expected)).toBe(true);
      const regs = commandByOp(dialect, "GET_REGISTERS")!;
      const msrs = { msrs_idx: [0xc0000080, 0xc0000082] };
      const vcpuExpected = Buffer.concat([encodeCommand(dialect, regs, 1, msrs, 3), encodeCommand(dialect, regs, 2, msrs, 3)]);
      expect(Buffer.from(encodeCommands(dialect, regs, [1, 2], [msrs, msrs], 3)).equals(vcpuExpected)).toBe(true);
    }
  });

  it("refuses a vCPU command without its vCPU, as encodeCommand does", () => {
    const regs = commandByOp(v9, "GET_REGISTERS")!;
    expect(() => encodeCommands(v9, regs, [1], [{ msrs_idx: [] }])).toThrow(KvmiArgumentError);
  });
});
