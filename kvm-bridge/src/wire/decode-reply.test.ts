// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { KvmiProtocolError } from "../errors.js";
import { commandByOp, decodeReply, encodeReply, HEADER_BYTES, kvmiV7, v12, v9 } from "./index.js";

describe("decodeReply of a bytes-only reply (READ_PHYSICAL, read in place)", () => {
  for (const dialect of [v9, v12, kvmiV7]) {
    const read = commandByOp(dialect, "READ_PHYSICAL")!;
    it(`${dialect.name}: data as a view of the body, errors with their errno, short bodies refused`, () => {
      const page = Uint8Array.from({ length: 4096 }, (_, i) => i & 0xff);
      const body = encodeReply(dialect, read, 9, 0, { data: page }).subarray(HEADER_BYTES);
      const ok = decodeReply(dialect, read, body);
      expect(ok.err).toBe(0);
      const data = ok.value!["data"] as Uint8Array;
      expect([...data]).toEqual([...page]);
      // A view of the reply (no copy), as the bulk encoder expects (docs/decisions/0161).
      expect(data.buffer).toBe(body.buffer);
      expect(decodeReply(dialect, read, encodeReply(dialect, read, 9, -2).subarray(HEADER_BYTES))).toEqual({ err: -2 });
      expect(decodeReply(dialect, read, encodeReply(dialect, read, 9, -0x7fffffff).subarray(HEADER_BYTES)).err).toBe(-0x7fffffff);
      expect((decodeReply(dialect, read, body.subarray(0, 8)).value!["data"] as Uint8Array).length).toBe(0);
      expect(() => decodeReply(dialect, read, body.subarray(0, 7))).toThrow(KvmiProtocolError);
    });
  }
});
