// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { commandByOp, decodeCommand, decodeEventReply, encodeCommand, encodeEventReply, encodeReply, eventByKind, HEADER_BYTES, readMsgHdr, v9 } from "./index.js";
import { allocateZeroed, MAX_SLAB_PIECE_BYTES, SLAB_BYTES } from "./slab.js";

describe("message slabs", () => {
  it("hands out zeroed, 8-byte aligned pieces that never overlap, across slab boundaries", () => {
    const pieces = Array.from({ length: (3 * SLAB_BYTES) / 1000 }, (_, i) => allocateZeroed(997 + (i % 13)));
    for (const piece of pieces) {
      expect(piece.at % 8).toBe(0);
      expect(piece.bytes.every((b) => b === 0)).toBe(true);
      // The view spans the piece at `at` (the encoders write through it).
      expect(piece.view.buffer).toBe(piece.bytes.buffer);
      expect(piece.view.byteOffset + piece.at).toBe(piece.bytes.byteOffset);
    }
    // Filling every piece leaves the others as they were: no byte is handed out twice.
    pieces.forEach((piece, i) => piece.bytes.fill((i % 250) + 1));
    pieces.forEach((piece, i) => expect(piece.bytes.every((b) => b === (i % 250) + 1)).toBe(true));
  });

  it("gives a message larger than a slab piece a buffer of its own", () => {
    const big = allocateZeroed(MAX_SLAB_PIECE_BYTES + 1);
    expect(big.bytes.byteLength).toBe(MAX_SLAB_PIECE_BYTES + 1);
    expect(big.bytes.buffer.byteLength).toBe(MAX_SLAB_PIECE_BYTES + 1);
    expect(big.at).toBe(0);
  });

  it("keeps every padding byte of encoded messages zero, however many share a slab", () => {
    const read = commandByOp(v9, "READ_PHYSICAL")!;
    const regs = commandByOp(v9, "GET_REGISTERS")!;
    const cr = eventByKind(v9, "CR")!;
    const page = new Uint8Array(4096).fill(0xff);
    for (let seq = 1; seq < 200; seq++) {
      // A page reply: the bytes around it (header, error code with its padding) are exact.
      const reply = encodeReply(v9, read, seq, 0, { data: page });
      expect(reply.byteLength).toBe(HEADER_BYTES + 8 + 4096);
      expect(readMsgHdr(reply)).toEqual({ id: read.id, size: 8 + 4096, seq });
      expect([...reply.subarray(HEADER_BYTES, HEADER_BYTES + 8)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
      // kvmi_vcpu_hdr and kvmi_event_reply padding: the kernel rejects non-zero padding (kvmi-abi §2.7, §2.9).
      const command = encodeCommand(v9, regs, seq, { msrs_idx: [0xffffffff] }, 0xffff);
      expect(decodeCommand(v9, regs, command.subarray(HEADER_BYTES)).vcpuHdrPadding).toBe(false);
      const eventReply = encodeEventReply(v9, cr, seq, 0xffff, 0xff, { new_val: (1n << 64n) - 1n });
      const decoded = decodeEventReply(v9, eventReply.subarray(HEADER_BYTES));
      expect(decoded.vcpuHdrPadding).toBe(false);
      expect(decoded.replyPadding).toBe(false);
    }
  });
});
