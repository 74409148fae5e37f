// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { commandByOp, decodeCommand, decodeEventReply, encodeCommand, encodeEventReply, encodeReply, eventByKind, HEADER_BYTES, readMsgHdr, v9 } from "./index.js";
import { allocateZeroed, MAX_SLAB_PIECE_BYTES, Outbox, SLAB_BYTES } from "./slab.js";

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

describe("Outbox (the emulated kernel's writes)", () => {
  /** An outbox whose writes are recorded; `done` callbacks are kept to be called by the test. */
  function recorded() {
    const writes: Array<{ bytes: Uint8Array; copy: number[]; done: () => void }> = [];
    const outbox = new Outbox((bytes, done) => writes.push({ bytes, copy: [...bytes], done }));
    /** Allocates, fills (with `fill`, padding left out) and commits a message of `size` bytes. */
    const put = (size: number, fill: number, padding = 0): Uint8Array => {
      const piece = outbox.allocate(size);
      expect(piece.bytes.every((b) => b === 0)).toBe(true);
      piece.bytes.fill(fill, 0, size - padding);
      outbox.commit(piece.bytes);
      return piece.bytes;
    };
    return { outbox, writes, put };
  }

  it("writes what was committed since the last flush in one write, in order, foreign messages included", () => {
    const { outbox, writes, put } = recorded();
    put(24, 1);
    outbox.append(new Uint8Array([9, 9, 9]));
    put(4108, 2);
    expect(writes).toHaveLength(0);
    outbox.flush();
    outbox.flush();
    expect(writes).toHaveLength(1);
    expect(writes[0]!.copy).toEqual([...new Array(24).fill(1), 9, 9, 9, ...new Array(4108).fill(2)]);
  });

  it("zeroes and hands out again a piece whose encoder threw before commit", () => {
    const { outbox, writes, put } = recorded();
    const failed = outbox.allocate(64);
    failed.bytes.fill(0xff, 0, 40);
    // The next message gets the same bytes, zeroed: its padding (the last 8 bytes) stays zero.
    const next = put(48, 5, 8);
    expect(next.byteOffset).toBe(failed.bytes.byteOffset);
    outbox.flush();
    expect(writes[0]!.copy).toEqual([...new Array(40).fill(5), ...new Array(8).fill(0)]);
  });

  it("reuses a slab only after its writes completed, zeroed", () => {
    const { writes, put } = recorded();
    const first = put(4108, 0xff);
    // Fill the first slab with 0xff messages and move on to the next: the first is written.
    while (writes.length === 0) put(4108, 0xff);
    const second = put(4108, 0xff);
    expect(second.buffer).not.toBe(first.buffer);
    // Its write has not completed: the next slab is again a new one.
    while (writes.length === 1) put(4108, 0xff, 8);
    const third = put(4108, 0xee, 8);
    expect(third.buffer).not.toBe(first.buffer);
    // Once the first slab's write completes, it comes back zeroed when the current one is full
    // (put checks that every piece it gets is zero).
    writes[0]!.done();
    let last = third;
    while (writes.length === 2) last = put(4108, 0xdd, 8);
    expect(last.buffer).toBe(first.buffer);
    expect(last.byteOffset).toBe(first.byteOffset);
    expect(new Uint8Array(first.buffer, last.byteLength).every((b) => b === 0)).toBe(true);
  });
});
